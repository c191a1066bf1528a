"""Spec (Zhang et al., WIFS 2019, "Detecting and simulating artifacts in GAN fake images"): a
classifier on the image's log-magnitude Fourier spectrum, where upsampling leaves periodic peaks.
The spectrum is computed inside ``forward`` so the model takes ordinary images."""

from __future__ import annotations

import torch
from torch import nn

from synthdet.data.dataset import IMAGENET, DataConfig
from synthdet.detectors.backbones import TimmDetector
from synthdet.detectors.registry import register_detector


def log_spectrum(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-channel centred log-magnitude spectrum, standardised per image."""
    spec = torch.fft.fftshift(torch.fft.fft2(x.float(), norm="ortho"), dim=(-2, -1))
    mag = torch.log(spec.abs() + eps)
    mean = mag.mean(dim=(-3, -2, -1), keepdim=True)
    std = mag.std(dim=(-3, -2, -1), keepdim=True).clamp_min(eps)
    return (mag - mean) / std


class SpecDetector(nn.Module):
    data_config: DataConfig = IMAGENET  # the spectrum is taken of the normalised view

    def __init__(self, img_size: int = 224, backbone: str = "resnet50", **kwargs) -> None:
        super().__init__()
        self.classifier = TimmDetector(backbone, img_size=img_size, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(log_spectrum(x))


@register_detector("spec")
def spec(img_size: int = 224, **kwargs) -> nn.Module:
    return SpecDetector(img_size=img_size, **kwargs)
