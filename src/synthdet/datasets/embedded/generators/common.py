"""Shared helpers for generator training: tensors <-> uint8 images, batching, resume state."""

from __future__ import annotations

import copy
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from synthdet.fsutil import atomic_write_bytes, load_torch_file


def images_to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HWC images -> float tensor NCHW in [-1, 1]."""
    arr = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC, rounded the same way for every generator."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)] or [perm]


def init_dcgan_weights(module: nn.Module) -> None:
    """Radford et al.'s initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


RESUME_EVERY_S = 30.0  # at most this much of a generator's training is redone after a kill


class EpochResume:
    """Per-epoch resume state of one generator's training, so that a download stage killed in the
    middle of a generator loses at most ``every_s`` seconds of it instead of the whole group.

    Saved (to ``path``, atomically, once ``every_s`` seconds of training are unsaved and after the
    last epoch): every module's and optimiser's state, torch's global generator and the loop's own,
    and the epochs done. Restored, the same arithmetic follows, so the trained weights are bit for
    bit those of an uninterrupted run (tested). ``path`` None: nothing is saved or read. A state
    file that cannot be used (corrupt, another model's shapes, an impossible epoch) is reported,
    deleted and training starts from the first epoch, with the initial weights and generators as
    they were before it was read. Not the detectors' checkpoint format (``training/checkpoint.py``):
    that floor sits above the datasets, and a generator needs no fingerprint or calibration, only
    its own loop's state."""

    def __init__(self, path: Path | None, parts: dict[str, Any], rng: torch.Generator,
                 every_s: float | None = None) -> None:
        self.path, self.parts, self.rng = path, parts, rng
        self.every_s = RESUME_EVERY_S if every_s is None else every_s
        self._last = time.monotonic()

    def _state(self, epoch: int) -> dict:
        return {"epoch": epoch, "parts": {name: part.state_dict() for name, part in self.parts.items()},
                "torch_rng": torch.get_rng_state(), "loop_rng": self.rng.get_state()}

    def _load(self, state: dict, epochs: int) -> int:
        epoch = state["epoch"]
        if not isinstance(epoch, int) or not 0 <= epoch <= epochs:
            raise ValueError(f"epoch {epoch!r} is not one of 0..{epochs}")
        if set(state["parts"]) != set(self.parts):
            raise ValueError(f"parts {sorted(state['parts'])}, expected {sorted(self.parts)}")
        for name, part in self.parts.items():
            part.load_state_dict(state["parts"][name])
        torch.set_rng_state(state["torch_rng"])
        self.rng.set_state(state["loop_rng"])
        return epoch

    def start(self, epochs: int) -> int:
        """The first epoch to train: 0, or the epochs a saved state had done (that state loaded)."""
        self._last = time.monotonic()
        if self.path is None or not self.path.is_file():
            return 0
        before = copy.deepcopy(self._state(0))
        try:
            epoch = self._load(load_torch_file(self.path, "generator resume state"), epochs)
            print(f"{self.path}: resuming after epoch {epoch} of {epochs}", file=sys.stderr)
            return epoch
        except Exception as e:  # noqa: BLE001 - any unusable state: report it and start over
            self._load(before, epochs)
            print(f"{self.path}: resume state not usable ({type(e).__name__}: {e}); deleted, training from "
                  "the first epoch", file=sys.stderr)
            self.path.unlink(missing_ok=True)
            return 0

    def end_of_epoch(self, done: int, epochs: int) -> None:
        """Save after ``done`` epochs if ``every_s`` seconds of training are unsaved, or it was the last."""
        if self.path is None or (done < epochs and time.monotonic() - self._last < self.every_s):
            return
        buf = io.BytesIO()
        torch.save(self._state(done), buf)
        atomic_write_bytes(self.path, buf.getvalue())
        self._last = time.monotonic()
