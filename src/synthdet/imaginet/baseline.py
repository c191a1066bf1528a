"""ImagiNet's baseline, trained in its two stages (paper, "Baseline Training" and "Additional
Training Details"), on manifest rows of any dataset.

1. SelfCon pre-training of :class:`~synthdet.detectors.selfcon.SelfConNet` on single-view
   batches (:func:`~synthdet.imaginet.augment.train_augment`, 96 px crops, no resizing) with the
   origin and model-identification labellings: SGD, lr 0.005 warmed up linearly for 10 epochs,
   then cosine-annealed; batch 200; 400 epochs at paper scale (``BaselineConfig`` holds them all).
2. Calibration: the sub-network and projection heads are dropped; the backbone's batch-norm
   statistics are re-estimated on the calibration images (Schneider et al. 2020); then the two
   MLP heads (origin; model identification on the synthetic images only) are trained with
   cross-entropy on the frozen backbone's features of calibration-augmented images
   (:func:`~synthdet.imaginet.augment.calibration_augment`): AdamW, lr 1e-4, weight decay 1e-3,
   betas (0.9, 0.99), 5 epochs.

Model labels are ``family`` by default (ImagiNet's GAN / SD / Midjourney / DALL-E 3; the embedded
benchmark's gan / vae / vq / diffusion) or ``generator`` (ImagiNet's 8 specific generators).
Gradient caching (the paper's way to fit batch 200 at full resolution on a GPU) is not
implemented: a batch that does not fit needs a smaller ``batch_size`` (SelfCon's loss is over the
batch, so that changes the objective; the saved network and the run's metrics record the configuration).

Table 3's comparison rows trained here, on the same data, crops and backbone, with cross-entropy
(:func:`train_cross_entropy`): ``grag2021`` (Gragnaniello et al. 2021: random crops and flips)
and ``corvi2022`` (Corvi et al. 2022: the same with blur and compression augmentation, here
ImagiNet's training augmentation). Their published weights are not used, and these rows are not
the papers' models.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from synthdet.data.dataset import DataConfig
from synthdet.data.imageio import load_rgb
from synthdet.detectors.selfcon import (
    CrossEntropyNet,
    SelfConDetector,
    imaginet_pretraining_loss,
    update_bn_statistics,
)
from synthdet.imaginet.augment import calibration_augment, crop_augment, train_augment
from synthdet.seeding import rng_for, seed_everything
from synthdet.training import checkpoint
from synthdet.training.config import run_fingerprint

METHODS = ("selfcon", "grag2021", "corvi2022")  # ImagiNet's baseline, then the cross-entropy rows
CE_AUGMENT = {"grag2021": crop_augment, "corvi2022": train_augment}


@dataclass(frozen=True)
class BaselineConfig:
    crop: int = 96
    calibration_size: int = 256
    batch_size: int = 200
    epochs: int = 400
    warmup_epochs: int = 10
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 1e-4  # not given by the paper: SelfCon's default
    temperature: float = 0.07
    calibration_epochs: int = 5
    calibration_lr: float = 1e-4
    calibration_weight_decay: float = 1e-3
    calibration_batch_size: int = 64
    model_labels: str = "family"  # family | generator
    sub_block: int = 2
    backbone: str = "resnet50"  # a timm ResNet
    nodown: bool = True  # no early downsampling (the paper's); false: the CPU budget's
    seed: int = 0

    @classmethod
    def from_params(cls, params: dict, seed: int) -> BaselineConfig:
        """From ``imaginet.baseline`` (every field but the seed); an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)} - {"seed"}
        if unknown := sorted(set(params) - known):
            raise ValueError(f"imaginet.baseline: unknown keys {unknown} (known: {sorted(known)})")
        return cls(**params, seed=seed)


