"""GAN family: DCGAN (Radford et al. 2016), transposed-convolution upsampling.

The same generator layout loads the pretrained ``gan-face-generate`` weights (PyTorch's DCGAN
tutorial architecture), so trained and pretrained DCGANs share one definition.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from synthdet.datasets.embedded.generators.common import EpochResume, init_dcgan_weights, minibatches


class DCGANGenerator(nn.Module):
    """z (nz x 1 x 1) -> image (nc x size x size), doubling resolution with transposed convs."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, size: int = 64) -> None:
        super().__init__()
        n_up = int(math.log2(size)) - 3  # 4x4 after the first layer, then doublings
        mult = 2 ** n_up
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, ngf * mult, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * mult), nn.ReLU(True)
        ]
        for _ in range(n_up):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ngf * mult // 2), nn.ReLU(True)]
            mult //= 2
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.nz = nz

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class DCGANDiscriminator(nn.Module):
    def __init__(self, ndf: int = 32, nc: int = 3, size: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        ch, res = ndf, size // 2
        while res > 4:
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch, res = ch * 2, res // 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()


def train_gan(
    generator: nn.Module, reals: torch.Tensor, epochs: int, batch_size: int, seed: int,
    lr: float = 2e-4, ndf: int = 32, desc: str = "gan", resume: Path | None = None,
) -> nn.Module:
    """Non-saturating GAN training with Adam(0.5, 0.999), the DCGAN recipe. ``resume``: the file of
    its per-epoch resume state (:class:`EpochResume`)."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    disc = DCGANDiscriminator(ndf=ndf, size=reals.shape[-1])
    init_dcgan_weights(generator)
    init_dcgan_weights(disc)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    generator.train()
    state = EpochResume(resume, {"generator": generator, "discriminator": disc, "optimizer_g": opt_g,
                                 "optimizer_d": opt_d}, rng)
    first = state.start(epochs)
    for epoch in tqdm(range(first, epochs), desc=f"train {desc}", initial=first, total=epochs):
        for idx in minibatches(len(reals), batch_size, rng):
            real = reals[idx]
            z = torch.randn(len(real), generator.nz, 1, 1)
            fake = generator(z)
            loss_d = bce(disc(real), torch.ones(len(real))) + bce(disc(fake.detach()), torch.zeros(len(real)))
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            loss_g = bce(disc(fake), torch.ones(len(real)))
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
        state.end_of_epoch(epoch + 1, epochs)
    return generator.eval()


@torch.no_grad()
def sample_gan(generator: nn.Module, n: int, seed: int, batch_size: int = 256,
               batch_stats: bool = False) -> torch.Tensor:
    """Seeded samples. ``batch_stats`` normalises with each batch's statistics, as the DCGAN
    recipe samples; a briefly trained GAN's running averages are too far off to use."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(generator.parameters()).dtype  # the noise is drawn in float32 whatever the model's dtype
    generator.train(batch_stats)
    out = [generator(torch.randn(min(batch_size, n - i), generator.nz, 1, 1, generator=g).to(dtype))
           for i in range(0, n, batch_size)]
    generator.eval()
    return torch.cat(out)
