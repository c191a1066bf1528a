"""Diffusion family: DDPM training on VAE latents, DDIM sampling (Ho et al. 2020; Song et al.
2021; Rombach et al. 2022). GenImage's SD, ADM, GLIDE and Wukong are all diffusion models; a pixel
DDPM needs hours on a CPU, an 8x8 latent one minutes.

Conditioning follows GenImage, whose fakes are prompted with an ImageNet class: a class and a
content embedding are added to the timestep embedding, trained with label dropout so that
sampling can use classifier-free guidance (Ho and Salimans 2022).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from synthdet.datasets.embedded.generators.common import EpochResume, minibatches
from synthdet.datasets.embedded.generators.vae import ConvVAE


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class _ResBlock(nn.Module):
    def __init__(self, ch: int, emb: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, 1, 1)
        self.emb = nn.Linear(emb, ch)
        self.norm2, self.conv2 = nn.GroupNorm(8, ch), nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(e)[:, :, None, None]
        return x + self.conv2(F.silu(self.norm2(h)))


class LatentUNet(nn.Module):
    """A two-level UNet for 8x8 latents: predicts the noise epsilon.

    With ``n_classes``/``n_contents`` it is conditional; index ``n_classes`` (``n_contents``) is
    the "no label" token used for label dropout and the unconditional half of guidance.
    """

    def __init__(self, in_ch: int = 4, ch: int = 64, emb: int = 128, n_classes: int = 0, n_contents: int = 0) -> None:
        super().__init__()
        self.emb = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.emb_dim = emb
        self.n_classes, self.n_contents = n_classes, n_contents
        if n_classes:
            self.class_emb = nn.Embedding(n_classes + 1, emb)
            self.content_emb = nn.Embedding(n_contents + 1, emb)
        self.inp = nn.Conv2d(in_ch, ch, 3, 1, 1)
        self.down1, self.down2 = _ResBlock(ch, emb), _ResBlock(2 * ch, emb)
        self.pool = nn.Conv2d(ch, 2 * ch, 4, 2, 1)
        self.mid = _ResBlock(2 * ch, emb)
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * ch, ch, 3, 1, 1))
        self.up1 = _ResBlock(ch, emb)
        self.out = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, in_ch, 3, 1, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``labels``: (N, 2) long tensor of (class, content) indices, for a conditional UNet."""
        e = _timestep_embedding(t, self.emb_dim)
        if self.n_classes:
            if labels is None:
                labels = self.null_labels(len(x))
            e = e + self.class_emb(labels[:, 0]) + self.content_emb(labels[:, 1])
        e = self.emb(e)
        h1 = self.down1(self.inp(x), e)
        h2 = self.mid(self.down2(self.pool(h1), e), e)
        return self.out(self.up1(self.up(h2) + h1, e))

    def null_labels(self, n: int) -> torch.Tensor:
        return torch.tensor([[self.n_classes, self.n_contents]]).repeat(n, 1)


def _alphas_cumprod(steps: int) -> torch.Tensor:
    """Cosine schedule (Nichol and Dhariwal 2021)."""
    s = 0.008
    t = torch.linspace(0, steps, steps + 1) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (f[1:] / f[0]).clamp(1e-5, 0.9999)


@torch.no_grad()
def encode_latents(vae: ConvVAE, reals: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([vae.encode(reals[i : i + batch_size])[0] for i in range(0, len(reals), batch_size)])


def train_ldm(unet: LatentUNet, latents: torch.Tensor, epochs: int, batch_size: int, seed: int,
              steps: int = 1000, lr: float = 2e-4, labels: torch.Tensor | None = None,
              p_uncond: float = 0.1, resume: Path | None = None) -> tuple[LatentUNet, float]:
    """Returns the trained UNet and the latent scale factor (latents are scaled to unit std).

    ``labels`` (N, 2) trains a conditional UNet; each label is dropped with ``p_uncond``.
    ``resume``: the file of its per-epoch resume state (:class:`EpochResume`).
    """
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    scale = float(1.0 / latents.std())
    latents = latents * scale
    abar = _alphas_cumprod(steps)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    unet.train()
    state = EpochResume(resume, {"model": unet, "optimizer": opt}, rng)
    first = state.start(epochs)
    for epoch in tqdm(range(first, epochs), desc="train ldm", initial=first, total=epochs):
        for idx in minibatches(len(latents), batch_size, rng):
            x0 = latents[idx]
            t = torch.randint(0, steps, (len(x0),))
            noise = torch.randn_like(x0)
            a = abar[t][:, None, None, None]
            y = None
            if labels is not None:
                drop = torch.rand(len(x0), generator=rng) < p_uncond
                y = torch.where(drop[:, None], unet.null_labels(len(x0)), labels[idx])
            loss = F.mse_loss(unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y), noise)
            opt.zero_grad()
            loss.backward()
            opt.step()
        state.end_of_epoch(epoch + 1, epochs)
    return unet.eval(), scale


@torch.no_grad()
def sample_ldm(unet: LatentUNet, vae: ConvVAE, scale: float, n: int, seed: int, latent_hw: int,
               ddim_steps: int = 50, steps: int = 1000, batch_size: int = 256,
               labels: torch.Tensor | None = None, guidance: float = 1.0) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from seeded noise, then the VAE decoder.

    ``labels`` (n, 2) samples each image for its (class, content); ``guidance`` > 1 mixes in the
    unconditional prediction: eps = eps_u + guidance * (eps_c - eps_u).
    """
    g = torch.Generator().manual_seed(seed)
    abar = _alphas_cumprod(steps)
    ts = torch.linspace(steps - 1, 0, ddim_steps).round().long()
    out = []
    for i in range(0, n, batch_size):
        x = torch.randn(min(batch_size, n - i), vae.latent_channels, latent_hw, latent_hw, generator=g)
        y = None if labels is None else labels[i : i + len(x)]
        for k, t in enumerate(ts):
            a = abar[t]
            a_prev = abar[ts[k + 1]] if k + 1 < len(ts) else torch.tensor(1.0)
            eps = unet(x, t.repeat(len(x)), y)
            if y is not None and guidance != 1.0:
                eps = eps + (guidance - 1.0) * (eps - unet(x, t.repeat(len(x)), unet.null_labels(len(x))))
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-4, 4)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        out.append(vae.decode(x / scale))
    return torch.cat(out)
