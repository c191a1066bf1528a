"""The one checkpoint format and the one loader of trained detectors.

Every checkpoint is a dict with ``format`` (:data:`FORMAT`), ``model`` (the weights) and the
run's ``fingerprint`` (configuration, data, starting weights and code). While a run is
unfinished its checkpoint folder holds ``last.pt`` (adds the optimiser, scaler, RNG states,
epoch, history and failures: written after an epoch once ``train.resume_every_s`` of training
is unsaved, and resumed from) and ``best.pt`` (the best epoch's weights, when they are not
``last.pt``'s own). A finished run keeps its weights once, in the run's ``detector.pt``: it
adds the ``config`` (the registered network's name, input size and arguments, and how it was
trained), the calibration (``temperature``), the run's ``result`` (history, failures, best epoch)
and, for a network that identifies generators, its ``model_classes``. The resume state is then
deleted (:func:`release_resume_state`; the fingerprint reproduces it), and the checkpoint folder
keeps a hard link to ``detector.pt`` (:func:`keep_finished`: the same file, no second copy), from
which a rerun of the same run takes its weights instead of training.
:func:`load_detector` rebuilds the network from ``detector.pt``, for every detector of the
registry and for ImagiNet's methods alike.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from synthdet.detectors import create_detector
from synthdet.fsutil import CheckpointError, atomic_output, hard_link_or_copy, load_torch_file
from synthdet.training.runtime import resolve_device

FORMAT = 1  # the checkpoint format's version; a file of another is refused, saying how to regenerate it
RESUME_STATE = ("last.pt", "best.pt")  # an unfinished run's files, deleted when it finishes


def save(obj: dict, path: Path) -> None:
    """torch.save of ``obj`` with the format's version, atomically: a crash never leaves half a
    checkpoint. Serialised in memory first: torch names the archive's folder after the file it
    writes, so saving to the temporary file directly would give every save other bytes (and DVC
    another hash) for the same weights."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **obj}, buffer)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def stored_weights(model: nn.Module, dtype: str) -> dict:
    """``model``'s state as ``detector.pt`` stores it: its float32 parameters as ``dtype``, and the
    model rounded in place to exactly those values, so that what is calibrated and scored after
    training is what every later load gives. Buffers (BatchNorm's statistics) stay float32, and so
    does a parameter that ``dtype`` cannot hold (a value beyond float16's range)."""
    target = getattr(torch, dtype)  # one of config.WEIGHTS_DTYPES: TrainConfig refuses any other
    state = model.state_dict()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dtype != torch.float32 or target == torch.float32:
                continue
            stored = param.detach().to(target)
            if bool(torch.isfinite(stored).all()) or not bool(torch.isfinite(param).all()):
                param.copy_(stored)
                state[name] = stored
    return state


