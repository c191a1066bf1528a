"""Fake or blurry? The sharpness statistics of each subset and label, and the sharpness counterfactual.

The embedded benchmark's fakes are far smoother than its reals (its autoencoders are trained on a
pixel loss alone), so a detector may score well by reading blur instead of a generator's trace.
The counterfactual measures how much it does: per subset, the test reals are low-passed (a
Gaussian blur) until the median high-frequency share of their view matches the fakes', and the
fakes sharpened (an unsharp mask) until theirs matches the reals'; the strengths are chosen on the
training split, never on the test images, and recorded. A detector that keeps its accuracy under
both did not rely on sharpness; one that loses it did.

The sharpness-matched variant (:func:`write_matched_variant`) blurs the reals of every split of the
embedded benchmark, each to the sharpness of a fake drawn from its subset's training fakes, so that
the probes and detectors can be trained where blur tells nothing.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from synthdet.data.imageio import STATUS_OK, ImageDecodeError, fit_to_input, load_rgb
from synthdet.datasets.embedded.biased import write_variant
from synthdet.fsutil import atomic_write_bytes, inside
from synthdet.transforms.degrade import gaussian_blur

BLUR_SIGMAS = tuple(round(0.25 * k, 2) for k in range(13))  # 0 to 3 px at the detector's view size
# the unsharp mask's strength (radius SHARPEN_RADIUS), finer where a little sharpening moves the share most;
# the embedded fakes are up to 50x smoother than the reals, whence the long tail
SHARPEN_PERCENTS = (0, 25, 50, 75, 100, 150, 200, 300, 400, 500, 700, 1000, 1500, 2000, 3000, 5000)
SHARPEN_RADIUS = 1.0
MATCH_IMAGES = 100  # per subset and label of the training split: enough for a stable median
REALS_BLURRED, FAKES_SHARPENED = "reals_blurred", "fakes_sharpened"


def grey(img: Image.Image) -> np.ndarray:
    rgb = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    return rgb @ np.array([0.299, 0.587, 0.114])


def laplacian_variance(grey_image: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: the usual sharpness number (low = smooth)."""
    g = grey_image
    laplacian = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(laplacian.var())


def high_frequency_share(grey_image: np.ndarray) -> float:
    """The share of the spectral energy (mean removed) in the upper half of the frequencies."""
    power = np.abs(np.fft.fftshift(np.fft.fft2(grey_image - grey_image.mean()))) ** 2
    h, w = grey_image.shape
    fy, fx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    return float(power[np.hypot(fx, fy) > 0.5].sum() / max(power.sum(), 1e-12))


def unsharp_mask(img: Image.Image, percent: int, radius: float = SHARPEN_RADIUS) -> Image.Image:
    """The classic sharpening: the image plus ``percent``% of its difference from a Gaussian blur of
    standard deviation ``radius`` (no threshold: every pixel)."""
    return img.filter(ImageFilter.UnsharpMask(radius=float(radius), percent=int(percent), threshold=0))


def blurred(sigma: float, size: int) -> Callable[[Image.Image], Image.Image]:
    """The counterfactual's change of a real: its view (``size`` px) low-passed."""
    return lambda img: gaussian_blur(fit_to_input(img, size), sigma) if sigma else img


def sharpened(percent: int, size: int) -> Callable[[Image.Image], Image.Image]:
    """The counterfactual's change of a fake: its view (``size`` px) sharpened."""
    return lambda img: unsharp_mask(fit_to_input(img, size), percent, SHARPEN_RADIUS) if percent else img


def _median_share(views: list[Image.Image], change: Callable[[Image.Image], Image.Image] | None = None) -> float:
    return float(np.median([high_frequency_share(grey(change(v) if change else v)) for v in views]))


def _closest(views: list[Image.Image], target: float, strengths: tuple, change: Callable, size: int) -> tuple:
    """The strength whose changed views' median share is nearest ``target`` (the weakest of ties)."""
    shares = [_median_share(views, change(s, size)) for s in strengths]
    best = int(np.argmin([abs(v - target) for v in shares]))
    return strengths[best], shares[best]


@dataclass(frozen=True)
class Match:
    """One subset's sharpness before and after matching (medians over the sampled training views)."""

    subset: str
    real_images: int
    fake_images: int
    real_laplacian_var: float
    fake_laplacian_var: float
    real_high_freq_share: float
    fake_high_freq_share: float
    blur_sigma: float
    blurred_real_high_freq_share: float
    sharpen_percent: int
    sharpened_fake_high_freq_share: float


def _views(paths: list[str], size: int) -> list[Image.Image]:
    views = []
    for path in paths:
        try:
            views.append(fit_to_input(load_rgb(path), size))
        except ImageDecodeError:
            continue  # counted out: the match is on the images that decode
    return views