class AugmentedRows(Dataset):
    """Manifest rows -> (normalised image tensor, origin label, model label); each image augmented
    with a generator seeded by (seed, epoch, path), so a rerun sees the same pixels."""

    def __init__(self, rows: pd.DataFrame, model_index: dict[str, int], augment: Callable, size: int, seed: int,
                 model_labels: str, data: DataConfig) -> None:
        """``data``: the network's data config (its normalisation)."""
        self.paths = rows["path"].tolist()
        self.origin = rows["label"].astype(int).tolist()
        self.model = [model_index.get(m, -1) for m in rows[model_labels]]
        self.augment, self.size, self.seed, self.epoch = augment, size, seed, 0
        self.to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(data.mean, data.std)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        img: Image.Image = load_rgb(self.paths[i])
        out, _ = self.augment(img, rng_for(self.seed, "baseline", str(self.epoch), self.paths[i]), self.size)
        return self.to_tensor(out), self.origin[i], self.model[i]


def model_classes(rows: pd.DataFrame, model_labels: str) -> list[str]:
    """The model-identification classes: the synthetic images' families (or generators), sorted."""
    return sorted(rows.loc[rows["label"] == 1, model_labels].astype(str).unique())


def _sgd_epochs(net: nn.Module, data: AugmentedRows, cfg: BaselineConfig,
                loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], desc: str,
                device: torch.device) -> list[dict]:
    """Stage 1's optimisation: SGD with momentum, linear warm-up then cosine annealing, per step."""
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=len(data) > cfg.batch_size,
                        generator=torch.Generator().manual_seed(cfg.seed))
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps, warmup = cfg.epochs * len(loader), min(cfg.warmup_epochs, cfg.epochs) * len(loader)
    schedule = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / max(1, warmup), total_iters=max(1, warmup)),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps - warmup))], milestones=[max(1, warmup)])
    history = []
    net.train()
    for epoch in range(cfg.epochs):
        data.epoch = epoch
        losses = []
        for x, origin, model in tqdm(loader, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False):
            loss = loss_fn(x.to(device), origin.to(device), model.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            losses.append(loss.item())
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"]})
    net.eval()
    return history


def pretrain(detector: SelfConDetector, rows: pd.DataFrame, cfg: BaselineConfig,
             classes: list[str], device: torch.device | str = "cpu") -> list[dict]:
    """Stage 1 on the training rows; the SelfCon loss per epoch."""
    seed_everything(cfg.seed)
    data = AugmentedRows(rows, {c: k for k, c in enumerate(classes)}, train_augment, cfg.crop, cfg.seed,
                         cfg.model_labels, detector.data_config)
    net = detector.net
    return _sgd_epochs(net, data, cfg, lambda x, origin, model: imaginet_pretraining_loss(
        net(x), origin, model, cfg.temperature), "selfcon", torch.device(device))


def calibrate(detector: SelfConDetector, rows: pd.DataFrame, cfg: BaselineConfig, classes: list[str],
              device: torch.device | str = "cpu") -> list[dict]:
    """Stage 2 on the calibration rows: BN statistics, then the origin and model heads."""
    index = {c: k for k, c in enumerate(classes)}
    data = AugmentedRows(rows, index, calibration_augment, cfg.calibration_size, cfg.seed + 1, cfg.model_labels,
                        detector.data_config)
    loader = DataLoader(data, batch_size=cfg.calibration_batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    backbone = detector.net.backbone
    update_bn_statistics(backbone, (x.to(device) for x, _, _ in loader))
    for p in backbone.parameters():
        p.requires_grad_(False)
    heads = nn.ModuleList([detector.origin_head, detector.model_head])
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg.calibration_lr, weight_decay=cfg.calibration_weight_decay,
                            betas=(0.9, 0.99))
    history = []
    for epoch in range(cfg.calibration_epochs):
        data.epoch = epoch
        totals = {"origin_loss": [], "model_loss": []}
        for x, origin, model in loader:
            x, origin, model = x.to(device), origin.to(device), model.to(device)
            with torch.no_grad():
                features = backbone(x)
            loss = F.cross_entropy(detector.origin_head(features), origin)
            totals["origin_loss"].append(loss.item())
            synthetic = model >= 0
            if synthetic.any():
                model_loss = F.cross_entropy(detector.model_head(features[synthetic]), model[synthetic])
                totals["model_loss"].append(model_loss.item())
                loss = loss + model_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        history.append({"epoch": epoch + 1, **{k: float(np.mean(v)) if v else float("nan") for k, v in totals.items()}})
    detector.eval()
    return history


def train_baseline(train_rows: pd.DataFrame, calibration_rows: pd.DataFrame, cfg: BaselineConfig,
                   pretrained: bool | str = False, device: torch.device | str = "cpu") -> tuple[SelfConDetector, dict]:
    """Both stages; the calibrated detector and what happened (losses, classes)."""
    classes = model_classes(pd.concat([train_rows, calibration_rows]), cfg.model_labels)
    seed_everything(cfg.seed)
    detector = SelfConDetector(pretrained=pretrained, n_models=len(classes), sub_block=cfg.sub_block,
                               backbone=cfg.backbone, nodown=cfg.nodown).to(device)
    t0 = time.perf_counter()
    stage1 = pretrain(detector, train_rows, cfg, classes, device)
    t1 = time.perf_counter()
    stage2 = calibrate(detector, calibration_rows, cfg, classes, device)
    return detector, {"model_classes": classes, "pretraining": stage1, "calibration": stage2,
                      "seconds": {"pretraining": round(t1 - t0, 1), "calibration": round(time.perf_counter() - t1, 1)}}


def train_cross_entropy(train_rows: pd.DataFrame, cfg: BaselineConfig, method: str, pretrained: bool | str = False,
                        device: torch.device | str = "cpu") -> tuple[CrossEntropyNet, dict]:
    """A comparison row of Table 3: the same backbone, crops, optimiser and schedule as stage 1,
    trained with cross-entropy on the origin labels, with ``method``'s augmentation (``CE_AUGMENT``)."""
    if method not in CE_AUGMENT:
        raise ValueError(f"no cross-entropy method {method!r} (known: {sorted(CE_AUGMENT)})")
    seed_everything(cfg.seed)
    net = CrossEntropyNet(pretrained, backbone=cfg.backbone, nodown=cfg.nodown).to(device)
    data = AugmentedRows(train_rows, {}, CE_AUGMENT[method], cfg.crop, cfg.seed, "label", net.data_config)
    t0 = time.perf_counter()
    history = _sgd_epochs(net, data, cfg, lambda x, origin, _: F.cross_entropy(net(x), origin), method,
                          torch.device(device))
    return net, {"pretraining": history, "seconds": {"training": round(time.perf_counter() - t0, 1)}}


NETWORKS = {"selfcon": "imaginet_selfcon", "grag2021": "imaginet_ce", "corvi2022": "imaginet_ce"}  # registry names


def detector_config(method: str, cfg: BaselineConfig, classes: list[str]) -> dict:
    """What :func:`~synthdet.training.checkpoint.load_detector` rebuilds ``method``'s network from:
    its registered name, its arguments, the test view's size (the calibration size), and how it
    was trained (the method and ``imaginet.baseline``)."""
    kwargs: dict = {"backbone": cfg.backbone, "nodown": cfg.nodown}
    if method == "selfcon":
        kwargs |= {"n_models": len(classes), "sub_block": cfg.sub_block}
    return {"model": NETWORKS[method], "input_size": cfg.calibration_size, "model_kwargs": kwargs,
            "channels_last": True, "method": method, "baseline": asdict(cfg)}


def save_detector(net: nn.Module, path: Path, method: str, cfg: BaselineConfig, classes: list[str],
                  data_key: str) -> None:
    """``method``'s trained network as a ``detector.pt`` of the one checkpoint format, with its
    model classes and the fingerprint of its configuration, data and code."""
    config = detector_config(method, cfg, classes)
    fingerprint = run_fingerprint(config, data_key, module=__name__)
    checkpoint.save({"model": net.state_dict(), "config": config, "model_classes": list(classes),
                     "fingerprint": fingerprint, "temperature": 1.0}, Path(path))
