"""GenImage's tables as pure functions of score tables (one row per image x condition x run).

Every cell carries accuracy, real/fake accuracy, AUC, AP and a 95% bootstrap CI of accuracy,
computed per seed; a table reports the mean and the standard deviation over seeds.
"""

from __future__ import annotations

import pandas as pd

from synthdet.analysis.report import in_order
from synthdet.analysis.sharpness import FAKES_SHARPENED, REALS_BLURRED
from synthdet.metrics import metrics_table

SHARPNESS_COUNTERFACTUALS = {REALS_BLURRED: 0, FAKES_SHARPENED: 1}  # condition -> the label it changes
AS_SCORED = "as_is"
METRICS = ["acc", "real_acc", "fake_acc", "auc", "ap", "acc_ci_low", "acc_ci_high"]


def per_seed(scores: pd.DataFrame, by: list[str], n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    return metrics_table(scores.dropna(subset=["score"]), by + ["seed"], n_bootstrap=n_bootstrap, seed=seed)


def over_seeds(cells: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean of every metric over seeds, the number of seeds and, when some cell has several
    seeds, ``acc_std`` (absent with one seed: a spread of one number is not 0)."""
    grouped = cells.groupby(by, sort=False)
    out = grouped[METRICS].mean()
    out["n_seeds"] = grouped["seed"].nunique()
    if len(out) and out["n_seeds"].max() > 1:
        out["acc_std"] = grouped["acc"].std(ddof=1)
    if "n" in cells:
        out["n"] = grouped["n"].mean()  # test images per cell
    return out.reset_index()


def full_runs(scores: pd.DataFrame) -> pd.DataFrame:
    """Runs trained on the whole training subset (tables 1-3 and 6), not the class ablations; a
    (model, training subset, seed) trained by two families counts once (``xgen`` first)."""
    s = scores[scores["class_budget"] == "full"] if "class_budget" in scores else scores
    if "family" not in s:
        return s
    first = (s[["family", "model", "train_subset", "seed"]].drop_duplicates()
             .assign(rank=lambda t: t["family"].map({"xgen": 0, "zoo": 1}).fillna(2))
             .sort_values("rank").drop_duplicates(["model", "train_subset", "seed"]))
    return s.merge(first[["family", "model", "train_subset", "seed"]], on=["family", "model", "train_subset", "seed"])


def cross_generator(scores: pd.DataFrame, model: str = "resnet50", condition: str = "clean", **kw) -> pd.DataFrame:
    """Task 1 matrix: rows = training subset, columns = testing subset (clean test images, or those
    of another ``condition``: the sharpness-matched variant's)."""
    s = full_runs(scores)
    s = s[(s["model"] == model) & (s["condition"] == condition)]
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
    s = s[(s["train_subset"] == train_subset) & ~s["condition"].isin(SHARPNESS_COUNTERFACTUALS)]
    if train_subset != "all":
        s = s[s["subset"] == train_subset]
    return over_seeds(per_seed(s, ["model", "condition"], **kw), ["model", "condition"])


def sharpness_counterfactual(scores: pd.DataFrame, **kw) -> pd.DataFrame:
    """Each detector's reliance on sharpness: per (model, training subset) and test subset, accuracy
    and AUC on the clean test images (``as_is``), with the reals replaced by their blurred copies
    (``reals_blurred``) and with the fakes replaced by their sharpened copies (``fakes_sharpened``),
    and the changes. An image the counterfactual leaves as it is (a strength of 0) keeps its clean
    score. Only runs that scored some changed image are in it."""
    s = full_runs(scores)
    run = ["family", "model", "train_subset", "seed"]
    changed = s[s["condition"].isin(SHARPNESS_COUNTERFACTUALS)]
    clean = s[s["condition"] == "clean"].merge(changed[run].drop_duplicates(), on=run)
    by = ["model", "train_subset", "subset", "counterfactual"]
    if clean.empty:  # no run scored it, or no subset needed a change
        return pd.DataFrame(columns=[*by, *METRICS, "n_seeds", "acc_change", "auc_change"])
    parts = [clean.assign(counterfactual=AS_SCORED)]
    for condition in SHARPNESS_COUNTERFACTUALS:
        swapped = changed.loc[changed["condition"] == condition, [*run, "source_path", "score"]]
        cf = clean.merge(swapped, on=[*run, "source_path"], how="left", suffixes=("", "_changed"), indicator=True)
        cf["score"] = cf["score_changed"].where(cf["_merge"] == "both", cf["score"])
        parts.append(cf.drop(columns=["score_changed", "_merge"]).assign(counterfactual=condition))
    cells = over_seeds(per_seed(pd.concat(parts, ignore_index=True), by, **kw), by)
    base = cells[cells["counterfactual"] == AS_SCORED].set_index(by[:3])
    for metric in ("acc", "auc"):
        cells[f"{metric}_change"] = cells[metric].to_numpy() - base[metric].reindex(
            pd.MultiIndex.from_frame(cells[by[:3]])).to_numpy()
    return cells


def sharpness_survival(cells: pd.DataFrame, main_model: str, train_subset: str) -> dict[str, dict[str, float]]:
    """How much cross-generator accuracy survives the sharpness counterfactual (cells of
    :func:`sharpness_counterfactual`): mean accuracy as scored and under each counterfactual, off
    table 1's diagonal for ``main_model``, and over the other test subsets for every model trained on
    ``train_subset``."""
    out = {}
    matrix = cells[(cells["model"] == main_model) & (cells["train_subset"] != cells["subset"])]
    if matrix["train_subset"].nunique() > 1:
        out[f"{main_model}: table 1 off the diagonal"] = matrix.groupby("counterfactual", sort=False)["acc"].mean()
    others = cells[(cells["train_subset"] == train_subset) & (cells["subset"] != train_subset)]
    for model, g in others.groupby("model", sort=False):
        out[f"{model}: trained on {train_subset}, other subsets"] = (
            g.groupby("counterfactual", sort=False)["acc"].mean())
    return {k: {c: float(v) for c, v in means.items()} for k, means in out.items()}


def matched_survival(stored: pd.DataFrame | None, variant: pd.DataFrame, to_stored: pd.DataFrame
                     ) -> dict[str, dict[str, float]]:
    """Table 1's same- and cross-generator accuracy (:func:`same_vs_cross`) trained and tested on the
    benchmark as stored (``stored``: the xgen matrix, when the model has one), trained and tested on
    the sharpness-matched variant (``variant``), and trained on the variant, tested as stored."""
    out = {"variant": same_vs_cross(variant), "variant_to_stored": same_vs_cross(to_stored)}
    if stored is not None and len(stored):
        out = {"stored": same_vs_cross(stored), **out}
    return {k: {"same_generator_acc": same, "cross_generator_acc": cross} for k, (same, cross) in out.items()}


def wide(table: pd.DataFrame, index: str, columns: str, value: str = "acc", order: list[str] | None = None,
         average: bool = True) -> pd.DataFrame:
    """Pivot to the paper's shape, with an average column like GenImage's."""
    out = table.pivot(index=index, columns=columns, values=value)
    out = out[in_order(out.columns, order)]  # the given order first, then any other column (never dropped)
    if average:
        out["Avg"] = out.mean(axis=1)
    return out


def same_vs_cross(matrix_long: pd.DataFrame, value: str = "acc") -> tuple[float, float]:
    """Mean accuracy on the diagonal (train subset = test subset) and off it."""
    same = matrix_long["train_subset"] == matrix_long["subset"]
    return float(matrix_long.loc[same, value].mean()), float(matrix_long.loc[~same, value].mean())


def transfer(scores: pd.DataFrame, train_subset: str, generator_subsets: list[str], **kw) -> pd.DataFrame:
    """Per detector, how far it carries beyond its training generator (accuracy at the 0.5
    threshold and AUC both: a detector can rank the fakes of other generators well and still sit on
    the wrong threshold): on ``train_subset``'s own test set, the mean over the other generator
    subsets when trained on ``train_subset``, and, for a detector trained on every subset, the
    mean of the whole matrix off its diagonal."""
    s = full_runs(scores)
    s = s[(s["condition"] == "clean") & s["subset"].isin(generator_subsets) & s["train_subset"].isin(generator_subsets)]
    cells = over_seeds(per_seed(s, ["model", "train_subset", "subset"], **kw), ["model", "train_subset", "subset"])
    rows = []
    for model, c in cells.groupby("model", sort=False):
        own = c[(c["train_subset"] == train_subset) & (c["subset"] == train_subset)]
        others = c[(c["train_subset"] == train_subset) & (c["subset"] != train_subset)]
        off = c[c["train_subset"] != c["subset"]]
        complete = set(c["train_subset"]) >= set(generator_subsets)
        rows.append({"model": model, "own_acc": own["acc"].mean(), "own_auc": own["auc"].mean(),
                     "others_acc": others["acc"].mean(), "others_auc": others["auc"].mean(),
                     "off_diagonal_acc": off["acc"].mean() if complete else float("nan"),
                     "off_diagonal_auc": off["auc"].mean() if complete else float("nan"),
                     "trained_on": int(c["train_subset"].nunique())})
    return pd.DataFrame(rows).sort_values("others_acc", ascending=False).reset_index(drop=True)


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


def different_generators(scores: pd.DataFrame, generator_subsets: list[str], **kw) -> pd.DataFrame:
    """GenImage's "different generators are used for training and testing" table: for every
    detector trained on every generator subset, accuracy per testing subset averaged over the
    training subsets (the diagonal included, as in the paper). Only models trained on all of
    ``generator_subsets`` appear."""
    s = full_runs(scores)
    s = s[(s["condition"] == "clean") & s["train_subset"].isin(generator_subsets)
          & s["subset"].isin(generator_subsets)]
    complete = s.groupby("model")["train_subset"].nunique()
    s = s[s["model"].isin(complete[complete == len(set(generator_subsets))].index)]
    cells = per_seed(s, ["model", "train_subset", "subset"], **kw)
    averaged = cells.groupby(["model", "subset", "seed"], as_index=False)[METRICS].mean()
    return over_seeds(averaged, ["model", "subset"])


def conclusions(xgen: pd.DataFrame, paper: dict[str, pd.DataFrame], det: pd.DataFrame, wide_deg: pd.DataFrame,
                size: pd.DataFrame, subs: pd.DataFrame, content: pd.DataFrame, diff: pd.DataFrame,
                order: list[str]) -> list[str]:
    """Where this benchmark agrees with GenImage and where not, as sentences computed from the tables."""
    lines = []
    paper_long = paper["task1_resnet50_matrix"].drop(columns="Avg").stack().rename("acc").reset_index()
    paper_long.columns = ["train_subset", "subset", "acc"]
    same, cross = same_vs_cross(xgen)
    paper_same, paper_cross = same_vs_cross(paper_long.assign(acc=paper_long["acc"] / 100))
    if cross == cross:  # NaN when only one training subset ran
        gap = same - cross
        lines.append(f"Same-generator accuracy {same:.3f} vs cross-generator {cross:.3f} (gap {gap:+.3f}); "
                     f"GenImage: {paper_same:.3f} vs {paper_cross:.3f}.")
        lines.append("Agrees with GenImage: detectors do not transfer across generators." if gap > 0.1
                     else "Does NOT show GenImage's same >> cross gap at this budget.")
    best = wide(det, "model", "subset", order=order)["Avg"].sort_values(ascending=False)
    paper_best = paper["task1_train_sdv14"]["Avg"].sort_values(ascending=False)
    lines.append(f"Best average over test subsets (trained on one subset): {best.index[0]} ({best.iloc[0]:.3f}); "
                 f"GenImage: {paper_best.index[0]} ({paper_best.iloc[0]:.1f}%).")
    if len(diff):
        avg = wide(diff, "model", "subset", order=order)["Avg"].sort_values(ascending=False)
        paper_avg = paper["task1_cross_generator_avg"]["Avg"].sort_values(ascending=False)
        if len(avg) > 1:
            lines.append(f"Different generators (averaged over training subsets): best {avg.index[0]} "
                         f"({avg.iloc[0]:.3f}), worst {avg.index[-1]} ({avg.iloc[-1]:.3f}); GenImage: best "
                         f"{paper_avg.index[0]} ({paper_avg.iloc[0]:.1f}%), worst {paper_avg.index[-1]} "
                         f"({paper_avg.iloc[-1]:.1f}%).")
        else:
            lines.append(f"Different generators (averaged over training subsets): {avg.index[0]} {avg.iloc[0]:.3f}; "
                         f"GenImage's detectors {paper_avg.min():.1f}-{paper_avg.max():.1f}% (more models: "
                         "tables.xgen_models, make paper).")
    if len(wide_deg.columns) > 1:
        hard = wide_deg.drop(columns="Avg").mean().sort_values()
        paper_hard = paper["task2_degraded"].drop(columns="Avg").mean().sort_values()
        lines.append(f"Hardest degradation on average: {hard.index[0]} ({hard.iloc[0]:.3f}); "
                     f"GenImage: {paper_hard.index[0]} ({paper_hard.iloc[0]:.1f}%).")
    ablations = size[size.class_budget != "full"] if len(size) else size
    if len(ablations) > 1:
        rho = ablations[["train_images", "acc_identical"]].corr(method="spearman").iloc[0, 1]
        lines.append(f"Training-set size: Spearman rho(images, identical-generator acc) = {rho:+.2f} over "
                     f"{len(ablations)} budgets; GenImage's five rows: more images -> higher accuracy.")
        pairs = ablations.sort_values("train_classes").groupby("train_images")["acc_identical"].agg(
            ["first", "last", "size"])
        pairs = pairs[pairs["size"] > 1]
        lines.append(f"At equal size, more classes beat fewer in {int((pairs['last'] > pairs['first']).sum())} of "
                     f"{len(pairs)} pairs (GenImage: 100x16 > 10x160, 1000x16 < 100x160).")
    seen_gap = subs.pivot_table(index="class_budget", columns="classes", values="acc") if len(subs) else pd.DataFrame()
    if {"seen", "unseen"} <= set(seen_gap.columns):
        both = seen_gap.dropna(subset=["seen", "unseen"])  # budgets that leave some classes unseen
        lines.append(f"Class subsets: accuracy on classes seen in training {both['seen'].mean():.3f} vs unseen "
                     f"{both['unseen'].mean():.3f} (mean over the {len(both)} budgets with unseen classes).")
    if len(content):
        cont = wide(content, "model", "subset", average=False).mean()
        paper_content = paper["content"]["acc"]
        lines.append("Content, mean over detectors: " + ", ".join(f"{k} {v:.3f}" for k, v in cont.items())
                     + "; GenImage (ResNet-50 on SD V1.4): "
                     + ", ".join(f"{k} {v:.1f}%" for k, v in paper_content.items()) + ".")
    return lines
