"""GenImage's tables as pure functions of score tables (one row per image x condition x run).

Every cell carries accuracy, real/fake accuracy, AUC, AP and a 95% bootstrap CI of accuracy,
computed per seed; a table reports the mean and the standard deviation over seeds.
"""

from __future__ import annotations

import pandas as pd

from synthdet.metrics import metrics_table

METRICS = ["acc", "real_acc", "fake_acc", "auc", "ap", "acc_ci_low", "acc_ci_high"]


def per_seed(scores: pd.DataFrame, by: list[str], n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    return metrics_table(scores.dropna(subset=["score"]), by + ["seed"], n_bootstrap=n_bootstrap, seed=seed)


def over_seeds(cells: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean of every metric over seeds, plus ``acc_std`` and the number of seeds."""
    grouped = cells.groupby(by, sort=False)
    out = grouped[METRICS].mean()
    out["acc_std"] = grouped["acc"].std(ddof=1).fillna(0.0) if grouped.ngroups else []
    out["n_seeds"] = grouped["seed"].nunique()
    return out.reset_index()


def cross_generator(scores: pd.DataFrame, model: str = "resnet50", **kw) -> pd.DataFrame:
    """Task 1 matrix: rows = training subset, columns = testing subset (clean test images)."""
    s = scores[(scores["model"] == model) & (scores["condition"] == "clean")]
    return over_seeds(per_seed(s, ["train_subset", "subset"], **kw), ["train_subset", "subset"])


def detectors_on(scores: pd.DataFrame, train_subset: str, **kw) -> pd.DataFrame:
    """Task 1 per detector: every model trained on ``train_subset``, tested on every subset."""
    s = scores[(scores["train_subset"] == train_subset) & (scores["condition"] == "clean")]
    return over_seeds(per_seed(s, ["model", "subset"], **kw), ["model", "subset"])


def degradations(scores: pd.DataFrame, train_subset: str, **kw) -> pd.DataFrame:
    """Task 2: every model trained on ``train_subset``, tested on its own degraded test set."""
    s = scores[(scores["train_subset"] == train_subset) & (scores["subset"] == train_subset)]
    return over_seeds(per_seed(s, ["model", "condition"], **kw), ["model", "condition"])


def wide(table: pd.DataFrame, index: str, columns: str, value: str = "acc", order: list[str] | None = None,
         average: bool = True) -> pd.DataFrame:
    """Pivot to the paper's shape, with an average column like GenImage's."""
    out = table.pivot(index=index, columns=columns, values=value)
    if order:
        out = out[[c for c in order if c in out.columns]]
    if average:
        out["Avg"] = out.mean(axis=1)
    return out


def same_vs_cross(matrix_long: pd.DataFrame, value: str = "acc") -> tuple[float, float]:
    """Mean accuracy on the diagonal (train subset = test subset) and off it."""
    same = matrix_long["train_subset"] == matrix_long["subset"]
    return float(matrix_long.loc[same, value].mean()), float(matrix_long.loc[~same, value].mean())
