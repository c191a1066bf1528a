"""Test-time degradations (GenImage Task 2): pure functions, PIL image in, PIL image out.

GenImage degrades 224 px inputs: low resolution 112 and 64 px, JPEG quality 65 and 30, Gaussian
blur sigma 3 and 5. Test images are first brought to the detector's input size the way the
detector's own transform does it (:func:`synthdet.data.imageio.fit_to_input`), so at 224 px the paper's values apply
as they are. At another input size :func:`scaled_conditions` keeps the *relative* severity:
sizes and sigmas scale by ``image_size / reference_size``; JPEG quality does not scale.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, ImageFilter
from tqdm.auto import tqdm

from synthdet.data.imageio import fit_to_input, load_rgb
from synthdet.fsutil import atomic_write_bytes, inside


def low_resolution(img: Image.Image, size: int) -> Image.Image:
    """Downsample the short side to ``size`` px (bicubic) and back up to the original size."""
    w, h = img.size
    f = size / min(w, h)
    small = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC)
    return small.resize((w, h), Image.Resampling.BICUBIC)


def compress(img: Image.Image, codec: str, quality: int) -> Image.Image:
    """Encode with a lossy codec ("JPEG": 4:2:0 subsampling as cameras and PIL do, or "WEBP")
    at ``quality`` and decode again."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=codec, quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    return compress(img, "JPEG", quality)


def gaussian_blur(img: Image.Image, sigma: float) -> Image.Image:
    """Pillow's GaussianBlur takes the standard deviation as its radius."""
    return img.filter(ImageFilter.GaussianBlur(radius=float(sigma)))


@dataclass(frozen=True)
class Condition:
    name: str  # e.g. "jpeg_q65"
    kind: str  # "clean", "lowres", "jpeg", "blur"
    value: float  # the paper's value (at the reference size)
    effective: float  # the value applied at this benchmark's size

    def apply(self, img: Image.Image) -> Image.Image:
        if self.kind == "clean":
            return img
        if self.kind == "lowres":
            return low_resolution(img, int(self.effective))
        if self.kind == "jpeg":
            return jpeg(img, int(self.effective))
        if self.kind == "blur":
            return gaussian_blur(img, self.effective)
        raise ValueError(f"unknown degradation kind {self.kind!r}")


def scaled_conditions(image_size: int, reference_size: int, lowres: list[int], jpeg_quality: list[int],
                      blur_sigma: list[float]) -> list[Condition]:
    """The paper's conditions translated to ``image_size`` (see module docstring)."""
    f = image_size / reference_size
    conds = [Condition("clean", "clean", 0, 0)]
    conds += [Condition(f"lowres_{s}", "lowres", s, max(2, round(s * f))) for s in lowres]
    conds += [Condition(f"jpeg_q{q}", "jpeg", q, q) for q in jpeg_quality]
    conds += [Condition(f"blur_sigma{s:g}", "blur", s, round(s * f, 3)) for s in blur_sigma]
    return conds


KIND_ORDER = ("clean", "lowres", "jpeg", "blur")  # GenImage's column order
_NAME = re.compile(r"^(clean|lowres|jpeg|blur)(?:_(?:q|sigma)?([0-9.]+))?$")


def natural_order(names: list[str] | pd.Index) -> list[str]:
    """Condition names as GenImage orders them: clean, low resolution, JPEG, blur; within a kind
    from mild to severe (112 before 64 px, q65 before q30, sigma 3 before 5). Names of no known
    kind come last, as they are."""
    def key(name: str) -> tuple:
        m = _NAME.match(name)
        if not m:
            return (len(KIND_ORDER), 0.0)
        value = float(m.group(2) or 0)
        return (KIND_ORDER.index(m.group(1)), value if m.group(1) == "blur" else -value)

    return sorted(dict.fromkeys(names), key=key)


def write_degraded(test: pd.DataFrame, out: Path, image_size: int, conditions: list[Condition]) -> pd.DataFrame:
    """A degraded copy (lossless PNG) of every test image for every condition, degraded at the
    detector's input size ``image_size``; existing copies are kept (an interrupted run resumes).
    Rows come in the conditions' order; ``clean`` rows point at the original files."""
    rows = []
    # the folders' common root (not the files': with one test image that would be the file itself)
    common = os.path.commonpath([os.path.dirname(p) for p in test["path"]]) if len(test) else ""
    for cond in conditions:
        for r in tqdm(test.to_dict("records"), desc=cond.name):
            if cond.kind == "clean":
                path = r["path"]
            else:
                rel = Path(os.path.relpath(r["path"], common)).with_suffix(".png").as_posix()
                target = inside(out, f"{cond.name}/{rel}", "degraded test set")
                path = target.as_posix()
                if not target.exists():
                    buf = io.BytesIO()
                    cond.apply(fit_to_input(load_rgb(r["path"]), image_size)).save(buf, format="PNG")
                    atomic_write_bytes(target, buf.getvalue())
            rows.append({"path": path, "source_path": r["path"],
                         **{k: r[k] for k in ("label", "subset", "generator", "content", "class")},
                         "condition": cond.name, "kind": cond.kind, "paper_value": cond.value,
                         "effective_value": cond.effective})
    return pd.DataFrame(rows)
