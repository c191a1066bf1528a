"""A training run's configuration and its fingerprint: what identifies a run, so that a checkpoint
from another configuration, other data, other starting weights or other code is never resumed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from synthdet.codegraph import DETECTORS, import_closure
from synthdet.fsutil import file_digest

LOOP_MODULE = "synthdet.training.loop"  # its import graph, with the run's detector's, is what a run executes
OPTIMIZERS = ("adamw", "sgd")
WEIGHTS_DTYPES = ("float16", "float32")  # what detector.pt may store its parameters as (checkpoint.stored_weights)


@dataclass
class TrainConfig:
    model: str = "resnet50"
    input_size: int = 64
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # adamw | sgd (with ``momentum``): the loop's optimiser (OPTIMIZERS)
    momentum: float = 0.9  # sgd only
    warmup_epochs: float = 0.5
    num_workers: int | str = "auto"  # DataLoader workers per process; "auto": runtime.resolve_workers
    amp: bool = True  # bf16 autocast on CUDA (fp16 with a scaler where bf16 is missing); ignored on CPU
    hflip: bool = True
    channels_last: bool = True  # NHWC: oneDNN's and cuDNN's fast layout for convolutions
    accumulate: int = 1  # micro-batches per batch: gradient accumulation when batch_size does not fit
    compile: bool | str = False  # torch.compile the training forward: True (inductor) or a backend name
    seed: int = 0
    model_kwargs: dict = field(default_factory=dict)
    pixel_cache: str | None = None  # a folder: decode each training image once (data/pixelcache.py)
    pretrained: bool | str = False  # the backbone's start: False, True (timm's weights), a local file
    weights: str | None = None  # a whole detector checkpoint to start from
    weights_dtype: str = "float16"  # detector.pt's parameters: float16 (half the disk) or float32 (checkpoint.py)
    resume_every_s: float = 60.0  # last.pt after an epoch once this much training is unsaved (0: every epoch)
    debias: dict | None = None  # data.debias: the debiased protocol's per-image step (transforms/debias.py)

    def __post_init__(self) -> None:
        """Every setting checked by type and range before any work starts (``train.epochs: five``,
        ``batch_size: 0`` or ``amp: "no"`` would otherwise fail, or be misread, mid-run)."""
        def bad(key: str, expected: str) -> ValueError:
            return ValueError(f"train.{key} {getattr(self, key)!r}: expected {expected}")

        def number(value: object) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool) and value == value

        for key, least in (("input_size", 8), ("epochs", 1), ("batch_size", 1), ("accumulate", 1), ("seed", 0)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise bad(key, f"a whole number of at least {least}")
        for key in ("lr", "weight_decay", "warmup_epochs", "resume_every_s"):
            if not number(getattr(self, key)) or getattr(self, key) < 0:
                raise bad(key, "a number, 0 or more")
        if not number(self.momentum) or not 0 <= self.momentum < 1:
            raise bad("momentum", "a number from 0 up to (not including) 1")
        for key in ("amp", "hflip", "channels_last"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "true or false")
        if self.num_workers != "auto" and (not isinstance(self.num_workers, int) or isinstance(self.num_workers, bool)
                                           or self.num_workers < 0):
            raise bad("num_workers", "auto or a whole number, 0 or more")
        if not isinstance(self.model, str) or not self.model or not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model {self.model!r} / model_kwargs {self.model_kwargs!r}: expected a detector name "
                             "and a mapping")
        if not isinstance(self.pretrained, bool | str) or not isinstance(self.weights, str | None):
            raise ValueError(f"train.pretrained {self.pretrained!r} / train.weights {self.weights!r}: "
                             "true/false or a file, and a file or null")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer {self.optimizer!r}: expected one of {list(OPTIMIZERS)}")
        if self.weights_dtype not in WEIGHTS_DTYPES:
            raise ValueError(f"train.weights_dtype {self.weights_dtype!r}: expected one of {list(WEIGHTS_DTYPES)}")

    def fingerprint(self, data_key: str, start: bool | str | None = None, objective: dict | None = None,
                    objective_module: str | None = None) -> str:
        """Identifies a run: a checkpoint from another configuration, other data, other starting
        weights or other model and training code is never resumed. ``start``: the file a named
        weights source resolved to (``pretrained_start``), so its content counts, not only its name.
        ``objective``: a loop objective's name and configuration, whose code (``objective_module``)
        counts with the loop's; none for the loop's own binary cross-entropy."""
        same_results = ("num_workers", "pixel_cache", "resume_every_s")  # how it runs, not what it computes
        keep = {k: v for k, v in asdict(self).items() if k not in same_results}
        pretrained = self.pretrained if start is None else start
        config = keep if objective is None else {**keep, "objective": objective}
        return run_fingerprint(config, data_key, training_code(self.model, objective_module),
                               [pretrained, self.weights])


def run_fingerprint(config: dict, data_key: str, code: str, starts: Sequence[object] = ()) -> str:
    """A run's identity: its ``config`` (only what changes results), its data, the hash of the
    code it executes (:func:`training_code`) and the content of its starting weight files (entries
    of ``starts`` that are files)."""
    digests = [file_digest(p) for p in starts if isinstance(p, str) and Path(p).is_file()]
    return hashlib.sha256(json.dumps([config, data_key, code, digests], sort_keys=True).encode()
                          ).hexdigest()[:16]


def training_code(model: str, objective_module: str | None = None) -> str:
    """sha256 of the source a run of ``model`` executes: the import graphs of the training loop,
    of the objective's module (ImagiNet's methods) and of the module that builds ``model``, with
    the detector registry's package counted as its own file only. Another detector's file is not
    in it: an edit to F3Net's code leaves the ResNet-50 runs' fingerprints, and their finished
    weights, as they are."""
    from synthdet.detectors.registry import builder_module

    files: set[Path] = set()
    for module in (LOOP_MODULE, objective_module, builder_module(model)):
        if module:
            files |= set(import_closure(module, opaque=(DETECTORS,)))
    return hashlib.sha256(b"".join(f.read_bytes() for f in sorted(files))).hexdigest()


def checked_train_settings(settings: dict) -> dict:
    """params.yaml's ``train`` section, refused when a key is unknown or a value of the wrong type
    or range (:class:`TrainConfig` checks them): what a stage config calls, so that a bad value
    stops the stage before it reads any image."""
    known = set(TrainConfig.__dataclass_fields__) - {"model", "seed", "model_kwargs", "debias"}  # the stage's
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"train: unknown key {unknown[0]!r} (known: {sorted(known)})")
    TrainConfig(**settings)
    return dict(settings)


def data_key(train_rows: pd.DataFrame, val_rows: pd.DataFrame) -> str:
    """What the run learns from: every train and val image's path, content (sha256) and label.
    Paths alone are not enough: a rebuilt benchmark reuses file names for new images."""
    parts = []
    for name, rows in (("train", train_rows), ("val", val_rows)):
        digest = rows["sha256"] if "sha256" in rows else pd.Series("", index=rows.index)
        parts += sorted(f"{name}\t{p}\t{d}\t{y}" for p, d, y in zip(rows["path"], digest, rows["label"], strict=True))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
