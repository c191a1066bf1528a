"""NPR (Tan et al., CVPR 2024, "Rethinking the up-sampling operations in CNN-based generative
network for generalizable deepfake detection"): the Neighbouring Pixel Relationships residual
``x - up(down(x))`` (nearest, factor 2) exposes the local correlations every upsampler leaves;
a ResNet-50 truncated after its second stage classifies it, as in the authors' model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synthdet.data.dataset import IMAGENET, DataConfig
from synthdet.detectors.backbones import PretrainedSpec, timm_backbone
from synthdet.detectors.registry import register_detector


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    x = x[..., : h - h % 2, : w - w % 2]
    return x - F.interpolate(F.interpolate(x, scale_factor=0.5, mode="nearest"), scale_factor=2.0, mode="nearest")


class NPRDetector(nn.Module):
    data_config: DataConfig = IMAGENET

    def __init__(self, img_size: int = 224, pretrained: PretrainedSpec = False, **kwargs) -> None:
        super().__init__()
        net = timm_backbone("resnet50", pretrained, num_classes=0, **kwargs)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool)
        self.layer1, self.layer2 = net.layer1, net.layer2
        self.fc = nn.Linear(512, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer2(self.layer1(self.stem(npr_residual(x) * (2.0 / 3.0))))
        return self.fc(h.mean(dim=(-2, -1))).squeeze(1)


@register_detector("npr")
def npr(img_size: int = 224, **kwargs) -> nn.Module:
    return NPRDetector(img_size=img_size, **kwargs)
