"""A trained detector on anyone's images: files and folders in, one row per file out.

``synthdet predict PATH ... --detector artifacts/train/detector.pt`` and, in a notebook,
:func:`predict_files`. The images go through the pipeline's one scoring call
(:func:`synthdet.training.scoring.score`), so a file gets the probability evaluate gives it. The
probability is calibrated (the temperature fitted on the validation split at training time,
stored in ``detector.pt``); an unreadable file is a row with its reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from synthdet.training import scoring

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


def predict_files(paths: Iterable[Path | str], detector: Path | str, device: str = "auto", batch_size: int = 64,
                  threshold: float = 0.5, num_workers: int | str = "auto") -> pd.DataFrame:
    """One row per file: calibrated fake probability, ``fake``/``real`` at ``threshold``, and a
    status (``ok`` or why the file was not scored, e.g. ``corrupt``, ``not_image``)."""
    files = list_files(paths)
    table = scoring.score(Path(detector), files, batch_size=batch_size, device=device, num_workers=num_workers,
                          desc="predict")
    probs = table["fake_probability"].to_numpy()
    table["prediction"] = np.where(np.isnan(probs), "", np.where(probs >= threshold, "fake", "real"))
    return table[COLUMNS]
