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

Both stages run in the one training loop (:func:`~synthdet.training.loop.train_detector`), stage 1
as its epochs under :class:`SelfConObjective` (SGD, the loop's linear warm-up and cosine schedule
per step, its AMP, DDP, gradient accumulation and per-epoch resume), stage 2 as that objective's
finishing stage; the run's ``detector.pt`` is the one checkpoint format. With gradient
accumulation, SelfCon's loss is computed over each micro-batch, which changes the objective.

Table 3's comparison rows trained here, on the same data, crops and backbone, with cross-entropy
(:class:`CrossEntropyObjective`): ``grag2021`` (Gragnaniello et al. 2021: random crops and flips)
and ``corvi2022`` (Corvi et al. 2022: the same with blur and compression augmentation, here
ImagiNet's training augmentation). Their published weights are not used, and these rows are not
the papers' models.
"""

from __future__ import annotations

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

from synthdet.data.dataset import DataConfig
from synthdet.data.imageio import load_rgb
from synthdet.detectors.selfcon import (
    SelfConDetector,
    imaginet_pretraining_loss,
    update_bn_statistics,
)
from synthdet.imaginet.augment import calibration_augment, crop_augment, train_augment
from synthdet.seeding import rng_for
from synthdet.training.config import TrainConfig
from synthdet.training.loop import train_detector
from synthdet.training.objective import Objective

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
    """Manifest rows -> (normalised image tensor, [origin label, model label], row index, ""): the
    loop's item, with no skipped files. Each image is augmented with a generator seeded by (seed,
    epoch, path), so a rerun, and a run resumed at any epoch, sees the same pixels."""

    def __init__(self, rows: pd.DataFrame, model_index: dict[str, int], augment: Callable, size: int, seed: int,
                 model_labels: str, data: DataConfig) -> None:
        """``data``: the network's data config (its normalisation)."""
        self.paths = rows["path"].tolist()
        self.origin = rows["label"].astype(int).tolist()
        self.model = [model_index.get(m, -1) for m in rows[model_labels]]
        self.augment, self.size, self.seed, self.epoch = augment, size, seed, 0
        self.to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(data.mean, data.std)])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
        img: Image.Image = load_rgb(self.paths[i])
        out, _ = self.augment(img, rng_for(self.seed, "baseline", str(self.epoch), self.paths[i]), self.size)
        return self.to_tensor(out), torch.tensor([self.origin[i], self.model[i]]), i, ""


def model_classes(rows: pd.DataFrame, model_labels: str) -> list[str]:
    """The model-identification classes: the synthetic images' families (or generators), sorted."""
    return sorted(rows.loc[rows["label"] == 1, model_labels].astype(str).unique())


class SelfConObjective(Objective):
    """Stage 1: SelfCon on the origin and model labels (real images left out of the latter) over
    the sub-network's and the projection head's views of single-view ``crop`` px crops; the
    finishing stage is stage 2, :func:`calibrate` on the calibration rows (the loop's ``val_rows``)."""

    name = "selfcon"
    validates = False  # the calibration rows are stage 2's, not a validation split: the last epoch is kept

    def __init__(self, cfg: BaselineConfig, classes: list[str]) -> None:
        self.cfg, self.classes = cfg, list(classes)

    def config(self) -> dict:
        return {"method": "selfcon", "baseline": asdict(self.cfg), "model_classes": self.classes}

    def trained(self, model: SelfConDetector) -> nn.Module:
        return model.net  # backbone, sub-network and projection head; the calibration heads wait for stage 2

    def dataset(self, rows: pd.DataFrame, model: nn.Module, cfg: TrainConfig) -> Dataset:  # noqa: ARG002
        return AugmentedRows(rows, {c: k for k, c in enumerate(self.classes)}, train_augment, self.cfg.crop,
                             self.cfg.seed, self.cfg.model_labels, model.data_config)

    def loss(self, views: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return imaginet_pretraining_loss(views, target[:, 0], target[:, 1], self.cfg.temperature)

    def finish(self, model: nn.Module, val_rows: pd.DataFrame, cfg: TrainConfig, device: torch.device,
               workers: int) -> dict:  # noqa: ARG002
        history = calibrate(model, val_rows, self.cfg, self.classes, device)
        return {"temperature": 1.0, "model_classes": self.classes, "calibration_history": history}


class CrossEntropyObjective(Objective):
    """A comparison row of Table 3: two-class cross-entropy on the origin labels with ``method``'s
    augmentation (:data:`CE_AUGMENT`), the same crops, optimiser and schedule as stage 1; no calibration."""

    name = "cross_entropy"
    validates = False

    def __init__(self, cfg: BaselineConfig, method: str) -> None:
        if method not in CE_AUGMENT:
            raise ValueError(f"no cross-entropy method {method!r} (known: {sorted(CE_AUGMENT)})")
        self.cfg, self.method = cfg, method

    def config(self) -> dict:
        return {"method": self.method, "baseline": asdict(self.cfg)}

    def dataset(self, rows: pd.DataFrame, model: nn.Module, cfg: TrainConfig) -> Dataset:  # noqa: ARG002
        return AugmentedRows(rows, {}, CE_AUGMENT[self.method], self.cfg.crop, self.cfg.seed, "label",
                             model.data_config)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target[:, 0])

    def finish(self, model: nn.Module, val_rows: pd.DataFrame, cfg: TrainConfig, device: torch.device,
               workers: int) -> dict:  # noqa: ARG002
        return {"temperature": 1.0}


