"""Training and scoring detectors: seeded, resumable, the best epoch kept, bf16 and DDP on GPUs.

One process (the DVC stage) or ``torchrun --nproc_per_node=N -m synthdet.cli stage train``:
``WORLD_SIZE`` in the environment switches on DistributedDataParallel and a DistributedSampler.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from synthdet.codegraph import import_closure
from synthdet.data.dataset import ManifestDataset, make_transform, view_transform
from synthdet.data.debias import DebiasConfig
from synthdet.data.debias import prepare as debias_prepare
from synthdet.data.debias import select_rows as select_debiased
from synthdet.data.imageio import sha256_file
from synthdet.data.manifest import read_manifest
from synthdet.data.pixelcache import PixelCache
from synthdet.data.splits import class_subset, parse_class_budget
from synthdet.detectors import create_detector
from synthdet.fsutil import CheckpointError, atomic_output, load_torch_file
from synthdet.metrics import binary_metrics, expected_calibration_error, select_temperature, sigmoid
from synthdet.seeding import seed_everything, seed_worker


@dataclass
class TrainConfig:
    model: str = "resnet50"
    input_size: int = 64
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    num_workers: int | str = "auto"  # DataLoader workers per process; "auto": resolve_workers
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
    debias: dict | None = None  # data.debias: the debiased protocol's per-image step (data/debias.py)

    def fingerprint(self, data_key: str) -> str:
        """Identifies a run: a checkpoint from another configuration, other data, other starting
        weights or other model and training code is never resumed."""
        keep = {k: v for k, v in asdict(self).items() if k not in ("num_workers", "pixel_cache")}  # same results
        starts = [sha256_file(p) for p in (self.pretrained, self.weights) if isinstance(p, str) and Path(p).is_file()]
        return hashlib.sha256(json.dumps([keep, data_key, _code_hash(), starts], sort_keys=True).encode()
                              ).hexdigest()[:16]


def _code_hash() -> str:
    """The source of everything a training run executes (the import graph of this module)."""
    return hashlib.sha256(b"".join(f.read_bytes() for f in import_closure(__name__))).hexdigest()


def data_key(train_rows: pd.DataFrame, val_rows: pd.DataFrame) -> str:
    """What the run learns from: every train and val image's path, content (sha256) and label.
    Paths alone are not enough: a rebuilt benchmark reuses file names for new images."""
    parts = []
    for name, rows in (("train", train_rows), ("val", val_rows)):
        digest = rows["sha256"] if "sha256" in rows else pd.Series("", index=rows.index)
        parts += sorted(f"{name}\t{p}\t{d}\t{y}" for p, d, y in zip(rows["path"], digest, rows["label"], strict=True))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def resolve_device(spec: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: the GPU of this rank when CUDA is there, else the CPU; anything else as torch reads it."""
    if str(spec) == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def resolve_workers(spec: int | str, device: torch.device) -> int:
    """``auto``: no worker processes on the CPU (decoding in workers takes cores from the model's
    own threads: slower on small machines, see benchmarks/table_run.py); on CUDA up to 8 per
    process from the cores this process's share (one fewer, for the training loop itself)."""
    if spec == "auto":
        if device.type != "cuda":
            return 0
        share = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return max(1, min(8, share - 1))
    if isinstance(spec, bool) or not isinstance(spec, int | str) or not str(spec).isdigit():
        raise ValueError(f"num_workers: expected 'auto' or a whole number >= 0, got {spec!r}")
    return int(spec)


def workers_param(spec: int | str) -> int | str:
    """A params value for ``num_workers``, checked (``auto`` stays until the device is known)."""
    return spec if spec == "auto" else resolve_workers(spec, torch.device("cpu"))


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def memory_layout(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def device_autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bf16 on CUDA (fp16 on GPUs without bf16); a no-op on the CPU."""
    on = enabled and device.type == "cuda"
    dtype = torch.bfloat16 if on and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=on)


def _collect(failures: dict[str, str], skipped: list[str]) -> None:
    """Merge the per-sample failure reports that came back from the loader's workers."""
    for report in skipped:
        for line in filter(None, report.split("\n")):
            path, _, problem = line.partition("\t")
            failures[path] = problem


def compiled(model: nn.Module, spec: bool | str) -> nn.Module:
    """``model``, or ``torch.compile(model)`` when ``train.compile`` asks for it (``True``: the
    default inductor backend; a string: that backend). Compiling costs a minute or more per process
    and gained nothing on this project's 2-core CPU (``benchmarks/compile_step.py``): for long GPU
    runs, not the embedded benchmark."""
    if spec is False or spec is None:
        return model
    return torch.compile(model) if spec is True else torch.compile(model, backend=str(spec))


def accumulate_gradients(forward: nn.Module, model: nn.Module, loss_fn: nn.Module, x: torch.Tensor,
                         y: torch.Tensor, parts: int, scaler: torch.amp.GradScaler, autocast) -> torch.Tensor:  # noqa: ANN001
    """Backward of the mean loss of the batch ``(x, y)`` in ``parts`` micro-batches (gradient
    accumulation: the batch that does not fit at once); returns that mean loss. The gradients
    equal one backward over the whole batch up to float order, except through batch-norm
    statistics, which each micro-batch computes on its own. Under DDP only the last micro-batch
    synchronises the gradients."""
    parts = max(1, min(int(parts), len(y)))
    total = torch.zeros((), device=y.device)
    for i, (xs, ys) in enumerate(zip(x.chunk(parts), y.chunk(parts), strict=True)):
        last = i == parts - 1
        sync = model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) and not last \
            else contextlib.nullcontext()
        with sync:
            with autocast():
                loss = loss_fn(forward(xs).float(), ys)
            share = loss if parts == 1 else loss * (len(ys) / len(y))
            scaler.scale(share).backward()
        total = total + share.detach()
    return total


