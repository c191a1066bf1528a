"""CNNSpot (Wang et al., CVPR 2020, "CNN-generated images are surprisingly easy to spot... for
now"): a ResNet-50 whose training images are blurred and JPEG-compressed at random. The
architecture is plain; the augmentation is the method, so it travels with the model as its data
config's ``train_augment`` (the training loop applies it to training images only)."""

from __future__ import annotations

import random

from PIL import Image
from torch import nn

from synthdet.data.dataset import DataConfig
from synthdet.detectors.backbones import TimmDetector
from synthdet.detectors.registry import register_detector
from synthdet.transforms.degrade import gaussian_blur, jpeg


class BlurJpegAugment:
    """With probability ``prob`` each: Gaussian blur sigma ~ U[0, sigma_max], JPEG quality ~
    U{quality_min..100} (the paper's "Blur+JPEG (0.5)": sigma_max 3, quality 30-100 at 224 px)."""

    def __init__(self, prob: float = 0.5, sigma_max: float = 3.0, quality_min: int = 30) -> None:
        self.prob, self.sigma_max, self.quality_min = prob, sigma_max, quality_min

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() < self.prob:
            img = gaussian_blur(img, random.uniform(0.0, self.sigma_max))
        if random.random() < self.prob:
            img = jpeg(img, random.randint(self.quality_min, 100))
        return img


class CNNSpot(TimmDetector):
    def __init__(self, img_size: int = 224, prob: float = 0.5, sigma_max: float | None = None,
                 quality_min: int = 30, **kwargs) -> None:
        super().__init__("resnet50", img_size=img_size, **kwargs)
        # sigma 3 is for 224 px images; keep the same relative blur at other sizes
        sigma_max = 3.0 * img_size / 224 if sigma_max is None else sigma_max
        self.data_config = DataConfig(train_augment=BlurJpegAugment(prob, sigma_max, quality_min))


@register_detector("cnnspot")
def cnnspot(img_size: int = 224, **kwargs) -> nn.Module:
    return CNNSpot(img_size=img_size, **kwargs)
