"""GramNet (Liu et al., CVPR 2020, "Global texture enhancement for fake face detection in the
wild"): Gram-matrix blocks read the global texture statistics of the input and of every residual
stage's output; their features are concatenated with the backbone's before the classifier."""

from __future__ import annotations

import torch
from torch import nn

from synthdet.data.dataset import IMAGENET, DataConfig
from synthdet.detectors.backbones import PretrainedSpec, timm_backbone
from synthdet.detectors.registry import register_detector


class GramBlock(nn.Module):
    """conv -> channel Gram matrix (C x C, scale-free) -> small CNN on the Gram -> vector."""

    def __init__(self, in_ch: int, gram_ch: int = 32, out_dim: int = 32) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_ch, gram_ch, 3, 1, 1, bias=False)
        self.head = nn.Sequential(
            nn.Conv2d(1, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(True),
            nn.Conv2d(16, out_dim, 3, 2, 1), nn.BatchNorm2d(out_dim), nn.ReLU(True),
            nn.AdaptiveAvgPool2d(1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.reduce(x).flatten(2)  # B, C, HW
        gram = torch.bmm(f, f.transpose(1, 2)) / f.shape[-1]
        return self.head(gram.unsqueeze(1)).flatten(1)


class GramNet(nn.Module):
    data_config: DataConfig = IMAGENET

    def __init__(self, img_size: int = 224, backbone: str = "resnet50", gram_dim: int = 32,
                 pretrained: PretrainedSpec = False, **kwargs) -> None:
        super().__init__()
        net = timm_backbone(backbone, pretrained, num_classes=0, **kwargs)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        widths = [info["num_chs"] for info in net.feature_info][1:]  # after each stage
        self.grams = nn.ModuleList([GramBlock(3, out_dim=gram_dim)] + [GramBlock(c, out_dim=gram_dim) for c in widths])
        self.fc = nn.Linear(net.num_features + gram_dim * len(self.grams), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.grams[0](x)]
        h = self.stem(x)
        for stage, gram in zip(self.stages, self.grams[1:], strict=True):
            h = stage(h)
            feats.append(gram(h))
        feats.append(h.mean(dim=(-2, -1)))
        return self.fc(torch.cat(feats, dim=1)).squeeze(1)


@register_detector("gramnet")
def gramnet(img_size: int = 224, **kwargs) -> nn.Module:
    return GramNet(img_size=img_size, **kwargs)
