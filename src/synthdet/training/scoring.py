"""The one scoring call, and the temperature calibration fitted on its logits.

:func:`score` is how every image reaches a trained network outside training: predict (anyone's
files), evaluate and the GenImage tables (manifest rows), the audit's counterfactuals (rows with
a per-image change) and ImagiNet's two tracks (rows under a test condition). A fix to how images
are scored (view, batch, device, calibration, unreadable files) is made here once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from synthdet.data.dataset import ImageFiles, make_transform
from synthdet.metrics import expected_calibration_error, select_temperature, sigmoid
from synthdet.training.checkpoint import load_detector
from synthdet.training.config import TrainConfig
from synthdet.training.runtime import device_autocast, memory_layout, resolve_device, resolve_workers

MIN_CALIBRATION_IMAGES = 50  # below this a fitted temperature follows the noise (measured: a 4-image
# split gave T = 0.08 and tripled the ECE), so the raw probabilities are kept
CALIBRATION_FOLDS = 5
COLUMNS = ["path", "logit", "fake_probability", "status", "problem"]


def network_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A network's outputs by name: ``logit`` (N,) the fake logit, ``model_logits`` (N, K) the
    model-identification logits, ``features`` (N, D) its pooled features. A network that has more
    than one fake logit says so in ``score_outputs``; any other is a detector of the registry,
    whose forward gives one fake logit per image."""
    if hasattr(model, "score_outputs"):
        return model.score_outputs(x)
    return {"logit": model(x).reshape(len(x), -1)[:, 0]}


@torch.no_grad()
def score(detector: nn.Module | Path | str, images: pd.DataFrame | Sequence[Path | str], *,
          input_size: int | None = None, temperature: float | None = None, classes: Sequence[str] | None = None,
          image_transform: Callable[[Image.Image], Image.Image] | None = None, features: bool = False,
          batch_size: int = 128, device: str | torch.device = "auto", num_workers: int | str = 0,
          channels_last: bool | None = None, desc: str = "score") -> pd.DataFrame | tuple[pd.DataFrame, np.ndarray]:
    """One row per image of ``images`` (manifest rows with a ``path``, or paths), in their order:
    ``path``, ``status`` and ``problem`` (``ok`` and "", or why the file was not scored: its row
    is NaN); where the network gives a fake logit, ``logit`` and ``fake_probability`` =
    sigmoid(logit / temperature); where it identifies models, ``p_<class>`` per class (``classes``
    names them) and ``model_pred``; ``model``, the detector's name, where it was read from a file.
    With ``features`` also the pooled features, (rows, D) float32.

    ``detector``: a network, or a run's ``detector.pt`` (:func:`~synthdet.training.checkpoint.load_detector`),
    whose configuration gives the input size, the layout, the calibration temperature and the
    model classes unless they are given here. Each image is decoded, changed by
    ``image_transform`` (a degradation, a counterfactual, a test condition) and viewed as the
    network's ``data_config`` asks.
    """
    dev = resolve_device(device)
    if isinstance(detector, nn.Module):
        model, cfg = detector, {}
    else:
        model, cfg = load_detector(Path(detector), dev)
    input_size = int(input_size or cfg["input_size"])
    temperature = float(temperature if temperature is not None else cfg.get("temperature", 1.0))
    layout = memory_layout(cfg.get("channels_last", True) if channels_last is None else channels_last)
    classes = list(classes if classes is not None else cfg.get("model_classes") or [])
    paths = [str(p) for p in (images["path"] if isinstance(images, pd.DataFrame) else images)]

    data = ImageFiles(paths, make_transform(input_size, train=False, data=model.data_config), input_size,
                      image_transform)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=resolve_workers(num_workers, dev),
                        pin_memory=dev.type == "cuda")
    model.eval().to(dev, memory_format=layout)
    status, problem = ["ok"] * len(paths), [""] * len(paths)
    outputs: dict[str, np.ndarray] = {}
    for x, idx, st, why in tqdm(loader, desc=desc, leave=False, disable=len(loader) < 2):
        with device_autocast(dev):
            out = network_outputs(model, x.to(dev, non_blocking=True, memory_format=layout))
        ok = np.array([s == "ok" for s in st])
        for i, s, w in zip(idx.tolist(), st, why, strict=True):
            status[i], problem[i] = s, w
        for name, value in out.items():
            value = value.float().reshape(len(x), -1).cpu().numpy()
            if name not in outputs:
                outputs[name] = np.full((len(paths), value.shape[1]), np.nan, dtype=np.float32)
            outputs[name][idx.numpy()[ok]] = value[ok]

    table = pd.DataFrame({"path": paths})
    if "logit" in outputs or not outputs:
        logit = outputs["logit"][:, 0] if "logit" in outputs else np.full(len(paths), np.nan, dtype=np.float32)
        table["logit"] = logit.astype(np.float64)
        table["fake_probability"] = sigmoid(table["logit"].to_numpy() / temperature)
    table["status"], table["problem"] = status, problem
    if "model" in cfg:
        table["model"] = cfg["model"]
    if "model_logits" in outputs:
        p = torch.softmax(torch.from_numpy(outputs["model_logits"]), dim=1).numpy().astype(np.float64)
        names = classes or [str(k) for k in range(p.shape[1])]
        if len(names) != p.shape[1]:
            raise ValueError(f"{len(names)} model classes named for a model head of {p.shape[1]}")
        table["model_pred"] = [names[k] if np.isfinite(row).all() else "" for k, row in zip(p.argmax(axis=1), p,
                                                                                            strict=True)]
        for k, name in enumerate(names):
            table[f"p_{name}"] = p[:, k]
    if features:
        width = outputs["features"].shape[1] if "features" in outputs else 0
        return table, outputs.get("features", np.full((len(paths), width), np.nan, dtype=np.float32))
    return table


def calibrate(model: nn.Module, val_rows: pd.DataFrame, cfg: TrainConfig, device: torch.device,
              workers: int) -> dict:
    """Temperature scaling on the validation split, kept only when it lowers the cross-validated
    expected calibration error (:func:`~synthdet.metrics.select_temperature`); none on fewer than
    :data:`MIN_CALIBRATION_IMAGES` images or a split with one label."""
    logits = score(model, val_rows, input_size=cfg.input_size, batch_size=cfg.batch_size * 2, device=device,
                   num_workers=workers, channels_last=cfg.channels_last, desc="calibrate")["logit"].to_numpy()
    labels = val_rows["label"].to_numpy()
    keep = np.isfinite(logits)
    n = int(keep.sum())
    if n >= MIN_CALIBRATION_IMAGES and np.bincount(labels[keep].astype(int), minlength=2).min() >= CALIBRATION_FOLDS:
        chosen = select_temperature(logits[keep], labels[keep], CALIBRATION_FOLDS, seed=cfg.seed)
    else:
        ece = expected_calibration_error(labels[keep], sigmoid(logits[keep]))
        chosen = {"temperature": 1.0, "ece_before": ece, "ece_after": ece, "ece_scaled": None}
    return {**{k: None if v is None else round(float(v), 6) for k, v in chosen.items()}, "calibration_images": n}
