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
    if "n" in cells:
        out["n"] = grouped["n"].mean()  # test images per cell
    return out.reset_index()


def full_runs(scores: pd.DataFrame) -> pd.DataFrame:
    """Runs trained on the whole training subset (tables 1-3 and 6), not the class ablations."""
    return scores[scores["class_budget"] == "full"] if "class_budget" in scores else scores


def cross_generator(scores: pd.DataFrame, model: str = "resnet50", **kw) -> pd.DataFrame:
    """Task 1 matrix: rows = training subset, columns = testing subset (clean test images)."""
    s = full_runs(scores)
    s = s[(s["model"] == model) & (s["condition"] == "clean")]
    return over_seeds(per_seed(s, ["train_subset", "subset"], **kw), ["train_subset", "subset"])


def detectors_on(scores: pd.DataFrame, train_subset: str, **kw) -> pd.DataFrame:
    """Task 1 per detector: every model trained on ``train_subset``, tested on every subset."""
    s = full_runs(scores)
    s = s[(s["train_subset"] == train_subset) & (s["condition"] == "clean")]
    return over_seeds(per_seed(s, ["model", "subset"], **kw), ["model", "subset"])


def degradations(scores: pd.DataFrame, train_subset: str, **kw) -> pd.DataFrame:
    """Task 2: every model trained on ``train_subset``, tested on its own degraded test set (on
    every subset's for ``train_subset="all"``)."""
    s = full_runs(scores)
    s = s[s["train_subset"] == train_subset]
    if train_subset != "all":
        s = s[s["subset"] == train_subset]
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


def _clean_acc(scores: pd.DataFrame, by: list[str], **kw) -> pd.DataFrame:
    return per_seed(scores[scores["condition"] == "clean"], by, **kw)


def training_size(scores: pd.DataFrame, train_subset: str, generator_subsets: list[str], model: str = "resnet50",
                  **kw) -> pd.DataFrame:
    """GenImage's training-set-size ablation: per class budget (and the full subset), accuracy on
    ``train_subset``'s test set (identical generator) and the mean over the other generator subsets
    (cross generator). Sizes count images per label (as many reals as fakes)."""
    s = scores[(scores["model"] == model) & (scores["train_subset"] == train_subset)
               & scores["subset"].isin(generator_subsets)]
    keys = ["class_budget", "train_classes", "train_images"]
    cells = _clean_acc(s, keys + ["subset"], **kw)
    same = cells[cells["subset"] == train_subset].drop(columns="subset")
    cross = (cells[cells["subset"] != train_subset].groupby(keys + ["seed"], as_index=False)[METRICS].mean())
    out = over_seeds(same, keys).merge(over_seeds(cross, keys), on=keys, suffixes=("_identical", "_cross"))
    out["images_per_class"] = (out["train_images"] / out["train_classes"]).round(1)
    return out.sort_values(["train_images", "train_classes"]).reset_index(drop=True)


def class_subsets(scores: pd.DataFrame, train_subset: str, model: str = "resnet50", **kw) -> pd.DataFrame:
    """Train on N classes, test on all classes of ``train_subset``: accuracy overall, on the
    classes seen in training and on the unseen ones (GenImage reports the overall number)."""
    s = scores[(scores["model"] == model) & (scores["train_subset"] == train_subset)
               & (scores["subset"] == train_subset)]
    keys = ["class_budget", "train_classes", "train_images"]
    seen = s.assign(classes=s["seen_class"].map({True: "seen", False: "unseen"}))
    parts = [_clean_acc(s, keys, **kw).assign(classes="all"), _clean_acc(seen, keys + ["classes"], **kw)]
    out = over_seeds(pd.concat(parts, ignore_index=True), keys + ["classes"])
    return out.sort_values(["train_images", "train_classes", "classes"]).reset_index(drop=True)


def content_generalisation(scores: pd.DataFrame, train_subset: str, content_subsets: list[str], **kw) -> pd.DataFrame:
    """GenImage's face / art test: detectors trained on ``train_subset`` (one content type), tested
    on test-only subsets of other content from the same generator, and on their own test set."""
    s = full_runs(scores)
    s = s[(s["train_subset"] == train_subset) & s["subset"].isin([train_subset, *content_subsets])]
    return over_seeds(_clean_acc(s, ["model", "subset"], **kw), ["model", "subset"])
