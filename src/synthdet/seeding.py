"""Seeds: one keyed numpy generator for data decisions, one call that seeds a training process."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A numpy generator keyed by seed and names, independent of call order."""
    digest = hashlib.sha256(":".join([str(seed), *names]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False


def seed_worker(worker_id: int) -> None:
    """DataLoader workers: numpy and random follow the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