def train_detector(train_rows: pd.DataFrame, val_rows: pd.DataFrame, cfg: TrainConfig, out_dir: Path,
                   checkpoint_dir: Path | None = None, device: str | torch.device = "auto",
                   reuse: Sequence[Path] = ()) -> dict:
    """Train ``cfg.model`` on ``train_rows``; ``out_dir/detector.pt`` gets the epoch with the best
    validation AUC (ties: the later epoch; the last epoch without validation rows).

    ``checkpoint_dir`` holds ``last.pt`` (written after every epoch; a rerun with the same
    configuration, data and code resumes from it) and ``best.pt``. ``reuse``: other runs'
    checkpoint folders; one that finished this very run (same fingerprint) is copied here and
    resumed at its end instead of trained again (:func:`adopt_finished_run`).
    """
    world, rank, local = _dist_info()
    device = resolve_device(device, local)
    workers = resolve_workers(cfg.num_workers, device)
    seed_everything(cfg.seed + rank)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = checkpoint_dir or out_dir / "checkpoints"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = cfg.fingerprint(data_key(train_rows, val_rows))

    model = create_detector(cfg.model, img_size=cfg.input_size, weights=cfg.weights, pretrained=cfg.pretrained,
                            **cfg.model_kwargs).to(device, memory_format=memory_layout(cfg.channels_last))
    # a detector whose method is a training augmentation (CNNSpot) carries it as ``train_augment``
    augment = getattr(model, "train_augment", None)
    prepare = debias_prepare(DebiasConfig.from_params(cfg.debias))
    cache = _pixel_cache(train_rows, cfg, augment or prepare, workers, world, rank)
    transform = view_transform(train=True, hflip=cfg.hflip) if cache else \
        make_transform(cfg.input_size, train=True, hflip=cfg.hflip)
    train_ds = ManifestDataset(train_rows, transform, image_transform=augment, cache=cache, prepare=prepare)
    sampler = DistributedSampler(train_ds, seed=cfg.seed, shuffle=True) if world > 1 else None
    loader = DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
        num_workers=workers, worker_init_fn=seed_worker, drop_last=len(train_ds) > cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed), persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_scaler = cfg.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    total = cfg.epochs * len(loader)
    warmup = max(1, int(cfg.warmup_epochs * len(loader)))

    start_epoch, history, failures = 0, [], {}
    best = {"epoch": 0, "val_auc": None}
    last_path, best_path = checkpoint_dir / "last.pt", checkpoint_dir / "best.pt"
    if not last_path.exists() and world == 1 and (source := adopt_finished_run(reuse, checkpoint_dir, fingerprint,
                                                                                  cfg.epochs)):
        print(f"the same run (configuration, data and code) finished in {source}: its checkpoints are reused")
    if last_path.exists():
        try:
            ckpt = load_torch_file(last_path, "resume checkpoint")
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}. Delete it to train this run from the start.") from exc
        if ckpt.get("fingerprint") == fingerprint:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            torch.set_rng_state(ckpt["torch_rng"][rank % len(ckpt["torch_rng"])])  # each rank its own
            loader.generator.set_state(ckpt["loader_rng"])
            start_epoch, history = ckpt["epoch"], ckpt["history"]
            best, failures = ckpt["best"], ckpt["failures"]
            if rank == 0:
                print(f"resuming from {last_path} at epoch {start_epoch}")
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)
    forward = compiled(model, cfg.compile)  # checkpoints still come from ``model``: no _orig_mod. keys

    loss_fn = nn.BCEWithLogitsLoss()
    step = start_epoch * len(loader)
    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0)
        for x, y, _, skipped in bar:
            _collect(failures, skipped)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, warmup, cfg.lr)
            x = x.to(device, non_blocking=True, memory_format=memory_layout(cfg.channels_last))
            y = y.float().to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = accumulate_gradients(forward, model, loss_fn, x, y, cfg.accumulate, scaler,
                                        lambda: device_autocast(device, cfg.amp))
            scaler.step(opt)
            scaler.update()
            step += 1
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen),
                  "images_per_s": seen * world / (time.perf_counter() - t0), "lr": opt.param_groups[0]["lr"]}
        if rank == 0 and len(val_rows):
            scores = predict(_unwrap(model), val_rows, cfg.input_size, cfg.batch_size * 2, device, workers,
                             channels_last=cfg.channels_last)
            val = binary_metrics(val_rows["label"].to_numpy(), scores, n_bootstrap=0)
            record.update(val_acc=val["acc"], val_auc=val["auc"])
        history.append(record)
        rng_states = _gather_rng_states(world)
        if rank == 0:
            auc = record.get("val_auc")
            auc = None if auc is None or auc != auc else float(auc)  # NaN: one class in val
            if best["val_auc"] is None or (auc is not None and auc >= best["val_auc"]) or not len(val_rows):
                best = {"epoch": epoch + 1, "val_auc": auc}
                _save({"model": _unwrap(model).state_dict(), **best}, best_path)
            _save({"model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                   "torch_rng": rng_states, "loader_rng": loader.generator.get_state(),
                   "epoch": epoch + 1, "history": history, "fingerprint": fingerprint, "best": best,
                   "failures": failures}, last_path)
    calibration: dict = {"temperature": 1.0, "ece_before": None, "ece_after": None, "ece_scaled": None,
                         "calibration_images": 0}
    if rank == 0:
        if best_path.exists():
            _unwrap(model).load_state_dict(load_torch_file(best_path, "best checkpoint")["model"])
        if len(val_rows):
            calibration = calibrate(_unwrap(model), val_rows, cfg, device, workers)
        _save({"model": _unwrap(model).state_dict(), "config": asdict(cfg), **best, **calibration},
              out_dir / "detector.pt")
    if world > 1:
        dist.barrier()
    return {"history": history, "failures": failures, "best_epoch": best["epoch"], "best_val_auc": best["val_auc"],
            "calibration": calibration}


