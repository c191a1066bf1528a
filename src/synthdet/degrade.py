"""Test-time degradations (GenImage Task 2): pure functions, PIL image in, PIL image out.

GenImage degrades 224 px inputs: low resolution 112 and 64 px, JPEG quality 65 and 30, Gaussian
blur sigma 3 and 5. Test images are first brought to the detector's input size the way the
detector's own transform does it (:func:`fit_to_input`), so at 224 px the paper's values apply
as they are. At another input size :func:`scaled_conditions` keeps the *relative* severity:
sizes and sigmas scale by ``image_size / reference_size``; JPEG quality does not scale.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageFilter


def fit_to_input(img: Image.Image, size: int) -> Image.Image:
    """Short side to ``size`` (bicubic, antialiased) and a centre crop: the detector's view."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    f = size / min(w, h)
    img = img.resize((max(size, round(w * f)), max(size, round(h * f))), Image.Resampling.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


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
