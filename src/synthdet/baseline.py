"""ImagiNet's baseline, trained in its two stages (paper, "Baseline Training" and "Additional
Training Details"), on manifest rows of any dataset.

1. SelfCon pre-training of :class:`~synthdet.detectors.selfcon.SelfConNet` on single-view
   batches (:func:`~synthdet.data.augment.train_augment`, 96 px crops, no resizing) with the
   origin and model-identification labellings: SGD, lr 0.005 warmed up linearly for 10 epochs,
   then cosine-annealed; batch 200; 400 epochs at paper scale (``BaselineConfig`` holds them all).
2. Calibration: the sub-network and projection heads are dropped; the backbone's batch-norm
   statistics are re-estimated on the calibration images (Schneider et al. 2020); then the two
   MLP heads (origin; model identification on the synthetic images only) are trained with
   cross-entropy on the frozen backbone's features of calibration-augmented images
   (:func:`~synthdet.data.augment.calibration_augment`): AdamW, lr 1e-4, weight decay 1e-3,
   betas (0.9, 0.99), 5 epochs.

Model labels are ``family`` by default (ImagiNet's GAN / SD / Midjourney / DALL-E 3; the embedded
benchmark's gan / vae / vq / diffusion) or ``generator`` (ImagiNet's 8 specific generators).
Gradient caching (the paper's way to fit batch 200 at full resolution on a GPU) is not needed at
the sizes this repository runs and is not implemented.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from synthdet.data.augment import calibration_augment, pad_if_needed, train_augment
from synthdet.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from synthdet.data.imageio import load_rgb
from synthdet.detectors.selfcon import SelfConDetector, imaginet_pretraining_loss, update_bn_statistics
from synthdet.seeding import rng_for, seed_everything


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
    seed: int = 0


class AugmentedRows(Dataset):
    """Manifest rows -> (normalised image tensor, origin label, model label); each image augmented
    with a generator seeded by (seed, epoch, path), so a rerun sees the same pixels."""

    def __init__(self, rows: pd.DataFrame, model_index: dict[str, int], augment: Callable, size: int, seed: int,
                 model_labels: str) -> None:
        self.paths = rows["path"].tolist()
        self.origin = rows["label"].astype(int).tolist()
        self.model = [model_index.get(m, -1) for m in rows[model_labels]]
        self.augment, self.size, self.seed, self.epoch = augment, size, seed, 0
        self.to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        img: Image.Image = load_rgb(self.paths[i])
        out, _ = self.augment(img, rng_for(self.seed, "baseline", str(self.epoch), self.paths[i]), self.size)
        return self.to_tensor(out), self.origin[i], self.model[i]


def model_classes(rows: pd.DataFrame, model_labels: str) -> list[str]:
    """The model-identification classes: the synthetic images' families (or generators), sorted."""
    return sorted(rows.loc[rows["label"] == 1, model_labels].astype(str).unique())


def pretrain(detector: SelfConDetector, rows: pd.DataFrame, cfg: BaselineConfig,
             classes: list[str]) -> list[dict]:
    """Stage 1 on the training rows; the loss per epoch."""
    seed_everything(cfg.seed)
    data = AugmentedRows(rows, {c: k for k, c in enumerate(classes)}, train_augment, cfg.crop, cfg.seed,
                         cfg.model_labels)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=len(data) > cfg.batch_size,
                        generator=torch.Generator().manual_seed(cfg.seed))
    net = detector.net
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
        for x, origin, model in tqdm(loader, desc=f"selfcon {epoch + 1}/{cfg.epochs}", leave=False):
            loss = imaginet_pretraining_loss(net(x), origin, model, cfg.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            losses.append(loss.item())
        history.append({"epoch": epoch + 1, "selfcon_loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"]})
    return history


def calibrate(detector: SelfConDetector, rows: pd.DataFrame, cfg: BaselineConfig, classes: list[str]) -> list[dict]:
    """Stage 2 on the calibration rows: BN statistics, then the origin and model heads."""
    index = {c: k for k, c in enumerate(classes)}
    data = AugmentedRows(rows, index, calibration_augment, cfg.calibration_size, cfg.seed + 1, cfg.model_labels)
    loader = DataLoader(data, batch_size=cfg.calibration_batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    backbone = detector.net.backbone
    update_bn_statistics(backbone, (x for x, _, _ in loader))
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
                   pretrained: bool | str = False) -> tuple[SelfConDetector, dict]:
    """Both stages; the calibrated detector and what happened (losses, classes)."""
    classes = model_classes(pd.concat([train_rows, calibration_rows]), cfg.model_labels)
    seed_everything(cfg.seed)
    detector = SelfConDetector(pretrained=pretrained, n_models=len(classes), sub_block=cfg.sub_block)
    stage1 = pretrain(detector, train_rows, cfg, classes)
    stage2 = calibrate(detector, calibration_rows, cfg, classes)
    return detector, {"model_classes": classes, "pretraining": stage1, "calibration": stage2}


def centre_crop(img: Image.Image, rng: np.random.Generator, size: int) -> tuple[Image.Image, list]:  # noqa: ARG001
    """The test-time view: reflection-padded if smaller, then the central ``size`` square (the
    augmentations' signature, with nothing random)."""
    img = pad_if_needed(img, size)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size)), []


@torch.no_grad()
def predict_both(detector: SelfConDetector, rows: pd.DataFrame, size: int, batch_size: int = 64) -> pd.DataFrame:
    """Both tracks for test rows (no augmentation: a centre crop of ``size``, padded if smaller):
    p(synthetic) and the most likely model class index."""
    data = AugmentedRows(rows.assign(**{"_m": ""}), {}, centre_crop, size, 0, "_m")
    detector.eval()
    probs, models = [], []
    for x, _, _ in DataLoader(data, batch_size=batch_size):
        features = detector.net.features(x)
        probs.append(torch.softmax(detector.origin_head(features), dim=1)[:, 1])
        models.append(detector.model_head(features).argmax(dim=1))
    return pd.DataFrame({"path": rows["path"].tolist(), "p_synthetic": torch.cat(probs).numpy(),
                         "model_class": torch.cat(models).numpy()})