MIN_CALIBRATION_IMAGES = 50  # below this a fitted temperature follows the noise (measured: a 4-image
# split gave T = 0.08 and tripled the ECE), so the raw probabilities are kept
CALIBRATION_FOLDS = 5


def calibrate(model: nn.Module, val_rows: pd.DataFrame, cfg: TrainConfig, device: torch.device,
              workers: int) -> dict:
    """Temperature scaling on the validation split, kept only when it lowers the cross-validated
    expected calibration error (:func:`~synthdet.metrics.select_temperature`); none on fewer than
    :data:`MIN_CALIBRATION_IMAGES` images or a split with one label."""
    logits = predict(model, val_rows, cfg.input_size, cfg.batch_size * 2, device, workers,
                     channels_last=cfg.channels_last, logits=True)
    labels = val_rows["label"].to_numpy()
    keep = np.isfinite(logits)
    n = int(keep.sum())
    if n >= MIN_CALIBRATION_IMAGES and np.bincount(labels[keep].astype(int), minlength=2).min() >= CALIBRATION_FOLDS:
        chosen = select_temperature(logits[keep], labels[keep], CALIBRATION_FOLDS, seed=cfg.seed)
    else:
        ece = expected_calibration_error(labels[keep], sigmoid(logits[keep]))
        chosen = {"temperature": 1.0, "ece_before": ece, "ece_after": ece, "ece_scaled": None}
    return {**{k: None if v is None else round(float(v), 6) for k, v in chosen.items()}, "calibration_images": n}


def _pixel_cache(rows: pd.DataFrame, cfg: TrainConfig, augment: object, workers: int, world: int,
                 rank: int) -> PixelCache | None:
    """The decoded training views, when ``cfg.pixel_cache`` names a folder: rank 0 builds them,
    the other ranks wait and read. Not for detectors that augment full-size images (CNNSpot)."""
    if not cfg.pixel_cache:
        return None
    if augment is not None:
        if rank == 0:
            print(f"pixel cache not used: {cfg.model} or the debiased protocol changes the full-size images "
                  "before the resize")
        return None
    digests = rows["sha256"].fillna("").tolist() if "sha256" in rows else [""] * len(rows)
    cache = PixelCache(Path(cfg.pixel_cache), rows["path"].tolist(), digests, cfg.input_size)
    if rank == 0:
        cache.build(num_workers=workers)
    if world > 1:
        dist.barrier()
        cache.build()  # complete by now: reads what rank 0 found unreadable
    return cache


