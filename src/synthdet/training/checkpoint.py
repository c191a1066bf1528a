"""The one checkpoint format and the one loader of trained detectors.

Every checkpoint is a dict with ``format`` (:data:`FORMAT`), ``model`` (the weights) and the
run's ``fingerprint`` (configuration, data, starting weights and code). ``checkpoints/last.pt``
adds the optimiser, scaler, RNG states, epoch, history and failures: written after every epoch
and resumed from. ``best.pt`` holds the best epoch's weights. The run's ``detector.pt`` adds its
``config`` (the registered network's name, input size and arguments, and how it was trained),
the calibration (``temperature``) and, for a network that identifies generators, its
``model_classes``: :func:`load_detector` rebuilds the network from it, for every detector of the
registry and for ImagiNet's methods alike.
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

FORMAT = 1  # the checkpoint format's version; a file of another is refused, saying how to regenerate it


def save(obj: dict, path: Path) -> None:
    """torch.save of ``obj`` with the format's version, atomically: a crash never leaves half a checkpoint."""
    with atomic_output(path) as tmp:
        torch.save({"format": FORMAT, **obj}, tmp)


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


REGENERATE = ("regenerate it by running the stage that wrote it again (`dvc repro -f train`, `dvc repro -f "
              "'xgen@<run>'`, `dvc repro -f 'imaginet_train@<method>'`, ...)")


def load_detector(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The network of a run's ``detector.pt`` in eval mode, and its configuration with the
    calibration temperature and the model classes (empty for a detector without a model head)."""
    ckpt = load_torch_file(path, "detector")
    if isinstance(ckpt, dict) and {"method", "state_dict"} <= set(ckpt):
        raise CheckpointError(f"{path}: an ImagiNet method's network.pt, a format synthdet no longer reads (its "
                              f"runs now write detector.pt); {REGENERATE}: `dvc repro -f "
                              f"'imaginet_train@{ckpt['method']}'`")
    if (not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt) or not isinstance(ckpt["config"], dict)
            or not {"model", "input_size"} <= set(ckpt["config"])):
        raise CheckpointError(f"{path}: not a synthdet detector (expected the keys 'model' and 'config', with the "
                              "network's name and input size, that the train stage writes)")
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a detector of checkpoint format {ckpt.get('format', 0)}, written by an "
                              f"older synthdet (this one reads format {FORMAT}); {REGENERATE}")
    cfg = {**ckpt["config"], "temperature": float(ckpt.get("temperature", 1.0)),  # the calibration, with it
           "model_classes": list(ckpt.get("model_classes", []))}
    model = create_detector(cfg["model"], img_size=cfg["input_size"], **cfg.get("model_kwargs", {}))
    model.load_state_dict(ckpt["model"])
    return model.to(resolve_device(device)).eval(), cfg
