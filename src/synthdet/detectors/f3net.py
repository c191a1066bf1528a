"""F3Net (Qian et al., ECCV 2020, "Thinking in frequency"): two frequency-aware branches.

- FAD (frequency-aware decomposition): the image's DCT is split by fixed low / mid / high / all
  band masks, each plus a learnable residual mask, and transformed back: 4 bands x 3 channels.
- LFS (local frequency statistics): a sliding-window DCT of the grey image, log-magnitude summed
  in 6 frequency bands, giving 6 channels at the window-stride resolution.
Each branch feeds its own backbone (Xception in the paper); the pooled features are concatenated
and classified. The paper's MixBlock (cross-attention between the branches at two middle
stages) is not reproduced: fusion here is late, by concatenation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from synthdet.data.dataset import IMAGENET, DataConfig
from synthdet.detectors.backbones import PretrainedSpec, timm_backbone
from synthdet.detectors.registry import register_detector


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix: X = D x D^T."""
    k = torch.arange(n, dtype=torch.float32)[:, None]
    i = torch.arange(n, dtype=torch.float32)[None]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def band_mask(n: int, low: float, high: float) -> torch.Tensor:
    """1 where low <= (u + v) / (2n - 2) < high (radial bands in the DCT plane)."""
    u = torch.arange(n)[:, None] + torch.arange(n)[None]
    r = u.float() / (2 * n - 2)
    return ((r >= low) & (r < high)).float() if high < 1 else (r >= low).float()


class FAD(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("dct", dct_matrix(size))
        bands = [(0.0, 1 / 16), (1 / 16, 1 / 8), (1 / 8, 1.0), (0.0, 1.0)]
        self.register_buffer("base", torch.stack([band_mask(size, lo, hi) for lo, hi in bands]))
        self.learnable = nn.Parameter(torch.randn(len(bands), size, size) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        freq = self.dct @ x @ self.dct.T  # B, 3, n, n
        masks = self.base + (2 * torch.sigmoid(self.learnable) - 1)
        bands = [self.dct.T @ (freq * m) @ self.dct for m in masks]
        return torch.cat(bands, dim=1)  # B, 12, n, n


class LFS(nn.Module):
    def __init__(self, window: int = 8, stride: int = 2, n_bands: int = 6) -> None:
        super().__init__()
        self.window, self.stride = window, stride
        self.register_buffer("dct", dct_matrix(window))
        edges = torch.linspace(0, 1, n_bands + 1)
        masks = [band_mask(window, float(lo), float(hi) if i < n_bands - 1 else 1.0)
                 for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True))]
        self.register_buffer("masks", torch.stack(masks).flatten(1))  # bands, w*w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        b, _, h, w = grey.shape
        patches = nn.functional.unfold(grey, self.window, stride=self.stride)  # B, w*w, L
        patches = patches.transpose(1, 2).reshape(-1, self.window, self.window)
        freq = (self.dct @ patches @ self.dct.T).abs().flatten(1)  # B*L, w*w
        stats = torch.log10(freq @ self.masks.T + 1e-6)  # B*L, bands
        oh, ow = (h - self.window) // self.stride + 1, (w - self.window) // self.stride + 1
        return stats.reshape(b, oh, ow, -1).permute(0, 3, 1, 2)


class F3Net(nn.Module):
    data_config: DataConfig = IMAGENET

    def __init__(self, img_size: int = 224, backbone: str = "legacy_xception", pretrained: PretrainedSpec = False,
                 **kwargs) -> None:
        super().__init__()
        self.fad, self.lfs = FAD(img_size), LFS()
        # ImageNet weights, the input convolution adapted to 12 and 6 channels (as F3Net does)
        self.fad_net = timm_backbone(backbone, pretrained, num_classes=0, in_chans=12, **kwargs)
        self.lfs_net = timm_backbone(backbone, pretrained, num_classes=0, in_chans=6, **kwargs)
        self.fc = nn.Linear(self.fad_net.num_features + self.lfs_net.num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([self.fad_net(self.fad(x)), self.lfs_net(self.lfs(x))], dim=1)
        return self.fc(feats).squeeze(1)


@register_detector("f3net")
def f3net(img_size: int = 224, **kwargs) -> nn.Module:
    return F3Net(img_size=img_size, **kwargs)