def _gather_rng_states(world: int) -> list[torch.Tensor]:
    """Every rank's torch RNG state, in rank order: under DDP each rank draws its own augmentations,
    so a resumed run restores each rank's state, not rank 0's for all."""
    state = torch.get_rng_state()
    if world == 1:
        return [state]
    states: list = [None] * world
    dist.all_gather_object(states, state)
    return states


def _save(obj: dict, path: Path) -> None:
    """torch.save, atomically: a crash never leaves half a checkpoint."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def predict(model: nn.Module, rows: pd.DataFrame, input_size: int, batch_size: int = 128,
            device: str | torch.device = "auto", num_workers: int | str = 0, image_transform=None,  # noqa: ANN001
            channels_last: bool = True, logits: bool = False) -> np.ndarray:
    """Fake-probabilities (``logits``: the raw logits) for ``rows``, in row order; NaN where a file
    cannot be decoded."""
    device = resolve_device(device)
    ds = ManifestDataset(rows, make_transform(input_size, train=False), image_transform=image_transform)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=resolve_workers(num_workers, device),
                        pin_memory=device.type == "cuda")
    layout = memory_layout(channels_last)
    model.eval().to(device, memory_format=layout)
    scores = np.full(len(rows), np.nan)
    for x, _, idx, _ in tqdm(loader, desc="predict", leave=False):
        with device_autocast(device):
            out = model(x.to(device, non_blocking=True, memory_format=layout)).float()
            scores[idx.numpy()] = (out if logits else torch.sigmoid(out)).cpu().numpy()
    return scores


def load_detector(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    ckpt = load_torch_file(path, "detector")
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a synthdet detector (expected the keys 'model' and 'config' that "
                              "the train stage writes)")
    cfg = {**ckpt["config"], "temperature": float(ckpt.get("temperature", 1.0))}  # the calibration, with it
    model = create_detector(cfg["model"], img_size=cfg["input_size"], **cfg.get("model_kwargs", {}))
    model.load_state_dict(ckpt["model"])
    return model.to(resolve_device(device)).eval(), cfg


def score_table(model_path: Path, table: pd.DataFrame, batch_size: int = 128, num_workers: int | str = 0,
                device: str | torch.device = "auto") -> pd.DataFrame:
    """``table`` (rows with a ``path``) plus the saved detector's fake-probability and name."""
    model, cfg = load_detector(model_path, device)
    table = table.reset_index(drop=True)
    table["score"] = predict(model, table, cfg["input_size"], batch_size, device, num_workers,
                             channels_last=cfg.get("channels_last", True))
    table["model"] = cfg["model"]
    return table


def train_on_manifest(splits_path: Path, out_dir: Path, checkpoint_dir: Path, model: str, train_subset: str,
                      cfg: dict, seed: int, model_kwargs: dict | None = None, class_budget: str | None = None,
                      device: str = "auto", debias: dict | None = None, reuse: Sequence[Path] = ()) -> dict:
    """Train on the train split of ``train_subset`` (or "all"); ``class_budget`` ("8x20") keeps
    that many classes and images per class and label (tables 4 and 5), validating on those classes;
    ``debias`` (``data.debias``): the debiased protocol selects the train and val images and
    prepares the training images (:mod:`synthdet.data.debias`); ``reuse``: see :func:`train_detector`."""
    df = read_manifest(splits_path)
    if train_subset != "all" and train_subset not in set(df["subset"]):
        raise ValueError(f"train_subset {train_subset!r} not in the manifest ({sorted(set(df['subset']))})")
    rows = df if train_subset == "all" else df[df["subset"] == train_subset]
    train_rows, val_rows = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    if class_budget:
        train_rows = class_subset(train_rows, *parse_class_budget(class_budget), seed=seed)
        val_rows = val_rows[val_rows["class"].isin(set(train_rows["class"]))]
    tc = TrainConfig(model=model, seed=seed, model_kwargs=model_kwargs or {}, **cfg, debias=debias)
    protocol = DebiasConfig.from_params(debias)
    train_rows = select_debiased(train_rows, protocol, seed, f"{train_subset} train split")
    if len(val_rows):
        val_rows = select_debiased(val_rows, protocol, seed, f"{train_subset} validation split", allow_empty=True)
    t0 = time.perf_counter()
    result = train_detector(train_rows, val_rows, tc, out_dir, checkpoint_dir, device, reuse)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["train_classes"] = sorted(set(train_rows["class"].dropna()))
    result["train_images"] = int((train_rows["label"] == 1).sum())  # per label; reals are as many
    return result
