"""GAN family, second upsampler: nearest-neighbour resize + convolution (Odena et al. 2016).

Same adversarial recipe as DCGAN but without transposed convolutions, whose checkerboard
artifacts are what many detectors key on; a detector that only learned those fails here.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class UpsampleGenerator(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, size: int = 64) -> None:
        super().__init__()
        n_up = int(math.log2(size)) - 2
        mult = 2 ** (n_up - 1)
        self.project = nn.Sequential(nn.Linear(nz, ngf * mult * 16), nn.ReLU(True))
        blocks: list[nn.Module] = []
        ch = ngf * mult
        for _ in range(n_up):
            out = max(ngf, ch // 2)
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, out, 3, 1, 1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(True)]
            ch = out
        blocks += [nn.Conv2d(ch, nc, 3, 1, 1), nn.Tanh()]
        self.main = nn.Sequential(*blocks)
        self.nz, self.base = nz, ngf * mult

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(self.project(z.flatten(1)).view(len(z), self.base, 4, 4))