def cpu_copy(state: dict) -> dict:
    """A copy of a state dict in host memory, which later steps do not change."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


class ResumeState:
    """An unfinished run's resume files in ``folder`` and when they are written. ``last.pt`` after
    an epoch once ``every_s`` seconds of training are unsaved, never after the last epoch (the run's
    ``detector.pt`` follows at once): each write holds the weights and the optimiser's state (three
    times a ResNet-50's 94 MB with AdamW, seconds of disk), which after every epoch cost an embedded
    table run 12% of its time. The best epoch's weights are kept in memory and written (``best.pt``)
    with a ``last.pt`` only when they are not that ``last.pt``'s own."""

    def __init__(self, folder: Path, fingerprint: str, every_s: float) -> None:
        self.last, self.best = Path(folder) / "last.pt", Path(folder) / "best.pt"
        self.fingerprint, self.every_s = fingerprint, every_s
        self.best_weights: dict | None = None  # while they are not on disk
        self.saved_at = time.monotonic()

    def resumed(self, model: nn.Module, best: dict, epoch: int) -> None:
        """After :func:`restore` at ``epoch``: a best epoch that is that one is the restored model."""
        if best["epoch"] == epoch:
            self.best_weights = cpu_copy(model.state_dict())

    def new_best(self, model: nn.Module) -> None:
        self.best_weights = cpu_copy(model.state_dict())

    def after_epoch(self, epoch: int, epochs: int, best: dict, state: Callable[[], dict]) -> None:
        """``epoch`` (1-based) is done; ``state()`` gives what ``last.pt`` holds besides the epoch,
        the fingerprint and ``best``."""
        if epoch >= epochs or time.monotonic() - self.saved_at < self.every_s:
            return
        if best["epoch"] == epoch:  # the best weights are last.pt's own: a best.pt would be stale
            self.best.unlink(missing_ok=True)
        elif self.best_weights is not None:
            save({"model": self.best_weights, "fingerprint": self.fingerprint, **best}, self.best)
            self.best_weights = None  # on disk now
        save({**state(), "epoch": epoch, "fingerprint": self.fingerprint, "best": best}, self.last)
        self.saved_at = time.monotonic()

    def load_best(self, model: nn.Module) -> None:
        """The best epoch's weights into ``model`` (from memory or ``best.pt``; none: it is the model)."""
        if self.best_weights is not None:
            model.load_state_dict(self.best_weights)
        elif self.best.exists():
            model.load_state_dict(load_torch_file(self.best, "best checkpoint")["model"])


RESUME_KEYS = ("model", "optimizer", "scaler", "torch_rng", "loader_rng", "epoch", "history", "fingerprint", "best",
               "failures")
AFRESH = "Delete it to train this run from the start."


def read_resume_checkpoint(path: Path) -> dict:
    """``last.pt`` with every key a resume reads, or a :class:`CheckpointError` that says how to
    start the run afresh."""
    try:
        ckpt = load_torch_file(path, "resume checkpoint")
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}. {AFRESH}") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: a {type(ckpt).__name__}, not a resume checkpoint. {AFRESH}")
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a resume checkpoint (no {', '.join(missing)}). {AFRESH}")
    return ckpt


