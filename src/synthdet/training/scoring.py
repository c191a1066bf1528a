"""Scoring a network over manifest rows, and the temperature calibration fitted on those scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from synthdet.data.dataset import ManifestDataset, make_transform
from synthdet.metrics import expected_calibration_error, select_temperature, sigmoid
from synthdet.training.checkpoint import load_detector
from synthdet.training.config import TrainConfig
from synthdet.training.runtime import device_autocast, memory_layout, resolve_device, resolve_workers

MIN_CALIBRATION_IMAGES = 50  # below this a fitted temperature follows the noise (measured: a 4-image
# split gave T = 0.08 and tripled the ECE), so the raw probabilities are kept
CALIBRATION_FOLDS = 5


@torch.no_grad()
def embed(model: nn.Module, rows: pd.DataFrame, input_size: int, batch_size: int = 128,
          device: str | torch.device = "auto", num_workers: int | str = 0, image_transform=None,  # noqa: ANN001
          channels_last: bool = True, desc: str = "predict") -> np.ndarray:
    """``model``'s outputs for ``rows`` as float32 rows ``(len(rows), width)``, in row order; NaN
    where a file cannot be decoded. Each image is viewed as ``model.data_config`` asks. A
    detector's outputs are its logits (width 1); a frozen backbone's are its pooled features."""
    device = resolve_device(device)
    ds = ManifestDataset(rows, make_transform(input_size, train=False, data=model.data_config),
                         image_transform=image_transform)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=resolve_workers(num_workers, device),
                        pin_memory=device.type == "cuda")
    layout = memory_layout(channels_last)
    model.eval().to(device, memory_format=layout)
    out: np.ndarray | None = None
    for x, _, idx, _ in tqdm(loader, desc=desc, leave=False):
        with device_autocast(device):
            y = model(x.to(device, non_blocking=True, memory_format=layout)).float()
        y = y.reshape(len(x), -1).cpu().numpy()
        if out is None:
            out = np.full((len(rows), y.shape[1]), np.nan, dtype=np.float32)
        out[idx.numpy()] = y  # a replaced unreadable row's index is its stand-in's: it stays NaN
    return out if out is not None else np.full((len(rows), 1), np.nan, dtype=np.float32)


def predict(model: nn.Module, rows: pd.DataFrame, input_size: int, batch_size: int = 128,
            device: str | torch.device = "auto", num_workers: int | str = 0, image_transform=None,  # noqa: ANN001
            channels_last: bool = True, logits: bool = False) -> np.ndarray:
    """Fake-probabilities (``logits``: the raw logits) for ``rows``, in row order; NaN where a file
    cannot be decoded (:func:`embed` of a one-logit detector)."""
    out = embed(model, rows, input_size, batch_size, device, num_workers, image_transform, channels_last)[:, 0]
    return (out if logits else torch.sigmoid(torch.from_numpy(out)).numpy()).astype(np.float64)


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


def score_table(model_path: Path, table: pd.DataFrame, batch_size: int = 128, num_workers: int | str = 0,
                device: str | torch.device = "auto") -> pd.DataFrame:
    """``table`` (rows with a ``path``) plus the saved detector's fake-probability and name."""
    model, cfg = load_detector(model_path, device)
    table = table.reset_index(drop=True)
    table["score"] = predict(model, table, cfg["input_size"], batch_size, device, num_workers,
                             channels_last=cfg.get("channels_last", True))
    table["model"] = cfg["model"]
    return table
