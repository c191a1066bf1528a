"""The training loop: seeded, resumable per epoch, the best epoch kept, bf16 and DDP on GPUs."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from synthdet.data.dataset import ManifestDataset, make_transform, view_transform
from synthdet.data.manifest import read_manifest
from synthdet.data.pixelcache import PixelCache
from synthdet.data.splits import class_subset, parse_class_budget
from synthdet.detectors import create_detector
from synthdet.detectors.weights import pretrained_start
from synthdet.metrics import binary_metrics
from synthdet.seeding import seed_everything, seed_worker
from synthdet.training import checkpoint, scoring
from synthdet.training.config import TrainConfig, data_key
from synthdet.training.objective import BCE, Objective
from synthdet.training.runtime import (
    compiled,
    device_autocast,
    dist_info,
    gather_rng_states,
    memory_layout,
    resolve_device,
    resolve_workers,
)
from synthdet.transforms.debias import DebiasConfig
from synthdet.transforms.debias import prepare as debias_prepare
from synthdet.transforms.debias import select_rows as select_debiased


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def _collect(failures: dict[str, str], skipped: list[str]) -> None:
    """Merge the per-sample failure reports that came back from the loader's workers."""
    for report in skipped:
        for line in filter(None, report.split("\n")):
            path, _, problem = line.partition("\t")
            failures[path] = problem


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
        sync = (model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel) and not last
                else contextlib.nullcontext())
        with sync:
            with autocast():
                loss = loss_fn(forward(xs).float(), ys)
            share = loss if parts == 1 else loss * (len(ys) / len(y))
            scaler.scale(share).backward()
        total = total + share.detach()
    return total


