"""GenImage's debiased training protocol (Grommelt et al., "Fake or JPEG?", 2024).

GenImage's reals are JPEGs (mostly quality 96) and its fakes PNGs of one size per generator, so a
detector can learn the format and size instead of the generator. The protocol removes both from
the training data: keep reals whose estimated JPEG quality is 96, JPEG-compress every fake at 96
before any augmentation, keep images whose sides fall in a size window (default 450-550) and
centre-crop them to its lower bound, and balance reals and fakes per class. Test sets are left
as they are: the point is to measure the detector on the benchmark's usual images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from PIL import Image

from synthdet.transforms.degrade import jpeg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DebiasConfig:
    enabled: bool = False
    real_jpeg_quality: int | None = 96  # reals kept: JPEGs of this estimated quality (None: any file)
    fake_jpeg_quality: int | None = 96  # fakes JPEG-compressed at this quality (None: left as they are)
    size_window: tuple[int, int] | None = (450, 550)  # both sides within it; centre crop to the lower bound
    balance: bool = True  # as many reals as fakes per class (content class; all rows when there is none)

    @classmethod
    def from_params(cls, params: dict | None) -> DebiasConfig:
        """From ``data.debias`` (a mapping, or None / false for off)."""
        if not params:
            return cls()
        unknown = set(params) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"data.debias: unknown keys {sorted(unknown)} (known: {sorted(cls.__dataclass_fields__)})")
        window = params.get("size_window", cls.size_window)
        if window is not None:
            if len(window) != 2 or not 0 < int(window[0]) <= int(window[1]):
                raise ValueError(f"data.debias.size_window: expected [low, high] with 0 < low <= high, got {window}")
            window = (int(window[0]), int(window[1]))
        real_q, fake_q = params.get("real_jpeg_quality", 96), params.get("fake_jpeg_quality", 96)
        return cls(bool(params.get("enabled", False)), None if real_q is None else int(real_q),
                   None if fake_q is None else int(fake_q), window, bool(params.get("balance", True)))

    def as_dict(self) -> dict:
        return {"enabled": self.enabled, "real_jpeg_quality": self.real_jpeg_quality,
                "fake_jpeg_quality": self.fake_jpeg_quality,
                "size_window": list(self.size_window) if self.size_window else None, "balance": self.balance}


def select_rows(rows: pd.DataFrame, cfg: DebiasConfig, seed: int, what: str = "training rows",
                allow_empty: bool = False) -> pd.DataFrame:
    """The rows the protocol keeps (the order of ``rows``). When a label ends up with no image (a
    window no image of a generator falls in), fails naming what was dropped, or with
    ``allow_empty`` (a validation split, which training can do without) warns and keeps none."""
    if not cfg.enabled:
        return rows
    keep = pd.Series(True, index=rows.index)
    counts = {"before": rows["label"].value_counts().to_dict()}
    if cfg.real_jpeg_quality is not None:
        quality = pd.to_numeric(rows["jpeg_quality"], errors="coerce")
        keep &= (rows["label"] == 1) | ((rows["format"] == "JPEG") & (quality == cfg.real_jpeg_quality))
    if cfg.size_window is not None:
        low, high = cfg.size_window
        width, height = rows["width"].astype(float), rows["height"].astype(float)
        keep &= width.between(low, high) & height.between(low, high)
    kept = rows[keep]
    if cfg.balance and len(kept):
        classes = (kept["class"].astype("string").fillna("<none>") if "class" in kept
                   else pd.Series("<none>", index=kept.index))
        parts = []
        for _, group in kept.groupby(classes, sort=True):
            n = int(group["label"].value_counts().reindex([0, 1], fill_value=0).min())
            parts += [g.sample(n=n, random_state=seed) for _, g in group.groupby("label", sort=True)]
        kept = rows.loc[rows.index.isin(pd.concat(parts).index)] if parts else kept.iloc[:0]
    found = kept["label"].value_counts().to_dict()
    if found.get(0, 0) == 0 or found.get(1, 0) == 0:
        problem = (f"debiased protocol: no {'real' if found.get(0, 0) == 0 else 'fake'} image of the {what} is left "
                   f"(images per label before: {counts['before']}, kept: {found}); the protocol keeps reals that "
                   f"are JPEG q{cfg.real_jpeg_quality} and images with both sides in {cfg.size_window}")
        if not allow_empty:
            raise ValueError(f"{problem}: set data.debias to fit this data")
        log.warning("%s: none of it is used", problem)
        return rows.iloc[:0]
    return kept


def prepare(cfg: DebiasConfig) -> Callable[[Image.Image, int], Image.Image] | None:
    """The per-image step before any augmentation: fakes JPEG-compressed, then every image
    centre-cropped to the window's lower bound. None when the protocol is off."""
    if not cfg.enabled:
        return None

    def apply(img: Image.Image, label: int) -> Image.Image:
        if label == 1 and cfg.fake_jpeg_quality is not None:
            img = jpeg(img, cfg.fake_jpeg_quality)
        if cfg.size_window is not None:
            side = cfg.size_window[0]
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side))
        return img

    return apply
