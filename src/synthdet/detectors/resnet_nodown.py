"""ResNet-50 without early downsampling (Gragnaniello et al. 2021; Corvi et al. 2023; ImagiNet's
backbone): the stem convolution has stride 1 and there is no max-pool, so the high-frequency
traces generators leave are not averaged away before the first residual stage."""

from __future__ import annotations

from torch import nn

from synthdet.detectors.backbones import TimmDetector
from synthdet.detectors.registry import register_detector


@register_detector("resnet50_nodown")
def resnet50_nodown(img_size: int = 224, **kwargs) -> nn.Module:
    model = TimmDetector("resnet50", img_size=img_size, **kwargs)
    model.model.conv1.stride = (1, 1)
    model.model.maxpool = nn.Identity()
    return model