def train_detector(train_rows: pd.DataFrame, val_rows: pd.DataFrame, cfg: TrainConfig, out_dir: Path,
                   checkpoint_dir: Path | None = None, device: str | torch.device = "auto",
                   reuse: Sequence[Path] = (), objective: Objective | None = None, release: bool = True) -> dict:
    """Train ``cfg.model`` on ``train_rows``; ``out_dir/detector.pt`` gets the epoch with the best
    validation AUC (ties: the later epoch; the last epoch without validation rows, or with an
    objective that does not validate), after the objective's finishing stage.

    ``objective``: what is minimised on which batches, and the stage after the last epoch
    (:mod:`synthdet.training.objective`; default: binary cross-entropy on the fake logit, then
    temperature calibration on ``val_rows``). Its name, configuration and code enter the fingerprint.

    ``checkpoint_dir`` holds ``last.pt`` (written after an epoch once ``cfg.resume_every_s`` of
    training is unsaved, never after the last; a rerun with the same configuration, data and code
    resumes from it, to the same weights) and ``best.pt`` (the best epoch's weights, when they are
    not last.pt's) while the run is unfinished.
    ``release``: delete them once ``detector.pt`` is written (a stage that scores after training
    passes False and releases them when its outputs are complete). The checkpoint folder then
    keeps a hard link to ``detector.pt``; a ``detector.pt`` of this very run (same fingerprint)
    in ``out_dir`` or there is returned without training. ``reuse``: other runs' ``detector.pt``; one that
    finished this very run is linked here instead of training again
    (:func:`~synthdet.training.checkpoint.reuse_finished`).
    """
    world, rank, local = dist_info()
    device = resolve_device(device, local)
    workers = resolve_workers(cfg.num_workers, device)
    seed_everything(cfg.seed + rank)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = checkpoint_dir or out_dir / "checkpoints"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    start = pretrained_start(cfg.pretrained)  # a packaged source's name -> its checked file
    objective = objective or Objective()
    run_objective = None if objective.name == BCE else {"name": objective.name, **objective.config()}
    fingerprint = cfg.fingerprint(data_key(train_rows, val_rows), start, run_objective, type(objective).__module__)
    model = create_detector(cfg.model, img_size=cfg.input_size, weights=cfg.weights, pretrained=start,
                            **cfg.model_kwargs).to(device, memory_format=memory_layout(cfg.channels_last))
    if (wants := getattr(model, "objective", BCE)) != objective.name:
        raise ValueError(f"{cfg.model} is trained with its own objective ({wants}), not {objective.name}: "
                         f"ImagiNet's methods train through synthdet.imaginet.baseline (stage imaginet_train)")
    train_ds = objective.dataset(train_rows, model, cfg)
    if train_ds is None:
        train_ds = _manifest_dataset(train_rows, model, cfg, workers, world, rank)
    sampler = DistributedSampler(train_ds, seed=cfg.seed, shuffle=True) if world > 1 else None
    loader = DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
        num_workers=workers, worker_init_fn=seed_worker, drop_last=len(train_ds) > cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed), persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    trained = objective.trained(model)  # what the optimiser, DDP and the loss's forward see
    opt = (torch.optim.SGD(trained.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
           if cfg.optimizer == "sgd" else torch.optim.AdamW(trained.parameters(), lr=cfg.lr,
                                                            weight_decay=cfg.weight_decay))
    use_scaler = cfg.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    total = cfg.epochs * len(loader)
    warmup = max(1, int(cfg.warmup_epochs * len(loader)))

    start_epoch, history, failures = 0, [], {}
    best = {"epoch": 0, "val_auc": None}
    resume = checkpoint.ResumeState(checkpoint_dir, fingerprint, cfg.resume_every_s)
    last_path = resume.last
    detector = out_dir / "detector.pt"
    done = checkpoint.reuse_finished(detector, checkpoint_dir, reuse if world == 1 and not last_path.exists() else (),
                                     fingerprint, rank == 0)
    if done is not None:  # nothing to train
        if rank == 0:
            checkpoint.keep_finished(detector, checkpoint_dir)
            if release:
                checkpoint.release_resume_state(checkpoint_dir)
        if world > 1:
            torch.distributed.barrier()
        return done["result"]
    if last_path.exists():
        ckpt = checkpoint.read_resume_checkpoint(last_path)
        if ckpt["fingerprint"] == fingerprint:
            checkpoint.restore(ckpt, last_path, cfg.epochs, model, opt, scaler, loader.generator, rank)
            start_epoch, history = ckpt["epoch"], ckpt["history"]
            best, failures = ckpt["best"], ckpt["failures"]
            resume.resumed(model, best, start_epoch)
            if rank == 0:
                print(f"resuming from {last_path} at epoch {start_epoch}")
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(trained, device_ids=[local] if device.type == "cuda" else None)
    forward = compiled(trained, cfg.compile)  # checkpoints still come from ``model``: no _orig_mod. keys

    validate = objective.validates and len(val_rows) > 0
    step = start_epoch * len(loader)
    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        if hasattr(train_ds, "set_epoch"):  # a dataset whose augmentation is seeded per epoch
            train_ds.set_epoch(epoch)
        model.train()
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0)
        for x, y, _, skipped in bar:
            _collect(failures, skipped)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, cfg.lr)
            x = x.to(device, non_blocking=True, memory_format=memory_layout(cfg.channels_last))
            y = y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = accumulate_gradients(forward, trained, objective.loss, x, y, cfg.accumulate, scaler,
                                        lambda: device_autocast(device, cfg.amp))
            scaler.step(opt)
            scaler.update()
            step += 1
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen),
                  "images_per_s": seen * world / (time.perf_counter() - t0), "lr": opt.param_groups[0]["lr"]}
        if rank == 0 and validate:
            scores = scoring.score(model, val_rows, input_size=cfg.input_size, batch_size=cfg.batch_size * 2,
                                   device=device, num_workers=workers, channels_last=cfg.channels_last,
                                   desc="validate")["fake_probability"].to_numpy()
            val = binary_metrics(val_rows["label"].to_numpy(), scores, n_bootstrap=0)
            record.update(val_acc=val["acc"], val_auc=val["auc"])
        history.append(record)
        rng_states = gather_rng_states(world)
        if rank == 0:
            auc = record.get("val_auc")
            auc = None if auc is None or auc != auc else float(auc)  # NaN: one class in val
            if best["val_auc"] is None or (auc is not None and auc >= best["val_auc"]) or not validate:
                best = {"epoch": epoch + 1, "val_auc": auc}
                resume.new_best(model)
            resume.after_epoch(epoch + 1, cfg.epochs, best, lambda rng=rng_states: {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                "torch_rng": rng, "loader_rng": loader.generator.get_state(), "history": history,
                "failures": failures})
    calibration: dict = {}
    if rank == 0:
        resume.load_best(model)
        checkpoint.stored_weights(model, cfg.weights_dtype)  # calibrated and scored as stored
        calibration = objective.finish(model, val_rows, cfg, device, workers)  # a kill here reruns only this
    result = {"history": history, "failures": failures, "best_epoch": best["epoch"], "best_val_auc": best["val_auc"],
              "calibration": calibration}
    if rank == 0:
        config = {**asdict(cfg), **({"objective": run_objective} if run_objective else {})}
        # the result without the epochs' timings: the same run gives the same bytes (and DVC hash)
        untimed = {**result, "history": [{k: v for k, v in h.items() if k != "images_per_s"} for h in history]}
        weights = checkpoint.stored_weights(model, cfg.weights_dtype)
        checkpoint.save({"model": weights, "config": config, "fingerprint": fingerprint, **best, **calibration,
                         "result": untimed}, detector)
        checkpoint.keep_finished(detector, checkpoint_dir)
        if release:
            checkpoint.release_resume_state(checkpoint_dir)
    if world > 1:
        torch.distributed.barrier()
    return result


