"""A torch Dataset over manifest rows that never dies on a bad file."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from synthdet.data.imageio import INTERPOLATIONS, STATUS_OK, ImageDecodeError, centre_crop, fit_to_input, load_rgb
from synthdet.data.pixelcache import PixelCache

log = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VIEWS = ("resize", "crop")


@dataclass(frozen=True)
class DataConfig:
    """The input a network wants, declared by the network itself (timm's ``pretrained_cfg``,
    DeepfakeBench's per-detector YAML): how an image is resampled to the input size, how the view
    is normalised, and the recipe's training-only step on full-size images. The Dataset, predict
    and the tables read it from the detector (``detector.data_config``), never guess it."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"  # of the resize to the input size (imageio.INTERPOLATIONS)
    train_augment: Callable[[Image.Image], Image.Image] | None = None  # e.g. CNNSpot's blur + JPEG
    view: str = "resize"  # "resize": short side to the input size, centre crop (fit_to_input);
    # "crop": the central input-size square at the image's own resolution (ImagiNet's test view)

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"view {self.view!r}: expected one of {list(VIEWS)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r}: expected one of {sorted(INTERPOLATIONS)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std: three channels each, std > 0 (got {self.mean}, {self.std})")


IMAGENET = DataConfig()  # what every detector of the registry gets today


def make_transform(input_size: int, train: bool, hflip: bool = True,
                   data: DataConfig = IMAGENET) -> Callable[[Image.Image], torch.Tensor]:
    """The detector's view (``data.view``: :func:`~synthdet.data.imageio.fit_to_input`, short side
    to the input size with ``data.interpolation`` and a centre crop, nothing to do on square images
    of that size; or :func:`~synthdet.data.imageio.centre_crop` without resampling), optional flip,
    then ``data``'s normalisation.

    No random crop or colour jitter by default: those change the very pixel statistics a detector
    relies on, and GenImage's baselines train without them.
    """
    fit = (functools.partial(centre_crop, size=input_size) if data.view == "crop"
           else functools.partial(fit_to_input, size=input_size, interpolation=data.interpolation))
    return v2.Compose([fit, v2.PILToTensor(), view_transform(train, hflip, data)])


def view_transform(train: bool, hflip: bool = True,
                   data: DataConfig = IMAGENET) -> Callable[[torch.Tensor], torch.Tensor]:
    """The rest of :func:`make_transform`, from the detector's view as a uint8 CHW tensor (what a
    :class:`~synthdet.data.pixelcache.PixelCache` stores): optional flip, then normalisation."""
    steps: list = [v2.RandomHorizontalFlip()] if train and hflip else []
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(data.mean, data.std)])


class ManifestDataset(Dataset):
    """Rows of a manifest -> (image tensor, label, row index, skipped).

    Rows come from a manifest, whose index checked every file strictly, so an epoch decodes without
    the JPEG data check. A file that fails to decode at run time (damaged since) is logged
    and replaced by the next decodable row, so one bad file never ends an epoch. ``skipped``
    reports the files passed over for this item (``path<TAB>problem`` lines, '' for none): it
    travels back from DataLoader workers in the batch, where ``self.failures`` (filled in each
    worker's own copy of the dataset) cannot.
    """

    def __init__(self, rows: pd.DataFrame, transform: Callable[[Image.Image], torch.Tensor],
                 image_transform: Callable[[Image.Image], Image.Image] | None = None,
                 cache: PixelCache | None = None,
                 prepare: Callable[[Image.Image, int], Image.Image] | None = None) -> None:
        """With ``cache`` (built for these rows), images are read from it as uint8 CHW views and
        ``transform`` takes those (:func:`view_transform`); ``image_transform`` needs full images.
        ``prepare(image, label)`` runs first on every decoded image (the debiased protocol's step)."""
        if cache is not None and (image_transform is not None or prepare is not None):
            raise ValueError("an image_transform works on full-size images: it cannot use a pixel cache")
        self.paths = rows["path"].tolist()
        self.labels = rows["label"].astype(int).tolist()
        self.transform, self.image_transform, self.prepare = transform, image_transform, prepare
        self.cache = cache
        self.failures: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, str]:
        skipped = []
        for offset in range(min(len(self.paths), 64)):
            i = (index + offset) % len(self.paths)
            try:
                img = self.cache.view(i) if self.cache is not None else load_rgb(self.paths[i], strict=False)
            except ImageDecodeError as exc:
                if self.paths[i] not in self.failures:
                    log.warning("skipping unreadable image: %s", exc)
                self.failures[self.paths[i]] = exc.problem
                skipped.append(f"{self.paths[i]}\t{exc.problem}")
                continue
            if self.prepare is not None:
                img = self.prepare(img, self.labels[i])
            if self.image_transform is not None:
                img = self.image_transform(img)
            return self.transform(img), self.labels[i], i, "\n".join(skipped)
        raise RuntimeError(f"64 consecutive unreadable images from {self.paths[index]}; is the data there?")


class ImageFiles(Dataset):
    """Image files -> (view, index, status, problem), for scoring: every file gets its own row. One
    that cannot be decoded gives a blank view with its status and reason (:class:`ImageDecodeError`)
    and the batch goes on; unlike :class:`ManifestDataset`, no neighbour is read in its place."""

    def __init__(self, paths: list[str], transform: Callable[[Image.Image], torch.Tensor], input_size: int,
                 image_transform: Callable[[Image.Image], Image.Image] | None = None) -> None:
        self.paths, self.transform, self.image_transform = paths, transform, image_transform
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str, str]:
        try:
            img = load_rgb(self.paths[i])
        except ImageDecodeError as exc:
            return torch.zeros(3, self.input_size, self.input_size), i, exc.status, exc.problem
        if self.image_transform is not None:
            img = self.image_transform(img)
        return self.transform(img), i, STATUS_OK, ""