def match_sharpness(train: pd.DataFrame, size: int, seed: int, max_images: int = MATCH_IMAGES) -> pd.DataFrame:
    """Per subset with both labels in ``train`` (manifest rows): the blur that brings its reals'
    median high-frequency share to its fakes', the unsharp mask that brings the fakes' to the
    reals', and the statistics before and after, on at most ``max_images`` seeded views per label."""
    rows = []
    for subset, g in train.groupby("subset", sort=True):
        by_label = {label: g[g["label"] == label] for label in (0, 1)}
        if any(len(part) == 0 for part in by_label.values()):
            continue
        views = {label: _views(part.sample(min(max_images, len(part)), random_state=seed)["path"].tolist(), size)
                 for label, part in by_label.items()}
        if not views[0] or not views[1]:
            continue
        real_share, fake_share = _median_share(views[0]), _median_share(views[1])
        sigma, blurred_share = _closest(views[0], fake_share, BLUR_SIGMAS, blurred, size)
        percent, sharpened_share = _closest(views[1], real_share, SHARPEN_PERCENTS, sharpened, size)
        rows.append(asdict(Match(
            str(subset), len(views[0]), len(views[1]),
            float(np.median([laplacian_variance(grey(v)) for v in views[0]])),
            float(np.median([laplacian_variance(grey(v)) for v in views[1]])),
            real_share, fake_share, sigma, blurred_share, int(percent), sharpened_share)))
    return pd.DataFrame(rows, columns=[f for f in Match.__dataclass_fields__])


def conditions(matching: pd.DataFrame, size: int) -> dict[str, dict[tuple[str, int], Callable]]:
    """The two counterfactuals as the audit scores them: condition -> {(subset, label): change}."""
    return {REALS_BLURRED: {(r.subset, 0): blurred(r.blur_sigma, size) for r in matching.itertuples()},
            FAKES_SHARPENED: {(r.subset, 1): sharpened(r.sharpen_percent, size) for r in matching.itertuples()}}


def write_matched(test: pd.DataFrame, matching: pd.DataFrame, out: Path, size: int) -> pd.DataFrame:
    """The test images the two counterfactuals change, written (lossless PNG of the changed view) so
    that every table run scores them as it scores the degraded test images: per matched subset its
    reals blurred (condition ``reals_blurred``) and its fakes sharpened (``fakes_sharpened``) by the
    strengths chosen on the training split. A strength of 0 changes nothing: those images keep their
    clean scores and get no row. Rows like the degraded table's (``source_path`` is the clean file);
    existing files are kept (an interrupted run resumes)."""
    rows = []
    common = os.path.commonpath([os.path.dirname(p) for p in test["path"]]) if len(test) else ""
    for m in matching.itertuples():
        for condition, label, strength, change in (
                (REALS_BLURRED, 0, float(m.blur_sigma), blurred(m.blur_sigma, size)),
                (FAKES_SHARPENED, 1, float(m.sharpen_percent), sharpened(m.sharpen_percent, size))):
            if not strength:
                continue
            part = test[(test["subset"] == m.subset) & (test["label"] == label)]
            for r in part.to_dict("records"):
                rel = Path(os.path.relpath(r["path"], common)).with_suffix(".png").as_posix()
                target = inside(out, f"{condition}/{rel}", "sharpness-matched test set")
                if not target.exists():
                    try:
                        view = change(load_rgb(r["path"]))  # the change brings it to the view first
                    except ImageDecodeError:
                        continue  # as in the clean test set: an image that does not decode is not scored
                    buf = io.BytesIO()
                    view.save(buf, format="PNG")
                    atomic_write_bytes(target, buf.getvalue())
                rows.append({"path": target.as_posix(), "source_path": r["path"],
                             **{k: r[k] for k in ("label", "subset", "generator", "content", "class")},
                             "condition": condition, "kind": "sharpness", "paper_value": float("nan"),
                             "effective_value": strength})
    return pd.DataFrame(rows, columns=["path", "source_path", "label", "subset", "generator", "content", "class",
                                       "condition", "kind", "paper_value", "effective_value"])


VARIANT_SIGMA_STEP = 0.05  # the variant's per-image blur: searched on this grid, up to VARIANT_MAX_SIGMA
VARIANT_MAX_SIGMA = 6.0


def share_of(view: Image.Image) -> float:
    """The high-frequency share of an image as it is (a view already at the detector's size)."""
    return high_frequency_share(grey(view))