def _manifest_dataset(rows: pd.DataFrame, model: nn.Module, cfg: TrainConfig, workers: int, world: int,
                      rank: int) -> ManifestDataset:
    """The registry detectors' training items: each image as the detector's ``data_config`` views
    it, with its recipe's training-only step (CNNSpot's), the debiased protocol's and the pixel cache."""
    data = model.data_config
    augment = data.train_augment
    prepare = debias_prepare(DebiasConfig.from_params(cfg.debias))
    cache = _pixel_cache(rows, cfg, augment or prepare, data.interpolation, workers, world, rank)
    transform = (view_transform(train=True, hflip=cfg.hflip, data=data) if cache
                 else make_transform(cfg.input_size, train=True, hflip=cfg.hflip, data=data))
    return ManifestDataset(rows, transform, image_transform=augment, cache=cache, prepare=prepare)


def _pixel_cache(rows: pd.DataFrame, cfg: TrainConfig, augment: object, interpolation: str, workers: int,
                 world: int, rank: int) -> PixelCache | None:
    """The decoded training views, when ``cfg.pixel_cache`` names a folder: rank 0 builds them,
    the other ranks wait and read. Not for detectors that augment full-size images (CNNSpot), nor
    for one that resizes otherwise than the cache's views (:data:`PixelCache.INTERPOLATION`)."""
    if not cfg.pixel_cache:
        return None
    if augment is not None or interpolation != PixelCache.INTERPOLATION:
        if rank == 0:
            print(f"pixel cache not used: {cfg.model} or the debiased protocol changes the full-size images "
                  f"before the resize, or {cfg.model} resizes with {interpolation}")
        return None
    digests = rows["sha256"].fillna("").tolist() if "sha256" in rows else [""] * len(rows)
    cache = PixelCache(Path(cfg.pixel_cache), rows["path"].tolist(), digests, cfg.input_size)
    if rank == 0:
        cache.build(num_workers=workers)
    if world > 1:
        torch.distributed.barrier()
        cache.build()  # complete by now: reads what rank 0 found unreadable
    return cache


def train_on_manifest(splits_path: Path, out_dir: Path, checkpoint_dir: Path, model: str, train_subset: str,
                      cfg: dict, seed: int, model_kwargs: dict | None = None, class_budget: str | None = None,
                      device: str = "auto", debias: dict | None = None, reuse: Sequence[Path] = (),
                      release: bool = True) -> dict:
    """Train on the train split of ``train_subset`` (or "all"); ``class_budget`` ("8x20") keeps
    that many classes and images per class and label (tables 4 and 5), validating on those classes;
    ``debias`` (``data.debias``): the debiased protocol selects the train and val images and
    prepares the training images (:mod:`synthdet.transforms.debias`); ``reuse``, ``release``: see
    :func:`train_detector`."""
    df = read_manifest(splits_path)
    if train_subset != "all" and train_subset not in set(df["subset"]):
        raise ValueError(f"train_subset {train_subset!r} not in the manifest ({sorted(set(df['subset']))})")
    rows = df if train_subset == "all" else df[df["subset"] == train_subset]
    train_rows, val_rows = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    if class_budget:
        train_rows = class_subset(train_rows, *parse_class_budget(class_budget), seed=seed)
        val_rows = val_rows[val_rows["class"].isin(set(train_rows["class"]))]
    protocol = DebiasConfig.from_params(debias)
    # the protocol off is one configuration however it is written (None, or data.debias with enabled: false),
    # so that runs that differ only there share a fingerprint (and one may reuse the other's weights)
    tc = TrainConfig(model=model, seed=seed, model_kwargs=model_kwargs or {}, **cfg,
                     debias=debias if protocol.enabled else None)
    train_rows = select_debiased(train_rows, protocol, seed, f"{train_subset} train split")
    if len(val_rows):
        val_rows = select_debiased(val_rows, protocol, seed, f"{train_subset} validation split", allow_empty=True)
    t0 = time.perf_counter()
    result = train_detector(train_rows, val_rows, tc, out_dir, checkpoint_dir, device, reuse, release=release)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["train_classes"] = sorted(set(train_rows["class"].dropna()))
    result["train_images"] = int((train_rows["label"] == 1).sum())  # per label; reals are as many
    return result
