"""ImagiNet's training and calibration augmentations ("Additional Training Details" of the paper),
seeded by a numpy Generator and returning what they did, so a test can check every rate.

Training (SelfCon, 96 px, no resizing): pad if needed to 96 with reflection, random crop 96; half
of the images get one of JPEG or WebP at quality 50-95, a Gaussian blur with an odd kernel
k in [3, 7] and sigma = 0.3 ((k - 1) 0.5 - 1) + 0.8 (OpenCV's rule), or Gaussian noise of
variance 3-10 (grey levels); a third are rotated by 90 degrees; a third flipped, horizontally or
vertically. Calibration (256 px): half of the images are perturbed, 70% of those as above, 30%
by a reflection pad to 256, a random resized crop (scale 0.08-1, ratio 3/4-4/3) and, for half of
them, JPEG or WebP at 50-95; then every image is padded if needed, cropped to 256, rotated and
flipped as in training.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from synthdet.data.imageio import pad_if_needed
from synthdet.transforms.degrade import compress

QUALITY = (50, 95)
BLUR_KERNELS = (3, 5, 7)
NOISE_VARIANCE = (3.0, 10.0)


def blur_sigma(kernel: int) -> float:
    """OpenCV's sigma for a Gaussian kernel size (the paper's formula)."""
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def random_crop(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    return img.crop((left, top, left + size, top + size))


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
    """torchvision's RandomResizedCrop sampling (10 tries, then the central crop), with ``rng``."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:
        cw = ch = min(w, h)
        left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch)).resize((size, size), Image.Resampling.BILINEAR)


def one_degradation(img: Image.Image, rng: np.random.Generator, kinds: tuple[str, ...]) -> tuple[Image.Image, str]:
    """One of ``kinds`` (jpeg, webp, blur, noise), drawn uniformly, at a random strength."""
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind in ("jpeg", "webp"):
        quality = int(rng.integers(QUALITY[0], QUALITY[1] + 1))
        return compress(img, kind.upper(), quality), f"{kind}_q{quality}"
    if kind == "blur":
        k = BLUR_KERNELS[int(rng.integers(len(BLUR_KERNELS)))]
        return TF.gaussian_blur(img, [k, k], [blur_sigma(k)] * 2), f"blur_k{k}"
    variance = float(rng.uniform(*NOISE_VARIANCE))
    noisy = np.asarray(img, dtype=np.float64) + rng.normal(0.0, math.sqrt(variance), (img.height, img.width, 3))
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8)), f"noise_var{variance:.1f}"


def rotate_and_flip(img: Image.Image, rng: np.random.Generator, ops: list[str]) -> Image.Image:
    if rng.random() < 1 / 3:
        img = img.transpose(Image.Transpose.ROTATE_90)
        ops.append("rot90")
    if rng.random() < 1 / 3:
        horizontal = rng.random() < 0.5
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT if horizontal else Image.Transpose.FLIP_TOP_BOTTOM)
        ops.append("hflip" if horizontal else "vflip")
    return img


ALL = ("jpeg", "webp", "blur", "noise")


def train_augment(img: Image.Image, rng: np.random.Generator, size: int = 96) -> tuple[Image.Image, list[str]]:
    """SelfCon pre-training's augmentation of one RGB image; the operations applied, in order."""
    img = random_crop(pad_if_needed(img, size), size, rng)
    ops: list[str] = []
    if rng.random() < 0.5:
        img, op = one_degradation(img, rng, ALL)
        ops.append(op)
    return rotate_and_flip(img, rng, ops), ops


def crop_augment(img: Image.Image, rng: np.random.Generator, size: int = 96) -> tuple[Image.Image, list[str]]:
    """The training view without degradations (Table 3's Grag2021 row): pad if needed, random
    crop, rotation and flip as in :func:`train_augment`."""
    ops: list[str] = []
    return rotate_and_flip(random_crop(pad_if_needed(img, size), size, rng), rng, ops), ops


def apply_condition(img: Image.Image, condition: str, size: int) -> Image.Image:
    """Figure 4's perturbations of a test image whose side is ``size``: ``clean``; ``jpeg_q<q>``
    (JPEG at quality q); ``zoom_r<r>`` (the central ``size*r`` square, resized back to ``size``
    with bilinear interpolation: the paper's "center crop 256r x 256r, resized to 256")."""
    if condition == "clean":
        return img
    kind, _, value = condition.partition("_")
    if kind == "jpeg" and value.startswith("q"):
        return compress(img, "JPEG", int(value[1:]))
    if kind == "zoom" and value.startswith("r"):
        r = float(value[1:])
        if not 0 < r <= 1:
            raise ValueError(f"{condition}: the crop fraction r must be in (0, 1]")
        side = max(1, round(min(img.size) * r))
        left, top = (img.width - side) // 2, (img.height - side) // 2
        return img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
    raise ValueError(f"unknown test condition {condition!r} (clean, jpeg_q<quality>, zoom_r<fraction>)")


def condition_transform(condition: str, size: int) -> Callable[[Image.Image], Image.Image]:
    """:func:`apply_condition` as a test image's transform (before the network's centre crop)."""
    return functools.partial(apply_condition, condition=condition, size=size)


def condition_names(jpeg_quality: list[int], zoom: list[float]) -> list[str]:
    """The conditions of Figure 4, in its order: clean, JPEG from high to low quality, zoom from mild to strong."""
    return ["clean", *(f"jpeg_q{q}" for q in sorted(jpeg_quality, reverse=True)),
            *(f"zoom_r{r:g}" for r in sorted(zoom, reverse=True))]


def calibration_augment(img: Image.Image, rng: np.random.Generator, size: int = 256) -> tuple[Image.Image, list[str]]:
    """Stage 2's (calibration) augmentation of one RGB image; the operations applied, in order."""
    ops: list[str] = []
    if rng.random() < 0.5:
        if rng.random() < 0.7:
            img, op = one_degradation(img, rng, ALL)
            ops.append(op)
        else:
            img = random_resized_crop(pad_if_needed(img, size), size, rng)
            ops.append("resized_crop")
            if rng.random() < 0.5:
                img, op = one_degradation(img, rng, ("jpeg", "webp"))
                ops.append(op)
    img = random_crop(pad_if_needed(img, size), size, rng)
    return rotate_and_flip(img, rng, ops), ops
