"""The run checkpoint format and the one loader of trained detectors.

``checkpoints/last.pt`` (weights, optimiser, scaler, RNG states, epoch, history, fingerprint) is
written after every epoch and resumed from; ``best.pt`` holds the best epoch's weights; the run's
``detector.pt`` holds the chosen weights with the configuration and calibration that
:func:`load_detector` rebuilds the network from.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from synthdet.detectors import create_detector
from synthdet.fsutil import CheckpointError, atomic_output, load_torch_file
from synthdet.training.runtime import resolve_device


def save(obj: dict, path: Path) -> None:
    """torch.save, atomically: a crash never leaves half a checkpoint."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def read_resume_checkpoint(path: Path) -> dict:
    """``last.pt``, or a :class:`CheckpointError` that says how to start the run afresh."""
    try:
        return load_torch_file(path, "resume checkpoint")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}. Delete it to train this run from the start.") from exc


def adopt_finished_run(candidates: Sequence[Path], checkpoint_dir: Path, fingerprint: str, epochs: int) -> Path | None:
    """The first of ``candidates`` (checkpoint folders of other runs) holding a finished run with
    ``fingerprint`` (the same configuration, data, starting weights and code): its ``last.pt`` and
    ``best.pt`` are copied into ``checkpoint_dir``, which then resumes at the end. Such a run gives
    the same weights (training is seeded and deterministic on the CPU), so reusing it changes no
    number; a missing, foreign, unreadable or unfinished candidate is passed over."""
    for folder in map(Path, candidates):
        last, best = folder / "last.pt", folder / "best.pt"
        if not (last.is_file() and best.is_file()) or folder.resolve() == checkpoint_dir.resolve():
            continue
        try:
            ckpt = load_torch_file(last, "finished run")
        except CheckpointError:
            continue
        if not isinstance(ckpt, dict) or ckpt.get("fingerprint") != fingerprint or ckpt.get("epoch") != epochs:
            continue
        for source in (best, last):  # last.pt last: a copy cut short leaves nothing to resume from
            with atomic_output(checkpoint_dir / source.name) as tmp:
                shutil.copyfile(source, tmp)
        return folder
    return None


def load_detector(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The network of a run's ``detector.pt`` in eval mode, and its configuration with the
    calibration temperature."""
    ckpt = load_torch_file(path, "detector")
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a synthdet detector (expected the keys 'model' and 'config' that "
                              "the train stage writes)")
    cfg = {**ckpt["config"], "temperature": float(ckpt.get("temperature", 1.0))}  # the calibration, with it
    model = create_detector(cfg["model"], img_size=cfg["input_size"], **cfg.get("model_kwargs", {}))
    model.load_state_dict(ckpt["model"])
    return model.to(resolve_device(device)).eval(), cfg