def restore(ckpt: dict, path: Path, epochs: int, model: nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, generator: torch.Generator, rank: int) -> None:
    """Put a run back where ``last.pt`` (of this very run: same fingerprint) left it: weights,
    optimiser, scaler and random states; a file that does not fit (edited, or damaged in a way the
    fingerprint does not see) is a :class:`CheckpointError` naming it, not a crash mid-way."""
    epoch = ckpt["epoch"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= epochs:
        raise CheckpointError(f"{path}: epoch {epoch!r} is not one of this run's 0-{epochs}. {AFRESH}")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["torch_rng"][rank % len(ckpt["torch_rng"])])  # each rank its own
        generator.set_state(ckpt["loader_rng"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError, ZeroDivisionError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: does not fit this run's network or optimiser ({reason}). {AFRESH}") from exc


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes the same file as ``source``: a hard link (no second copy on disk) where
    the file system allows one, else a copy; atomically, replacing what was there."""
    with atomic_output(target) as tmp:
        tmp.unlink()
        hard_link_or_copy(source, tmp)


def finished_run(detector: Path, fingerprint: str) -> dict | None:
    """The finished run saved in ``detector`` (a run's ``detector.pt``) when it has
    ``fingerprint``; None when there is none, it is of another run or an older synthdet, or it
    cannot be read (the run is then trained, and the file replaced)."""
    if not Path(detector).is_file():
        return None
    try:
        ckpt = load_torch_file(detector, "finished run")
    except CheckpointError:
        return None
    if not isinstance(ckpt, dict) or ckpt.get("fingerprint") != fingerprint or "result" not in ckpt:
        return None
    return ckpt


def reuse_finished(detector: Path, checkpoint_dir: Path, candidates: Sequence[Path], fingerprint: str,
                   main: bool = True) -> dict | None:
    """This very run, finished (the same ``fingerprint``: configuration, data, starting weights and
    code): its ``detector``, else its checkpoint folder's link to it (the output was deleted, as DVC
    does before a rerun), else one of ``candidates`` (other runs' ``detector.pt``); the one found
    is linked to ``detector`` (by the ``main`` process). Such a run gives the same weights
    (training is seeded and deterministic on the CPU), so reusing it changes no number. None: the
    run trains. A missing, foreign, unreadable or other run's file is passed over."""
    sources = [Path(detector), Path(checkpoint_dir) / "detector.pt",
               *(c for c in map(Path, candidates) if c.resolve() != Path(detector).resolve())]
    for source in sources:
        if (done := finished_run(source, fingerprint)) is None:
            continue
        if main:
            print(f"{source}: this run (configuration, data and code) has finished: its weights are reused")
            if source != Path(detector):
                link_or_copy(source, detector)
        return done
    return None


def keep_finished(detector: Path, checkpoint_dir: Path) -> bool:
    """Hard-link a finished run's ``detector`` into its (persisted) checkpoint folder, so that a
    rerun finds it after DVC has deleted the output folder (a forced rerun, an edited dependency,
    a crash while scoring) and trains nothing. A link only, never a copy: where the file system
    cannot link, nothing is kept (no second copy on disk) and False is returned."""
    kept = Path(checkpoint_dir) / "detector.pt"
    if kept.exists() and kept.samefile(detector):
        return True
    with contextlib.suppress(FileNotFoundError):
        kept.unlink()  # another run's (another fingerprint): replaced by this one
    try:
        with atomic_output(kept) as tmp:
            tmp.unlink()
            os.link(detector, tmp)
    except OSError:
        return False
    return True


def release_resume_state(checkpoint_dir: Path) -> None:
    """Delete a finished run's ``last.pt`` and ``best.pt``: its weights are in its ``detector.pt``
    (linked into the checkpoint folder by :func:`keep_finished`)."""
    for name in RESUME_STATE:
        with contextlib.suppress(FileNotFoundError):
            (Path(checkpoint_dir) / name).unlink()


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
    cfg = {**ckpt["config"], "temperature": ckpt.get("temperature", 1.0),  # the calibration, with it
           "model_classes": ckpt.get("model_classes", [])}
    problem = _config_problem(cfg, ckpt["model"])
    if problem:
        raise CheckpointError(f"{path}: {problem}; {REGENERATE}")
    cfg["temperature"], cfg["model_classes"] = float(cfg["temperature"]), list(cfg["model_classes"])
    try:
        model = create_detector(cfg["model"], img_size=cfg["input_size"], **cfg.get("model_kwargs", {}))
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: its network {cfg['model']!r} cannot be built here ({exc}); "
                              f"{REGENERATE}") from exc
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"{path}: its weights do not fit {cfg['model']} ({reason}); {REGENERATE}") from exc
    return model.to(resolve_device(device)).eval(), cfg


def _config_problem(cfg: dict, weights: object) -> str:
    """What makes a detector's configuration or weights unusable, or '' (a temperature of 0 would
    call every image fake; a negative input size, a crash deep in the transform)."""
    size, temperature = cfg["input_size"], cfg["temperature"]
    if not isinstance(cfg["model"], str) or not cfg["model"]:
        return f"the network's name {cfg['model']!r} is not a name"
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 8192:
        return f"input size {size!r} is not a whole number of 8-8192 pixels"
    if not isinstance(temperature, int | float) or isinstance(temperature, bool) or not 0 < temperature < float("inf"):
        return f"calibration temperature {temperature!r} is not a positive number"
    if not isinstance(cfg.get("model_kwargs", {}), dict) or not isinstance(cfg["model_classes"], list | tuple):
        return "model_kwargs or model_classes of the wrong type"
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return "its weights are not a non-empty mapping of tensors"
    return ""
