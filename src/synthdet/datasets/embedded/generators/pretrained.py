"""GAN family, pretrained: generators whose weights ship inside PyPI wheels.

- ``gan-face-generate``: PyTorch's DCGAN tutorial generator trained on DigiFace-1M, 64x64 faces.
- ``omniart-eye-generator``: a conditional DCGAN (8 eye-colour classes) at 128x128, painted eyes.
Neither package is imported (their import pulls in network code and, for the eye generator, a
CUDA-only ``torch.load``); the weights are read here with ``map_location='cpu'``.

Both sample in float64 (:data:`SAMPLING_DTYPE`). In float32 their wide transposed convolutions
came out different on two CPU models with the same pinned instruction set (AMD EPYC with and
without AVX-512: oneDNN blocks the sums by the caches, not only by the ISA), and two float32 code
paths on one machine (oneDNN, ATen) differ in ~36 of 4.9M pixel values by one grey level: a
summation-order difference flipping the rounding to uint8. In float64 such differences are ~1e-13
of a grey level, so no pixel lands on the other side of a rounding boundary (both paths: identical
bytes). Sampling only (no training), so the slower float64 costs seconds.
"""

from __future__ import annotations

import torch
from torch import nn

from synthdet.datasets.embedded.generators.dcgan import DCGANGenerator
from synthdet.fsutil import load_torch_file

SAMPLING_DTYPE = torch.float64


def load_gan_face(weights: str) -> DCGANGenerator:
    ckpt = load_torch_file(weights, "gan-face-generate weights")
    gen = DCGANGenerator(nz=100, ngf=64, nc=3, size=64)
    gen.load_state_dict(ckpt["netG_state_dict"])
    return gen.to(SAMPLING_DTYPE).eval()


class EyeGenerator(nn.Module):
    """The OmniArt conditional DCGAN layout (noise ++ one-hot colour -> 128x128)."""

    n_classes = 8
    nz = 100

    def __init__(self, ngf: int = 64) -> None:
        super().__init__()
        c = [ngf * 16, ngf * 8, ngf * 4, ngf * 2, ngf]
        layers: list[nn.Module] = [nn.ConvTranspose2d(self.nz + self.n_classes, c[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(c[0]), nn.ReLU(True), nn.Dropout(0.2)]
        for cin, cout in zip(c[:-1], c[1:], strict=True):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(c[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = z.to(self.main[0].weight.dtype)  # noise drawn in float32, computed in the model's dtype
        onehot = nn.functional.one_hot(labels, self.n_classes).to(z.dtype)
        return self.main(torch.cat([z.flatten(1), onehot], 1)[:, :, None, None])


def load_omniart_eyes(weights: str) -> EyeGenerator:
    gen = EyeGenerator()
    gen.load_state_dict(load_torch_file(weights, "omniart-eye-generator weights"))
    return gen.to(SAMPLING_DTYPE).eval()


@torch.no_grad()
def sample_eyes(gen: EyeGenerator, n: int, seed: int, size: int, batch_size: int = 128) -> torch.Tensor:
    """Class-balanced samples, area-downsampled from 128 px to the benchmark size."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        labels = torch.arange(i, i + m) % gen.n_classes
        x = gen(torch.randn(m, gen.nz, generator=g), labels)
        out.append(nn.functional.interpolate(x, size=(size, size), mode="area"))
    return torch.cat(out)
