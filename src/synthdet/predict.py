"""A trained detector on anyone's images: files and folders in, one row per file out.

``synthdet predict PATH ... --detector artifacts/train/detector.pt`` and, in a notebook,
:func:`predict_files`. The probability is calibrated (the temperature fitted on the validation
split at training time, stored in ``detector.pt``); an unreadable file is a row with its reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from synthdet.data.dataset import DataConfig, make_transform
from synthdet.data.imageio import STATUS_OK, ImageDecodeError, load_rgb
from synthdet.training.checkpoint import load_detector
from synthdet.training.runtime import device_autocast, memory_layout, resolve_device, resolve_workers

COLUMNS = ["path", "fake_probability", "prediction", "status", "problem"]


def list_files(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given, and every file under each folder (recursively, sorted; hidden ones left out)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


class _Files(Dataset):
    """path -> (tensor, index, problem): a file that cannot be decoded gives a blank tensor and
    its reason, and the batch goes on."""

    def __init__(self, files: list[Path], input_size: int, data: DataConfig) -> None:
        self.files, self.size = files, input_size
        self.transform = make_transform(input_size, train=False, data=data)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str, str]:
        try:
            return self.transform(load_rgb(self.files[i])), i, STATUS_OK, ""
        except ImageDecodeError as exc:
            return torch.zeros(3, self.size, self.size), i, exc.status, exc.problem


@torch.no_grad()
def predict_files(paths: Iterable[Path | str], detector: Path | str, device: str = "auto", batch_size: int = 64,
                  threshold: float = 0.5, num_workers: int | str = "auto") -> pd.DataFrame:
    """One row per file: calibrated fake probability, ``fake``/``real`` at ``threshold``, and a
    status (``ok`` or why the file was not scored, e.g. ``corrupt``, ``not_image``)."""
    files = list_files(paths)
    dev = resolve_device(device)
    model, cfg = load_detector(Path(detector), dev)
    layout = memory_layout(cfg.get("channels_last", True))
    model.to(memory_format=layout)
    loader = DataLoader(_Files(files, cfg["input_size"], model.data_config), batch_size=batch_size, shuffle=False,
                        num_workers=resolve_workers(num_workers, dev), pin_memory=dev.type == "cuda")
    probs = np.full(len(files), np.nan)
    status, problem = [STATUS_OK] * len(files), [""] * len(files)
    for x, idx, st, why in tqdm(loader, desc="predict", unit="batch"):
        with device_autocast(dev):
            logits = model(x.to(dev, non_blocking=True, memory_format=layout)).float()
        p = torch.sigmoid(logits / cfg["temperature"]).cpu().numpy()
        for j, i in enumerate(idx.tolist()):
            status[i], problem[i] = st[j], why[j]
            if st[j] == STATUS_OK:
                probs[i] = p[j]
    prediction = np.where(np.isnan(probs), "", np.where(probs >= threshold, "fake", "real"))
    return pd.DataFrame({"path": [str(f) for f in files], "fake_probability": probs, "prediction": prediction,
                         "status": status, "problem": problem}, columns=COLUMNS)
