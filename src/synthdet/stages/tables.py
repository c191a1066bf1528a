"""Stage ``tables``: GenImage's tables from the table runs' score files, beside the paper's.

Every number is a function of ``artifacts/runs/*/*/scores.parquet``; the paper's numbers come from
``paper/genimage_*.csv``. Cells are accuracy unless a column says otherwise; with several seeds in
``tables.seeds`` cells are means and ``acc_std`` their spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from synthdet.analysis import report
from synthdet.fsutil import write_json
from synthdet.genimage import tables as T
from synthdet.stages import paths
from synthdet.stages.base import Out, Result, Stage, select
from synthdet.stages.paths import EACH, MATCHED_CONDITION, probe_model, run_name
from synthdet.transforms.degrade import natural_order

PLOTS = f"{paths.PLOTS}/tables"
STAGE = Stage(
    name="tables", notebook="notebooks/07_tables.ipynb", module=__name__, params=("seed", "tables", "probe.backbones"),
    deps=(paths.RUNS, paths.PAPER), outs=(Out(paths.TABLES),), metrics=(paths.metrics_file("tables"),),
    plots=(PLOTS,),
)
PAPER_TABLES = ("task1_resnet50_matrix", "task1_train_sdv14", "task1_cross_generator_avg", "task2_degraded",
                "training_size", "class_subsets", "content")


@dataclass(frozen=True)
class Config:
    seed: int
    seeds: tuple[int, ...]
    subsets: tuple[str, ...]
    detector_subset: str  # tables.detector_subset: what tables 2-6 train on
    xgen_models: tuple[str, ...]
    matched_models: tuple[str, ...]  # table 1 on the sharpness-matched variant (the `matched` runs)
    detectors: tuple[str, ...]
    ablation_model: str
    class_budgets: tuple[str, ...]
    content_subsets: tuple[str, ...]
    n_bootstrap: int
    probe_backbones: tuple[str, ...]

    @classmethod
    def from_params(cls, params: dict) -> Config:
        p = select(params, STAGE.params)
        t = p["tables"]
        return cls(int(p["seed"]), tuple(t["seeds"]), tuple(t["subsets"]), t["detector_subset"],
                   tuple(t["xgen_models"]), tuple(t["matched_models"] or ()), tuple(t["detectors"]),
                   t["ablation_model"],
                   tuple(map(str, t["class_budgets"])), tuple(t["content_subsets"]), int(t["n_bootstrap"]),
                   tuple(p["probe"]["backbones"] or ()))

    def runs(self) -> list[str]:
        """The runs this configuration asks for (only those are read: old folders may linger)."""
        names = [run_name("xgen", m, s, k) for m in self.xgen_models for s in self.subsets for k in self.seeds]
        names += [run_name("zoo", m, self.detector_subset, k) for m in self.detectors for k in self.seeds]
        names += [run_name("ablate", self.ablation_model, self.detector_subset, k, b)
                  for b in self.class_budgets for k in self.seeds]
        names += [run_name("probe", b, EACH, self.seed) for b in self.probe_backbones]  # no random start: one seed
        return names

    def matched_runs(self) -> list[str]:
        """The runs on the sharpness-matched variant (read apart: their clean scores are not table 1's)."""
        return [run_name("matched", m, s, k) for m in self.matched_models for s in self.subsets for k in self.seeds]


def read_scores(cfg: Config, root: Path = Path(paths.RUNS), runs: list[str] | None = None) -> pd.DataFrame:
    """The score files of ``runs`` (default: every run of the GenImage tables but the matched ones)."""
    runs = cfg.runs() if runs is None else runs
    missing = [r for r in runs if not (root / r / "scores.parquet").is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: {len(missing)} runs have no scores.parquet, e.g. {missing[:3]}; "
                                "run `dvc repro` (the xgen/zoo/ablate/matched stages) first")
    return pd.concat([pd.read_parquet(root / r / "scores.parquet") for r in runs], ignore_index=True)


def read_paper(folder: Path = Path(paths.PAPER)) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(folder / f"genimage_{name}.csv", comment="#", index_col=0) for name in PAPER_TABLES}


