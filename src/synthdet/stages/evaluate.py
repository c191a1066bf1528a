"""Stage ``evaluate``: the trained detector on every test subset under every condition."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from synthdet.analysis import report
from synthdet.fsutil import write_json
from synthdet.metrics import metrics_table
from synthdet.stages import paths
from synthdet.stages.base import Out, Result, Stage, select
from synthdet.training import scoring
from synthdet.training.runtime import workers_param

ACC_HEATMAP, AUC_HEATMAP = f"{paths.PLOTS}/accuracy_heatmap.png", f"{paths.PLOTS}/auc_heatmap.png"
STAGE = Stage(
    name="evaluate", notebook="notebooks/05_evaluate.ipynb", module=__name__,
    params=("seed", "evaluate", "device"), deps=(paths.DETECTOR, paths.DEGRADE),
    outs=(Out(paths.EVALUATE),), metrics=(paths.metrics_file("evaluate"),), plots=(ACC_HEATMAP, AUC_HEATMAP),
    detectors=("${model}",),  # the train stage's network, rebuilt from its detector.pt
)
SUMMARY_METRICS = ("acc", "real_acc", "fake_acc", "auc", "ap", "acc_ci_low", "acc_ci_high")


@dataclass(frozen=True)
class Config:
    seed: int
    n_bootstrap: int
    batch_size: int
    num_workers: int | str
    device: str

    @classmethod
    def from_params(cls, params: dict) -> Config:
        p = select(params, STAGE.params)
        e = p["evaluate"]
        return cls(int(p["seed"]), int(e["n_bootstrap"]), int(e["batch_size"]), workers_param(e["num_workers"]),
                   str(p["device"]))


def run(params: dict) -> Result:
    cfg = Config.from_params(params)
    degraded = pd.read_parquet(paths.DEGRADED)
    scored = scoring.score(paths.DETECTOR, degraded, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                           device=cfg.device, desc="evaluate")
    table = degraded.reset_index(drop=True).assign(score=scored["fake_probability"], model=scored["model"])
    out = Path(paths.EVALUATE)
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "scores.parquet", index=False)
    metrics = metrics_table(table.dropna(subset=["score"]), ["condition", "subset"], n_bootstrap=cfg.n_bootstrap,
                            seed=cfg.seed)
    metrics.to_csv(out / "metrics.csv", index=False)
    conditions = list(pd.unique(degraded["condition"]))  # the degrade stage's order: clean, lowres, jpeg, blur
    summary: dict = {}
    for r in metrics.itertuples(index=False):
        summary.setdefault(r.condition, {})[r.subset] = {k: round(float(getattr(r, k)), 4) for k in SUMMARY_METRICS}
    for cond, g in metrics.groupby("condition"):
        summary[cond]["mean"] = {k: round(float(g[k].mean()), 4) for k in ("acc", "auc", "ap")}
    write_json(summary, Path(paths.metrics_file("evaluate")))
    acc = metrics.pivot(index="condition", columns="subset", values="acc").reindex(conditions)
    figures = {
        "accuracy": report.heatmap(metrics, "condition", "subset", "acc", "Accuracy: test subset x condition",
                                   Path(ACC_HEATMAP), row_order=conditions),
        "AUC": report.heatmap(metrics, "condition", "subset", "auc", "AUC: test subset x condition",
                              Path(AUC_HEATMAP), row_order=conditions),
    }
    return Result(tables={"metrics": metrics.round(3), "accuracy (mean over subsets last)":
                          acc.assign(mean=acc.mean(axis=1)).round(3)}, figures=figures, metrics=summary)
