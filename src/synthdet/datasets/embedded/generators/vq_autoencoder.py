"""Autoregressive/VQ family: images passed through a VQ-VAE's discrete bottleneck (van den Oord
et al. 2017). GenImage's VQDM decodes VQ tokens the same way; here the tokens come from real
images, so content matches the real side and only the codec's fingerprint differs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from synthdet.datasets.embedded.generators.common import EpochResume, minibatches
from synthdet.datasets.embedded.generators.vae import conv_decoder, conv_encoder


class VQAutoencoder(nn.Module):
    def __init__(self, ch: int = 32, codebook_size: int = 256, code_dim: int = 32, n_down: int = 2) -> None:
        super().__init__()
        self.encoder, width = conv_encoder(ch, n_down, code_dim)
        self.codebook = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.decoder = conv_decoder(code_dim, width, n_down)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        idx = torch.cdist(flat, self.codebook.weight).argmin(dim=1)
        q = self.codebook(idx).view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        return q, idx

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        q, _ = self.quantize(z)
        commit = F.mse_loss(z, q.detach()) * 0.25 + F.mse_loss(q, z.detach())
        q = z + (q - z).detach()  # straight-through estimator
        return self.decoder(q), commit


def train_vq(model: VQAutoencoder, reals: torch.Tensor, epochs: int, batch_size: int, seed: int,
             lr: float = 1e-3, resume: Path | None = None) -> VQAutoencoder:
    """``resume``: the file of its per-epoch resume state (:class:`EpochResume`)."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    state = EpochResume(resume, {"model": model, "optimizer": opt}, rng)
    first = state.start(epochs)
    for epoch in tqdm(range(first, epochs), desc="train vq", initial=first, total=epochs):
        for idx in minibatches(len(reals), batch_size, rng):
            recon, commit = model(reals[idx])
            loss = F.mse_loss(recon, reals[idx]) + commit
            opt.zero_grad()
            loss.backward()
            opt.step()
        state.end_of_epoch(epoch + 1, epochs)
    return model.eval()


@torch.no_grad()
def reconstruct(model: VQAutoencoder, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model(images[i : i + batch_size])[0] for i in range(0, len(images), batch_size)])
