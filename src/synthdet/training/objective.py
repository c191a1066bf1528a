"""What the training loop minimises, on which batches, and how a run finishes: the loop's one
extension point (``train_detector(..., objective=...)``).

:class:`Objective` itself is binary cross-entropy on one fake logit, the objective of every
detector of the registry: a validation AUC per epoch picks the best epoch, and a temperature is
fitted on the validation split at the end. A paper package brings its own objective without the
loop importing it (ImagiNet's SelfCon pre-training with its calibration stage, and its
cross-entropy comparison rows: :mod:`synthdet.imaginet.baseline`); whatever the objective, the
run gets the loop's optimiser, schedule, AMP, DDP, gradient accumulation, per-epoch resume and
checkpoint format.
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from synthdet.training import scoring
from synthdet.training.config import TrainConfig

BCE = "binary_cross_entropy"


class Objective:
    """Binary cross-entropy on one fake logit per image (the registry's detectors)."""

    name = BCE
    validates = True  # a validation AUC per epoch picks the epoch kept; otherwise the last one

    def config(self) -> dict:
        """What the objective adds to the run's configuration (its fingerprint and ``detector.pt``)."""
        return {}

    def trained(self, model: nn.Module) -> nn.Module:
        """The module the optimiser, DDP and the loss's forward see (a part of ``model`` or all of it)."""
        return model

    def dataset(self, rows: pd.DataFrame, model: nn.Module, cfg: TrainConfig) -> Dataset | None:  # noqa: ARG002
        """Training items ``(x, target, index, skipped)``; None: the loop's ManifestDataset (the
        detector's view, its ``train_augment``, the pixel cache and the debiased protocol)."""
        return None

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss from the trained module's output."""
        return F.binary_cross_entropy_with_logits(output.reshape(-1), target.float())

    def finish(self, model: nn.Module, val_rows: pd.DataFrame, cfg: TrainConfig, device: torch.device,
               workers: int) -> dict:
        """The stage after the last epoch, on the kept weights; what it returns goes into
        ``detector.pt``: here the temperature fitted on the validation split (none without one)."""
        if len(val_rows):
            return scoring.calibrate(model, val_rows, cfg, device, workers)
        return {"temperature": 1.0, "ece_before": None, "ece_after": None, "ece_scaled": None,
                "calibration_images": 0}
