"""Robust image decoding: every failure names the file and the reason, nothing crashes a run.

All images that reach a model pass through :func:`load_rgb`, so real and fake images are decoded
the same way (8-bit RGB, alpha composited on black, first frame of animations).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin

# Larger than any image in GenImage/ImagiNet (Midjourney tops out near 2k x 2k) but far below a
# decompression bomb. Pillow's own limit warns at 89 Mpx and fails at twice that; we fail earlier.
MAX_PIXELS = 64_000_000
# Long side / short side. Bringing the short side to the model's input multiplies the long side
# by this much: a 1x1,000,000 PNG (1 KB) would otherwise ask for gigabytes. Panoramas stay < 10.
MAX_ASPECT_RATIO = 32
# libjpeg-turbo warnings that say nothing about lost pixels (common in ImageNet's camera files)
BENIGN_JPEG_WARNINGS = ("extraneous bytes before marker", "Invalid SOS parameters")

STATUS_OK = "ok"


class ImageDecodeError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str, status: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem
        self.status = status


@dataclass(frozen=True)
class ImageInfo:
    """What the indexer records about one file."""

    width: int
    height: int
    format: str
    mode: str
    jpeg_quality: int | None
    n_frames: int
    subsampling: str = ""  # JPEG chroma subsampling ("4:2:0", ...); "" for other formats
    exif: bool = False  # an EXIF segment is present (cameras write one; generators rarely do)


# The IJG standard quantisation tables (JPEG Annex K), in the row-major order Pillow reports.
IJG_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)
IJG_CHROMA = np.array(
    [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
     47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32, dtype=np.int64)
SUBSAMPLING = {-1: "none", 0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}  # Pillow's get_sampling codes (-1: not 3 channels)


def ijg_tables(quality: int) -> tuple[np.ndarray, np.ndarray]:
    """The luminance and chrominance tables libjpeg writes at ``quality`` (jpeg_quality_scaling)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return tuple(np.clip((t * scale + 50) // 100, 1, 255) for t in (IJG_LUMA, IJG_CHROMA))  # type: ignore[return-value]


_IJG_BY_QUALITY = {q: ijg_tables(q) for q in range(1, 101)}


def estimate_jpeg_quality(tables: dict[int, list[int]] | None) -> int | None:
    """The IJG quality whose tables are closest to ``tables`` (Pillow's ``img.quantization``): the
    exact quality for any file libjpeg (Pillow, cameras, most tools) wrote with standard tables,
    the nearest one for custom tables. Compares the luminance table and, when present, the first
    chrominance table."""
    if not tables or 0 not in tables:
        return None
    luma = np.asarray(tables[0], dtype=np.int64)
    chroma = np.asarray(tables[1], dtype=np.int64) if 1 in tables else None
    if luma.shape != IJG_LUMA.shape or (chroma is not None and chroma.shape != IJG_CHROMA.shape):
        return None

    def distance(q: int) -> int:
        std_luma, std_chroma = _IJG_BY_QUALITY[q]
        off = int(np.abs(luma - std_luma).sum())
        return off + (int(np.abs(chroma - std_chroma).sum()) if chroma is not None else 0)

    return min(range(1, 101), key=lambda q: (distance(q), -q))  # ties (tables all 1 or all 255): the higher


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageDecodeError(path, "file does not exist", "missing")
    if path.stat().st_size == 0:
        raise ImageDecodeError(path, "zero-byte file", "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(path, f"decompression bomb refused ({exc})", "too_large") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError(path, "not an image file Pillow can identify", "not_image") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # ValueError: a PNG text or profile chunk that
        raise ImageDecodeError(path, f"cannot open ({exc})", "corrupt") from exc  # inflates past Pillow's limit
    if img.width * img.height > MAX_PIXELS:
        raise ImageDecodeError(
            path, f"{img.width}x{img.height} exceeds the {MAX_PIXELS:,}-pixel limit", "too_large"
        )
    if img.width < 1 or img.height < 1:
        raise ImageDecodeError(path, f"degenerate size {img.width}x{img.height}", "corrupt")
    if max(img.size) > MAX_ASPECT_RATIO * min(img.size):
        raise ImageDecodeError(path, f"{img.width}x{img.height}: aspect ratio beyond {MAX_ASPECT_RATIO}:1 "
                                     "(resizing it would exhaust memory)", "extreme_aspect")
    return img


def check_jpeg_data(path: Path) -> None:
    """Decode a JPEG strictly (libjpeg-turbo, at 1/8 scale: cheap, bounded memory) and refuse the
    data losses Pillow hides: a file cut short with its end marker put back decodes as grey rows,
    and a 16x16 file whose header claims 9000x7000 as a grey 63-megapixel image, both without error."""
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(path.read_bytes(), strict=True, min_factor=8, min_width=1, min_height=1)
    except ValueError as exc:
        if not any(w in str(exc) for w in BENIGN_JPEG_WARNINGS):
            raise ImageDecodeError(path, f"corrupt JPEG data ({exc})", "corrupt") from exc


def inspect_image(path: Path | str) -> ImageInfo:
    """Fully decode ``path`` once (catching truncation) and report its properties."""
    path = Path(path)
    img = _open(path)
    with img:
        fmt, mode = img.format or "unknown", img.mode
        quality = estimate_jpeg_quality(getattr(img, "quantization", None)) if fmt == "JPEG" else None
        subsampling = SUBSAMPLING.get(JpegImagePlugin.get_sampling(img), "other") if fmt == "JPEG" else ""
        exif = "exif" in img.info
        frames = getattr(img, "n_frames", 1)
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageDecodeError(path, f"truncated or corrupt image data ({exc})", "corrupt") from exc
        if fmt == "JPEG":
            check_jpeg_data(path)
        return ImageInfo(img.width, img.height, fmt, mode, quality, frames, subsampling, exif)


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: alpha over black, CMYK and palettes converted, 16-bit rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_rgb(path: Path | str, strict: bool = True) -> Image.Image:
    """Decode ``path`` to 8-bit RGB (first frame), or raise :class:`ImageDecodeError`. ``strict``:
    a JPEG's data is checked as :func:`inspect_image` checks it (a file cut short with its end
    marker put back, or a header that claims more pixels than the data holds, is corrupt, not a
    grey picture); only readers of files the index has checked so may skip it (a training epoch)."""
    path = Path(path)
    img = _open(path)
    try:
        with img:
            img.seek(0)
            img.load()
            if strict and img.format == "JPEG":
                check_jpeg_data(path)
            return to_rgb(img)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(path, f"truncated or corrupt image data ({exc})", "corrupt") from exc


INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                  "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}


def fit_to_input(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """The detector's view of an image: short side to ``size`` (bicubic by default, antialiased)
    and a centre crop. The one resize of the project: the detectors' transform and the degrade
    stage both call it, so a clean test image and its degraded copies are resampled the same way."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r}: expected one of {sorted(INTERPOLATIONS)}")
    w, h = img.size
    if (w, h) == (size, size):
        return img
    f = size / min(w, h)
    img = img.resize((max(size, round(w * f)), max(size, round(h * f))), INTERPOLATIONS[interpolation])
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))



def pad_if_needed(img: Image.Image, size: int) -> Image.Image:
    """Reflection padding (both sides) up to ``size`` x ``size``; larger images are left as they are."""
    w, h = img.size
    if w >= size and h >= size:
        return img
    pad_w, pad_h = max(0, size - w), max(0, size - h)
    arr = np.asarray(img)
    mode = "reflect" if min(w, h) > 1 else "symmetric"  # one pixel has nothing to reflect
    arr = np.pad(arr, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)), mode=mode)
    return Image.fromarray(arr)


def centre_crop(img: Image.Image, size: int) -> Image.Image:
    """The central ``size`` square at the image's own resolution, reflection-padded if smaller
    (ImagiNet's test view: no resampling, so a generator's pixel-level traces stay as they are)."""
    img = pad_if_needed(img, size)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))
