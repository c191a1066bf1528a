"""VAE family (Kingma and Welling 2014): a convolutional VAE with a spatial latent.

Samples decode prior draws; the same encoder/decoder is the first stage of the latent-diffusion
generator, as in Rombach et al.'s LDM.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from synthdet.datasets.embedded.generators.common import EpochResume, minibatches


def _down(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.GroupNorm(8, cout), nn.SiLU())


def _up(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1),
                         nn.GroupNorm(8, cout), nn.SiLU())


def conv_encoder(ch: int, n_down: int, out_channels: int) -> tuple[nn.Sequential, int]:
    """3 -> ch, then ``n_down`` stride-2 stages doubling the width, then a projection."""
    layers, c = [nn.Conv2d(3, ch, 3, 1, 1), nn.SiLU()], ch
    for _ in range(n_down):
        layers.append(_down(c, c * 2))
        c *= 2
    layers.append(nn.Conv2d(c, out_channels, 3, 1, 1))
    return nn.Sequential(*layers), c


def conv_decoder(in_channels: int, c: int, n_down: int) -> nn.Sequential:
    """The mirror of :func:`conv_encoder`, ending in tanh."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, 1, 1), nn.SiLU()]
    for _ in range(n_down):
        layers.append(_up(c, c // 2))
        c //= 2
    layers += [nn.Conv2d(c, 3, 3, 1, 1), nn.Tanh()]
    return nn.Sequential(*layers)


class ConvVAE(nn.Module):
    """64x64x3 <-> (latent_channels x 8 x 8)."""

    def __init__(self, ch: int = 32, latent_channels: int = 4, n_down: int = 3) -> None:
        super().__init__()
        self.encoder, width = conv_encoder(ch, n_down, 2 * latent_channels)
        self.decoder = conv_decoder(latent_channels, width, n_down)
        self.latent_channels = latent_channels
        self.n_down = n_down

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-20, 10)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = self.encode(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        return self.decode(z), mean, logvar


def train_vae(vae: ConvVAE, reals: torch.Tensor, epochs: int, batch_size: int, seed: int,
              lr: float = 1e-3, beta: float = 0.02, resume: Path | None = None) -> ConvVAE:
    """``resume``: the file of its per-epoch resume state (:class:`EpochResume`)."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    vae.train()
    state = EpochResume(resume, {"model": vae, "optimizer": opt}, rng)
    first = state.start(epochs)
    for epoch in tqdm(range(first, epochs), desc="train vae", initial=first, total=epochs):
        for idx in minibatches(len(reals), batch_size, rng):
            x = reals[idx]
            recon, mean, logvar = vae(x)
            kl = -0.5 * torch.mean(1 + logvar - mean.pow(2) - logvar.exp())
            loss = F.mse_loss(recon, x) + beta * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
        state.end_of_epoch(epoch + 1, epochs)
    return vae.eval()


@torch.no_grad()
def sample_vae(vae: ConvVAE, n: int, seed: int, latent_hw: int, batch_size: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (vae.latent_channels, latent_hw, latent_hw)
    return torch.cat([vae.decode(torch.randn(min(batch_size, n - i), *shape, generator=g))
                      for i in range(0, n, batch_size)])