def run(params: dict) -> Result:
    cfg = Config.from_params(params)
    scores = read_scores(cfg)
    # the runs on the sharpness-matched variant (the matched runs', the probes' matched heads) apart: their
    # clean scores are of detectors trained on the variant, not table 1's
    on_variant = scores["family"] == "matched"
    matched, scores = scores[on_variant], scores[~on_variant]
    if cfg.matched_models:
        matched = pd.concat([matched, read_scores(cfg, runs=cfg.matched_runs())], ignore_index=True)
    paper = read_paper()
    out, plots = Path(paths.TABLES), Path(PLOTS)
    out.mkdir(parents=True, exist_ok=True)
    order = list(cfg.subsets)
    generator_scores = scores[scores["subset"].isin(order)]  # tables 1-3: generator subsets, not content tests
    kw = {"n_bootstrap": cfg.n_bootstrap, "seed": cfg.seed}
    res = Result()

    def add(key: str, table: pd.DataFrame, csv: str, wide: pd.DataFrame, paper_key: str | None,
            figure: object = None) -> None:
        table.to_csv(out / csv, index=False)
        res.tables[key] = wide.round(3)
        if paper_key:
            res.tables[f"{key}: GenImage paper"] = paper[paper_key]
        if figure is not None:
            res.figures[key] = figure

    # Table 1: cross-generator matrix (ResNet-50 or the first xgen model)
    main = cfg.xgen_models[0]
    xgen = T.cross_generator(generator_scores, main, **kw)
    matrix = T.wide(xgen, "train_subset", "subset", order=order)
    matrix = matrix.reindex([s for s in order if s in set(xgen.train_subset)])
    add("table1", xgen, "cross_generator.csv", matrix, "task1_resnet50_matrix",
        report.heatmap(xgen, "train_subset", "subset", "acc", f"{main}: train subset (rows) x test subset",
                       plots / "cross_generator.png", row_order=order, col_order=order))
    for backbone in cfg.probe_backbones:  # each probe fills the whole matrix at the cost of one feature pass
        model = probe_model(backbone)
        probe_cells = T.cross_generator(generator_scores, model, **kw)
        add(f"table1: {model}", probe_cells, f"cross_generator_{model}.csv",
            T.wide(probe_cells, "train_subset", "subset", order=order).reindex(order), None,
            report.heatmap(probe_cells, "train_subset", "subset", "acc",
                           f"{model}: train subset (rows) x test subset", plots / f"cross_generator_{model}.png",
                           row_order=order, col_order=order))
    paper_long = paper["task1_resnet50_matrix"].drop(columns="Avg").stack().rename("acc").reset_index()
    paper_long.columns = ["train_subset", "subset", "acc"]
    same, cross = T.same_vs_cross(xgen)
    paper_same, paper_cross = T.same_vs_cross(paper_long.assign(acc=paper_long["acc"] / 100))
    res.tables["table1: same vs cross generator"] = pd.DataFrame(
        {"same-generator acc": [same, paper_same], "cross-generator acc": [cross, paper_cross]},
        index=["this run", "GenImage paper"]).round(3)

    # Different generators: every xgen model, accuracy per test subset averaged over training subsets
    diff = T.different_generators(generator_scores, order, **kw)
    if len(diff):
        add("different generators", diff, "different_generators.csv", T.wide(diff, "model", "subset", order=order),
            "task1_cross_generator_avg",
            report.heatmap(diff, "model", "subset", "acc", "Trained on each subset, averaged over them",
                           plots / "different_generators.png", col_order=order))

    # Table 2: every detector trained on the SD V1.4 analogue
    det = T.detectors_on(generator_scores, cfg.detector_subset, **kw)
    add("table2", det, "detectors.csv", T.wide(det, "model", "subset", order=order), "task1_train_sdv14",
        report.heatmap(det, "model", "subset", "acc", f"Detectors trained on {cfg.detector_subset}",
                       plots / "detectors.png", col_order=order))

    # Table 3: degraded test images, conditions in their natural order (clean, lowres, jpeg, blur)
    deg = T.degradations(scores, cfg.detector_subset, **kw)
    conds = natural_order(deg["condition"].unique())
    wide_deg = T.wide(deg[deg.condition != "clean"], "model", "condition", order=conds)
    add("table3", deg, "degradations.csv", wide_deg, "task2_degraded",
        report.heatmap(deg, "model", "condition", "acc", "Accuracy under degradation", plots / "degradations.png",
                       col_order=conds))

    # Tables 4-5: class budgets
    size = subs = pd.DataFrame()
    if cfg.class_budgets:
        size = T.training_size(scores, cfg.detector_subset, order, model=cfg.ablation_model, **kw)
        cols = [c for c in ("class_budget", "train_images", "train_classes", "images_per_class", "acc_identical",
                            "acc_std_identical", "acc_cross", "acc_std_cross", "auc_identical") if c in size]
        add("table4", size, "training_size.csv", size[cols], "training_size",
            report.lines(size, "train_images", ["acc_identical", "acc_cross"], "Accuracy vs training images per label",
                         plots / "training_size.png"))
        subs = T.class_subsets(scores, cfg.detector_subset, model=cfg.ablation_model, **kw)
        add("table5", subs, "class_subsets.csv",
            subs.pivot_table(index=["class_budget", "train_classes", "train_images"], columns="classes", values="acc",
                             sort=False), "class_subsets",
            report.heatmap(subs, "class_budget", "classes", "acc", "Accuracy on seen / unseen / all classes",
                           plots / "class_subsets.png"))
    else:
        res.notes.append("tables.class_budgets is empty (this dataset has no image classes): no tables 4 and 5")

    # Table 6: content generalisation
    content = pd.DataFrame()
    if cfg.content_subsets:
        content = T.content_generalisation(scores, cfg.detector_subset, list(cfg.content_subsets), **kw)
        add("table6", content, "content.csv",
            T.wide(content, "model", "subset", order=[cfg.detector_subset, *cfg.content_subsets], average=False),
            "content", report.heatmap(content, "model", "subset", "acc", f"Trained on {cfg.detector_subset}",
                                      plots / "content.png"))
    else:
        res.notes.append("tables.content_subsets is empty: no content test sets for this dataset")

    # How far each detector carries beyond its training generator, from scratch and pretrained side by side
    carry = T.transfer(generator_scores, cfg.detector_subset, order, **kw)
    add("transfer", carry, "transfer.csv", carry.set_index("model"), None)

    # Fake or blurry? Each detector with the sharpness gap closed (reals blurred, fakes sharpened)
    sharp = T.sharpness_counterfactual(generator_scores, n_bootstrap=0, seed=cfg.seed)
    survives: dict = {}
    if len(sharp):
        changed = sharp[sharp["counterfactual"] != T.AS_SCORED]
        on_detector_subset = changed[changed["train_subset"] == cfg.detector_subset]
        on_detector_subset = on_detector_subset.assign(
            run=on_detector_subset["model"] + ": " + on_detector_subset["counterfactual"])
        matrix_sharp = sharp[sharp["model"] == main].pivot_table(index=["train_subset", "counterfactual"],
                                                                 columns="subset", values="acc", sort=False)
        add("sharpness counterfactual", sharp, "sharpness_counterfactual.csv",
            matrix_sharp[report.in_order(matrix_sharp.columns, order)], None,
            report.heatmap(on_detector_subset, "run", "subset", "acc_change",
                           f"Accuracy change with the sharpness gap closed (trained on {cfg.detector_subset})",
                           plots / "sharpness_counterfactual.png", col_order=order))
        res.tables[f"sharpness counterfactual: accuracy change, trained on {cfg.detector_subset}"] = (
            on_detector_subset.pivot_table(index=["model", "counterfactual"], columns="subset", values="acc_change",
                                           sort=False).round(3))
        survives = T.sharpness_survival(sharp, main, cfg.detector_subset)
        res.tables["sharpness counterfactual: cross-generator accuracy, as scored and with the gap closed"] = (
            pd.DataFrame(survives).T.round(3))
    else:
        res.notes.append("No table run scored the sharpness counterfactual (the xgen and zoo runs do)")

    # Table 1 on the sharpness-matched variant: trained and tested where blur tells nothing, and what that
    # detector keeps on the benchmark as stored, beside table 1 as stored
    matched_summary = {}
    if len(matched):
        matched = matched[matched["subset"].isin(order)]
        for model in matched["model"].unique():
            on_variant = T.cross_generator(matched, model, condition=MATCHED_CONDITION, **kw)
            to_stored = T.cross_generator(matched, model, **kw)
            add(f"table1 on the sharpness-matched variant: {model}", on_variant, f"cross_generator_matched_{model}.csv",
                T.wide(on_variant, "train_subset", "subset", order=order).reindex(order), None,
                report.heatmap(on_variant, "train_subset", "subset", "acc",
                               f"{model} on the sharpness-matched variant: train subset (rows) x test subset",
                               plots / f"cross_generator_matched_{model}.png", row_order=order, col_order=order))
            add(f"table1, trained on the sharpness-matched variant, tested as stored: {model}", to_stored,
                f"cross_generator_matched_to_stored_{model}.csv",
                T.wide(to_stored, "train_subset", "subset", order=order).reindex(order), None)
            stored = T.cross_generator(generator_scores, model, **kw)
            matched_summary[model] = T.matched_survival(stored, on_variant, to_stored)
        res.tables["table1: same vs cross generator, as stored and on the sharpness-matched variant"] = pd.DataFrame(
            {(m, k): v for m, per in matched_summary.items() for k, v in per.items()}).T.round(3)

    res.notes += T.conclusions(xgen, paper, det, wide_deg, size, subs, content, diff, order)
    best = T.wide(det, "model", "subset", order=order)["Avg"].sort_values(ascending=False)
    summary = {
        "cross_generator": {"same_generator_acc": same, "cross_generator_acc": cross},
        "detectors_avg_acc": {m: float(v) for m, v in best.items()},
        "degradation_avg_acc": {m: float(v) for m, v in wide_deg["Avg"].items()},
        "degradation_acc": {f"{r.model}/{r.condition}": float(r.acc) for r in deg.itertuples()},
        "different_generators_avg_acc": ({m: float(v) for m, v in T.wide(diff, "model", "subset")["Avg"].items()}
                                         if len(diff) else {}),
        "training_size": {r.class_budget: {"identical_acc": float(r.acc_identical), "cross_acc": float(r.acc_cross)}
                          for r in size.itertuples()},
        "class_subsets": {f"{r.class_budget}/{r.classes}": float(r.acc) for r in subs.itertuples()},
        "content_acc": {f"{r.model}/{r.subset}": float(r.acc) for r in content.itertuples()},
        "transfer": {r.model: {**{k: (None if pd.isna(v) else round(float(v), 4)) for k, v in r._asdict().items()
                                  if k not in ("Index", "model", "trained_on")}, "trained_on": int(r.trained_on)}
                     for r in carry.itertuples()},
        "sharpness_counterfactual_acc_change": {
            f"{m}/{t}": {c: {r["subset"]: round(float(r["acc_change"]), 4) for r in gc.to_dict("records")}
                         for c, gc in g[g["counterfactual"] != T.AS_SCORED].groupby("counterfactual")}
            for (m, t), g in sharp.groupby(["model", "train_subset"])} if len(sharp) else {},
        "sharpness_cross_generator_acc": {k: {c: round(float(v), 4) for c, v in row.items()}
                                          for k, row in survives.items()},
        "matched_cross_generator": {m: {k: {c: round(float(v), 4) for c, v in cells.items()}
                                        for k, cells in per.items()} for m, per in matched_summary.items()},
        "runs": int(scores.groupby(["family", "model", "train_subset", "class_budget", "seed"]).ngroups),
    }
    write_json(summary, Path(paths.metrics_file("tables")))
    res.metrics = summary
    return res