def calibrate(detector: SelfConDetector, rows: pd.DataFrame, cfg: BaselineConfig, classes: list[str],
              device: torch.device | str = "cpu") -> list[dict]:
    """Stage 2 on the calibration rows: BN statistics, then the origin and model heads."""
    index = {c: k for k, c in enumerate(classes)}
    data = AugmentedRows(rows, index, calibration_augment, cfg.calibration_size, cfg.seed + 1, cfg.model_labels,
                         detector.data_config)
    loader = DataLoader(data, batch_size=cfg.calibration_batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    backbone = detector.net.backbone
    update_bn_statistics(backbone, (x.to(device) for x, *_ in loader))
    for p in backbone.parameters():
        p.requires_grad_(False)
    heads = nn.ModuleList([detector.origin_head, detector.model_head])
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg.calibration_lr, weight_decay=cfg.calibration_weight_decay,
                            betas=(0.9, 0.99))
    history = []
    for epoch in range(cfg.calibration_epochs):
        data.set_epoch(epoch)
        totals = {"origin_loss": [], "model_loss": []}
        for x, target, _, _ in loader:
            x, origin, model = x.to(device), target[:, 0].to(device), target[:, 1].to(device)
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


NETWORKS = {"selfcon": "imaginet_selfcon", "grag2021": "imaginet_ce", "corvi2022": "imaginet_ce"}  # registry names


def train_config(method: str, cfg: BaselineConfig, classes: list[str], num_workers: int | str = "auto",
                 resume_every_s: float = TrainConfig.resume_every_s) -> TrainConfig:
    """The loop's configuration of ``method``'s run: its registered network and arguments, scored
    at the calibration size (the test view), SGD with momentum, stage 1's schedule (warm-up of at
    most the run's epochs); ``resume_every_s``: the loop's (``train.resume_every_s``)."""
    kwargs: dict = {"backbone": cfg.backbone, "nodown": cfg.nodown}
    if method == "selfcon":
        kwargs |= {"n_models": len(classes), "sub_block": cfg.sub_block}
    return TrainConfig(model=NETWORKS[method], input_size=cfg.calibration_size, epochs=cfg.epochs,
                       batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, optimizer="sgd",
                       momentum=cfg.momentum, warmup_epochs=min(cfg.warmup_epochs, cfg.epochs), hflip=False,
                       num_workers=num_workers, seed=cfg.seed, model_kwargs=kwargs, resume_every_s=resume_every_s)


def train_method(method: str, train_rows: pd.DataFrame, calibration_rows: pd.DataFrame, cfg: BaselineConfig,
                 out_dir: Path, checkpoint_dir: Path, device: torch.device | str = "cpu",
                 num_workers: int | str = "auto", release: bool = True,
                 resume_every_s: float = TrainConfig.resume_every_s) -> dict:
    """``method``'s run in the one loop: ``out_dir/detector.pt``, resumable per epoch from
    ``checkpoint_dir`` (every ``resume_every_s``); what the loop returns (history, calibration with the model classes).
    ``release``: see :func:`~synthdet.training.loop.train_detector`."""
    if method not in NETWORKS:
        raise ValueError(f"imaginet.methods: unknown method {method!r} (known: {list(NETWORKS)})")
    classes = model_classes(pd.concat([train_rows, calibration_rows]), cfg.model_labels) if method == "selfcon" else []
    objective = SelfConObjective(cfg, classes) if method == "selfcon" else CrossEntropyObjective(cfg, method)
    config = train_config(method, cfg, classes, num_workers, resume_every_s)
    return train_detector(train_rows, calibration_rows, config, out_dir, checkpoint_dir, device, objective=objective,
                          release=release)
