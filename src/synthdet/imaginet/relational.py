"""ImagiNet's 2-D map of backbone embeddings (Figure 2): a relational autoencoder.

Encoder and decoder are stacks of linear layers with ReLU, the width halving from the input's n
down to h = 2 and back (the paper's "Visualizations via Relational Dimensionality Reduction").
The loss is the paper's equation 3, per batch of b vectors R_in and their reconstructions R_out:

    (1 - alpha) / b^2 * sum_ij (R_in[i, j] - R_out[i, j])^2
    + alpha / b^2 * sum_ij (||R_out[i] - R_out[j]||^2 - ||R_in[i] - R_in[j]||^2)^2

(reconstruction, plus equation 2's pairwise squared distances kept). Alpha is chosen as the paper
says, over a grid in [0, 1], by the lowest absolute error and cosine distance; read here as: rank
every alpha by the mean absolute error between the input's and the reconstruction's pairwise
distances, and by the mean cosine distance between each input and its reconstruction; the lowest
sum of ranks wins (ties: the smaller alpha).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from synthdet.seeding import seed_everything


def widths(n: int, h: int = 2, smallest: int = 16) -> list[int]:
    """n, n/2, n/4, ... (down to ``smallest``), then h."""
    out = [n]
    while out[-1] // 2 >= smallest:
        out.append(out[-1] // 2)
    return [*out, h]


def _stack(sizes: list[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if k < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RelationalAutoencoder(nn.Module):
    def __init__(self, n: int, h: int = 2) -> None:
        super().__init__()
        sizes = widths(n, h)
        self.encoder = _stack(sizes, last_activation=False)
        self.decoder = _stack(sizes[::-1], last_activation=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(x)
        return code, self.decoder(code)


def relational_loss(r_in: torch.Tensor, r_out: torch.Tensor, alpha: float) -> torch.Tensor:
    """Equation 3 for one batch (``b`` rows)."""
    b = r_in.shape[0]
    reconstruction = ((r_in - r_out) ** 2).sum() / b**2
    relational = ((torch.cdist(r_out, r_out) ** 2 - torch.cdist(r_in, r_in) ** 2) ** 2).sum() / b**2
    return (1 - alpha) * reconstruction + alpha * relational


@dataclass(frozen=True)
class MapResult:
    coordinates: np.ndarray  # (N, 2)
    alpha: float
    search: list[dict]  # per alpha: distance_error, cosine_distance, final loss


def _fit(x: torch.Tensor, alpha: float, steps: int, batch: int, lr: float, seed: int) -> RelationalAutoencoder:
    seed_everything(seed)
    model = RelationalAutoencoder(x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=g)[:batch]
        _, out = model(x[idx])
        loss = relational_loss(x[idx], out, alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def _quality(model: RelationalAutoencoder, x: torch.Tensor) -> tuple[float, float]:
    _, out = model(x)
    distance_error = float((torch.cdist(out, out) - torch.cdist(x, x)).abs().mean())
    cosine = float((1 - nn.functional.cosine_similarity(x, out, dim=1)).mean())
    return distance_error, cosine


def embedding_map(features: np.ndarray, alphas: list[float], steps: int = 300, batch: int = 128, lr: float = 1e-3,
                  seed: int = 0) -> MapResult:
    """2-D coordinates of ``features`` (standardised per dimension) by the relational
    autoencoder, with alpha chosen from ``alphas`` (see the module docstring)."""
    if len(features) < 2:
        raise ValueError(f"a 2-D map needs at least 2 vectors, got {len(features)}")
    x = torch.as_tensor(features, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    x = x / np.sqrt(x.shape[1])  # pairwise distances of order 1 whatever the width
    fitted, search = {}, []
    for alpha in alphas:
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], not {alpha}")
        model = _fit(x, float(alpha), steps, min(batch, len(x)), lr, seed)
        error, cosine = _quality(model, x)
        fitted[alpha] = model
        search.append({"alpha": float(alpha), "distance_error": error, "cosine_distance": cosine})
    errors = np.argsort(np.argsort([s["distance_error"] for s in search]))
    cosines = np.argsort(np.argsort([s["cosine_distance"] for s in search]))
    best = min(range(len(search)), key=lambda k: (errors[k] + cosines[k], search[k]["alpha"]))
    for k, s in enumerate(search):
        s["rank_sum"] = int(errors[k] + cosines[k])
    with torch.no_grad():
        code, _ = fitted[alphas[best]](x)
    return MapResult(code.numpy(), float(alphas[best]), search)
