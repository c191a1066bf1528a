"""The training loop: seeded, resumable, mixed precision on GPU, DDP under ``torchrun``.

Run on one process (the DVC stage) or ``torchrun --nproc_per_node=N -m synthdet.cli train ...``:
``WORLD_SIZE`` in the environment switches on DistributedDataParallel and a DistributedSampler.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from synthdet.data.dataset import ManifestDataset, make_transform
from synthdet.detectors import create_detector
from synthdet.fsutil import CheckpointError, load_torch_file
from synthdet.metrics import binary_metrics


@dataclass
class TrainConfig:
    model: str = "resnet50"
    input_size: int = 64
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    num_workers: int = 2
    amp: bool = True  # autocast on CUDA (bf16 where supported); ignored on CPU
    hflip: bool = True
    seed: int = 0
    model_kwargs: dict = field(default_factory=dict)
    weights: str | None = None

    def fingerprint(self, data_key: str) -> str:
        """Identifies a run: a checkpoint from another configuration, other data or other model
        and training code is never resumed."""
        keep = {k: v for k, v in asdict(self).items() if k != "num_workers"}
        return hashlib.sha256(json.dumps([keep, data_key, _code_hash()], sort_keys=True).encode()).hexdigest()[:16]


def _code_hash() -> str:
    package = Path(__file__).parent
    files = sorted([package / "train.py", package / "data" / "dataset.py", *(package / "detectors").glob("*.py")])
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def data_key(train_rows: pd.DataFrame, val_rows: pd.DataFrame) -> str:
    """What the run learns from: every train and val image's path, content (sha256) and label.
    Paths alone are not enough: a rebuilt benchmark reuses file names for new images."""
    parts = []
    for name, rows in (("train", train_rows), ("val", val_rows)):
        digest = rows["sha256"] if "sha256" in rows else pd.Series("", index=rows.index)
        parts += sorted(f"{name}\t{p}\t{d}\t{y}" for p, d, y in zip(rows["path"], digest, rows["label"], strict=True))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def train_detector(train_rows: pd.DataFrame, val_rows: pd.DataFrame, cfg: TrainConfig, out_dir: Path,
                   checkpoint_dir: Path | None = None) -> dict:
    """Train ``cfg.model`` on ``train_rows``; returns the history and final validation metrics.

    A checkpoint is written after every epoch to ``checkpoint_dir``; a rerun with the same
    configuration and data resumes from it.
    """
    world, rank, local = _dist_info()
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    seed_everything(cfg.seed + rank)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = checkpoint_dir or out_dir / "checkpoints"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = cfg.fingerprint(data_key(train_rows, val_rows))

    model = create_detector(cfg.model, img_size=cfg.input_size, weights=cfg.weights, **cfg.model_kwargs).to(device)
    # a detector whose method is a training augmentation (CNNSpot) carries it as ``train_augment``
    train_ds = ManifestDataset(train_rows, make_transform(cfg.input_size, train=True, hflip=cfg.hflip),
                               image_transform=getattr(model, "train_augment", None))
    sampler = DistributedSampler(train_ds, seed=cfg.seed, shuffle=True) if world > 1 else None
    loader = DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
        num_workers=cfg.num_workers, worker_init_fn=_seed_worker, drop_last=len(train_ds) > cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed), persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    total = cfg.epochs * len(loader)
    warmup = max(1, int(cfg.warmup_epochs * len(loader)))

    start_epoch, history = 0, []
    ckpt_path = checkpoint_dir / "last.pt"
    if ckpt_path.exists():
        try:
            ckpt = load_torch_file(ckpt_path, "resume checkpoint")
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}. Delete it to train this run from the start.") from exc
        if ckpt.get("fingerprint") == fingerprint:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            torch.set_rng_state(ckpt["torch_rng"])
            loader.generator.set_state(ckpt["loader_rng"])
            start_epoch, history = ckpt["epoch"], ckpt["history"]
            if rank == 0:
                print(f"resuming from {ckpt_path} at epoch {start_epoch}")
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)

    loss_fn = nn.BCEWithLogitsLoss()
    step = start_epoch * len(loader)
    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0)
        for x, y, _ in bar:
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, warmup, cfg.lr)
            x, y = x.to(device, non_blocking=True), y.float().to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                loss = loss_fn(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen),
                  "images_per_s": seen * world / (time.perf_counter() - t0), "lr": opt.param_groups[0]["lr"]}
        if rank == 0 and len(val_rows):
            scores = predict(_unwrap(model), val_rows, cfg.input_size, cfg.batch_size * 2, device, cfg.num_workers)
            val = binary_metrics(val_rows["label"].to_numpy(), scores, n_bootstrap=0)
            record.update(val_acc=val["acc"], val_auc=val["auc"])
        history.append(record)
        if rank == 0:
            torch.save({"model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                        "scaler": scaler.state_dict(), "torch_rng": torch.get_rng_state(),
                        "loader_rng": loader.generator.get_state(), "epoch": epoch + 1,
                        "history": history, "fingerprint": fingerprint}, ckpt_path.with_suffix(".tmp"))
            os.replace(ckpt_path.with_suffix(".tmp"), ckpt_path)
    if rank == 0:
        torch.save({"model": _unwrap(model).state_dict(), "config": asdict(cfg)}, out_dir / "detector.pt")
    if world > 1:
        dist.barrier()
    return {"history": history, "failures": train_ds.failures}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def predict(model: nn.Module, rows: pd.DataFrame, input_size: int, batch_size: int = 128,
            device: torch.device | str = "cpu", num_workers: int = 0, image_transform=None) -> np.ndarray:  # noqa: ANN001
    """Fake-probabilities for ``rows`` (in row order)."""
    ds = ManifestDataset(rows, make_transform(input_size, train=False), image_transform=image_transform)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model.eval()
    device = torch.device(device)
    scores = np.full(len(rows), np.nan)
    for x, _, idx in tqdm(loader, desc="predict", leave=False):
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            scores[idx.numpy()] = torch.sigmoid(model(x.to(device)).float()).cpu().numpy()
    return scores


def load_detector(path: Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    ckpt = load_torch_file(path, "detector")
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a synthdet detector (expected the keys 'model' and 'config' that "
                              "the train stage writes)")
    cfg = ckpt["config"]
    model = create_detector(cfg["model"], img_size=cfg["input_size"], **cfg.get("model_kwargs", {}))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg
