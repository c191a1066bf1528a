"""Stage ``train``: the detector named by ``model`` on ``train_subset``.

Also the entry point of ``torchrun --nproc_per_node=N -m synthdet.cli stage train``: every rank
trains, rank 0 writes the outputs, the same files as the notebook.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from synthdet.analysis import report
from synthdet.fsutil import write_json
from synthdet.stages import paths
from synthdet.stages.base import Out, Result, Stage, select
from synthdet.training.config import checked_train_settings
from synthdet.training.loop import train_on_manifest
from synthdet.training.runtime import is_main_process

HISTORY = f"{paths.PLOTS}/train_history.csv"
STAGE = Stage(
    name="train", notebook="notebooks/03_train.ipynb", module=__name__,
    params=("seed", "model", "model_kwargs", "train_subset", "train", "device", "data.debias"),
    deps=(paths.SPLITS,),
    outs=(Out(paths.DETECTOR), Out(paths.TRAIN_CHECKPOINTS, cache=False, persist=True)),
    metrics=(paths.metrics_file("train"),), plots=(HISTORY,), detectors=("${model}",),
)


@dataclass(frozen=True)
class Config:
    seed: int
    model: str
    model_kwargs: dict
    train_subset: str
    train: dict
    device: str
    debias: dict

    @classmethod
    def from_params(cls, params: dict) -> Config:
        p = select(params, STAGE.params)
        return cls(int(p["seed"]), str(p["model"]), dict(p["model_kwargs"] or {}), str(p["train_subset"]),
                   checked_train_settings(p["train"]), str(p["device"]), dict(p["data"]["debias"] or {}))


def run(params: dict) -> Result:
    cfg = Config.from_params(params)
    result = train_on_manifest(Path(paths.SPLITS), Path(paths.TRAIN), Path(paths.TRAIN_CHECKPOINTS), cfg.model,
                               cfg.train_subset, cfg.train, cfg.seed, cfg.model_kwargs, device=cfg.device,
                               debias=cfg.debias)
    history = pd.DataFrame(result["history"])
    if not is_main_process():
        return Result()
    Path(HISTORY).parent.mkdir(parents=True, exist_ok=True)
    history.to_csv(HISTORY, index=False)
    last = history.iloc[-1].to_dict() if len(history) else {}
    metrics = {"model": cfg.model, "train_subset": cfg.train_subset, "seconds": result["seconds"],
               "unreadable_images": len(result["failures"]), "best_epoch": result["best_epoch"],
               "best_val_auc": result["best_val_auc"], "train_images_per_label": result["train_images"],
               "debiased": bool(cfg.debias.get("enabled")), **result["calibration"],
               **{k: float(v) for k, v in last.items()}}
    write_json(metrics, Path(paths.metrics_file("train")))
    failures = pd.DataFrame(sorted(result["failures"].items()), columns=["path", "problem"])
    return Result(tables={"history": history, "unreadable images (skipped)": failures},
                  figures={"training curves": report.training_curves(history)}, metrics=metrics)