def drawn_target(key: str, fakes: np.ndarray, seed: int) -> float:
    """The high-frequency share of one of ``fakes`` (a subset's training fakes), drawn for the real
    ``key`` names (its file name) with ``seed``: the same draw on every run and machine."""
    rng = np.random.default_rng([int(seed), zlib.crc32(key.encode())])
    return float(fakes[rng.integers(len(fakes))])


def blur_to_share(view: Image.Image, target: float, size: int) -> tuple[float, Image.Image]:
    """The weakest blur on the grid whose view's share is nearest ``target`` (0: the view is already
    at or below it). The share falls as the blur grows, so the search stops once it passes."""
    before, best = share_of(view), (0.0, view)
    if before <= target:
        return best
    gap = before - target
    for k in range(1, int(round(VARIANT_MAX_SIGMA / VARIANT_SIGMA_STEP)) + 1):
        sigma = round(k * VARIANT_SIGMA_STEP, 4)
        changed = blurred(sigma, size)(view)
        now = share_of(changed)
        if abs(now - target) < gap:
            best, gap = (sigma, changed), abs(now - target)
        if now <= target:
            break
    return best


def training_shares(manifest: pd.DataFrame, subset: str, size: int) -> dict[int, np.ndarray]:
    """The sorted high-frequency shares of one subset's training views, per label (all of them: a
    few milliseconds each at the detector's view size)."""
    train = manifest[(manifest["split"] == "train") & (manifest["subset"] == subset)]
    return {label: np.sort([share_of(v) for v in _views(train[train["label"] == label]["path"].tolist(), size)])
            for label in (0, 1)}


def write_matched_variant(manifest: pd.DataFrame, matching: pd.DataFrame, out: Path, size: int,
                          seed: int) -> pd.DataFrame:
    """The sharpness-matched benchmark: every split's reals blurred so that their high-frequency
    shares follow the fakes', so that a detector can be trained and probed where blur tells nothing.
    One blur per subset (the counterfactual's) matches the medians only: the reals' spread stays,
    and the probe still reads it (measured: AUC 0.86-1.00 on the embedded subsets). Here each real
    is blurred on its own, to the share of a fake drawn for it (seeded by ``seed`` and its file
    name) from its subset's training fakes, so that the blurred reals' shares follow the training
    fakes' distribution in every split (a real already at or below its draw is left as it is).
    Mapping each real's rank among the reals onto the fakes' (quantile mapping) was tried first and
    dropped: where the reals' shares lie close together, it turns a small shift between splits into
    a large one. Every image is stored as its view (``size`` px, lossless PNG: both labels alike,
    no format or size to read); fakes, and the reals of a subset without a match (``matching``: the
    subsets with training images of both labels), as they are seen. Returns the variant's manifest:
    the same rows, splits and groups, new paths and file facts, each real's blur in
    ``variant_blur_sigma``; a GenImage-layout tree like the biased variant's. An image that does not
    decode keeps its row, indexed as missing."""
    out = Path(out)
    shares = {str(m.subset): training_shares(manifest, str(m.subset), size) for m in matching.itertuples()}
    shares = {k: v for k, v in shares.items() if len(v[0]) and len(v[1])}
    sigmas: dict[str, float] = {}  # by the variant's path (its manifest comes back sorted)

    def write(r: Any, folder: str) -> Path:
        target = inside(out, f"{folder}/{Path(r.path).stem}.png", "sharpness-matched variant")
        sigma = 0.0
        try:
            view = fit_to_input(load_rgb(r.path), size)
        except ImageDecodeError:
            return target  # not written: indexed as missing (its blur NaN)
        if int(r.label) == 0 and str(r.subset) in shares:
            sigma, view = blur_to_share(view, drawn_target(Path(r.path).name, shares[str(r.subset)][1], seed), size)
        sigmas[target.as_posix()] = sigma
        buf = io.BytesIO()
        view.save(buf, format="PNG")
        atomic_write_bytes(target, buf.getvalue())
        return target

    variant = write_variant(manifest, out, "sharpness-matched variant", write)
    return variant.assign(variant_blur_sigma=variant["path"].map(sigmas).astype(float))


def variant_test_rows(variant: pd.DataFrame, condition: str, columns: pd.Index | list[str]) -> pd.DataFrame:
    """The usable test images of the sharpness-matched variant (its manifest) as rows of the
    degraded table (``columns``), under ``condition``: scored as the table runs score degraded images."""
    test = variant[(variant["split"] == "test") & (variant["status"] == STATUS_OK)]
    rows = test[["path", "label", "subset", "generator", "content", "class"]].assign(
        source_path=test["path"], condition=condition, kind="sharpness", paper_value=float("nan"),
        effective_value=float("nan"))
    return rows.reindex(columns=columns)
