"""GenImage's generic backbones from timm: ResNet-50, DeiT-S, Swin-T (and any other timm name).

``train.pretrained`` starts them from ImageNet weights (timm's, or a local file: see
``backbones.py``); ``train.weights`` from a whole detector checkpoint.
"""

from __future__ import annotations

from torch import nn

from synthdet.detectors.backbones import TimmDetector
from synthdet.detectors.registry import register_detector


@register_detector("resnet50")
def resnet50(img_size: int = 224, **kwargs) -> nn.Module:
    return TimmDetector("resnet50", img_size=img_size, **kwargs)


@register_detector("deit_s")
def deit_s(img_size: int = 224, **kwargs) -> nn.Module:
    return TimmDetector("deit_small_patch16_224", img_size=img_size, **kwargs)


@register_detector("swin_t")
def swin_t(img_size: int = 224, **kwargs) -> nn.Module:
    """Swin-T's 7x7 windows need a 224 input; smaller inputs get windows that tile them."""
    if img_size % 224 and "window_size" not in kwargs:
        kwargs["window_size"] = max(1, img_size // 32)
    return TimmDetector("swin_tiny_patch4_window7_224", img_size=img_size, **kwargs)
