"""Stage ``audit``: could a detector cheat on this dataset? File facts per subset and label, the
metadata and low-level probes' AUC (bias scores), and the pipeline's detector re-scored with the
format and size differences removed (see :mod:`synthdet.analysis.audit`).

On the embedded benchmark it also builds and audits its biased variant (reals stored as JPEG,
fakes as PNG: GenImage's bias), which the audit must flag, and trains the pipeline's detector on
it twice, as it is and under the debiased protocol (``data.debias``), to measure both against
the clean benchmark: how much a shortcut costs, and how much of it the protocol recovers.

And its sharpness-matched variant (the degrade stage's, ``degrade.sharpness_variant``): every
split's reals blurred as the sharpness counterfactual blurs the test reals, so that blur tells
nothing; audited the same way (do the probes still separate the labels?), and the pipeline's
detector trained on it: what a detector learns, and keeps on the benchmark as stored, when it
cannot read sharpness.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from synthdet.analysis import audit, report, sharpness
from synthdet.data.manifest import read_manifest, usable
from synthdet.fsutil import make_owned_dir, replace_owned_dir, write_json
from synthdet.metrics import metrics_table
from synthdet.stages import paths
from synthdet.stages.base import Out, Result, Stage, select
from synthdet.stages.paths import run_name
from synthdet.training import checkpoint, scoring
from synthdet.training.config import checked_train_settings
from synthdet.training.loop import train_on_manifest
from synthdet.training.runtime import workers_param

BIAS_PLOT, COUNTERFACTUAL_PLOT = f"{paths.PLOTS}/audit_bias_scores.png", f"{paths.PLOTS}/audit_counterfactual.png"
RECOVERY_PLOT = f"{paths.PLOTS}/audit_bias_recovery.png"
SHARPNESS_PLOT = f"{paths.PLOTS}/audit_sharpness.png"
MATCHED_PLOT = f"{paths.PLOTS}/audit_sharpness_matched.png"
VARIANT_CHECKPOINTS = paths.AUDIT_CHECKPOINTS  # persisted, uncached: an interrupted audit resumes
STAGE = Stage(
    name="audit", notebook="notebooks/08_audit.ipynb", module=__name__,
    params=("seed", "data.name", "data.debias", "model", "model_kwargs", "train_subset", "train", "audit",
            "evaluate.batch_size", "evaluate.num_workers", "device"),
    deps=(paths.SPLITS, paths.DETECTOR, paths.SHARPNESS_STRENGTHS, paths.MATCHED_VARIANT_MANIFEST),
    outs=(Out(paths.AUDIT), Out(VARIANT_CHECKPOINTS, cache=False, persist=True)),
    metrics=(paths.metrics_file("audit"),),
    plots=(BIAS_PLOT, COUNTERFACTUAL_PLOT, RECOVERY_PLOT, SHARPNESS_PLOT, MATCHED_PLOT), detectors=("${model}",),
)
RECOVERY_METRICS = ("clean_acc", "clean_real_acc", "clean_fake_acc", "clean_auc", "biased_acc", "biased_auc")
MATCHED_METRICS = ("clean_acc", "clean_real_acc", "clean_fake_acc", "clean_auc", "matched_acc", "matched_auc")
VARIANT_MANIFEST = "biased_variant_manifest.parquet"
AS_IS = "as stored"
BIASED = "biased variant"
MATCHED = "sharpness-matched variant"
TRAINED_ON = {"clean": "clean benchmark (the train stage)", "biased": "biased variant",
              "debiased": "biased variant, debiased protocol", "matched": MATCHED}


@dataclass(frozen=True)
class Config:
    seed: int
    dataset: str
    input_size: int
    max_images: int | None
    folds: int
    min_images: int
    biased_variant_quality: int | None
    batch_size: int
    num_workers: int | str
    device: str
    model: str
    model_kwargs: dict
    train_subset: str
    train: dict
    variant_debias: dict

    @classmethod
    def from_params(cls, params: dict) -> Config:
        p = select(params, STAGE.params)
        a = p["audit"]
        quality = a["biased_variant_quality"]
        return cls(int(p["seed"]), str(p["data"]["name"]), int(p["train"]["input_size"]),
                   int(a["max_images"]) if a["max_images"] else None, int(a["folds"]), int(a["min_images_per_label"]),
                   int(quality) if quality and p["data"]["name"] == "embedded" else None,
                   int(p["evaluate"]["batch_size"]), workers_param(p["evaluate"]["num_workers"]), str(p["device"]),
                   str(p["model"]), dict(p["model_kwargs"] or {}), str(p["train_subset"]),
                   checked_train_settings(p["train"]),
                   {**(p["data"]["debias"] or {}), "enabled": True, "size_window": a["variant_size_window"],
                    "real_jpeg_quality": quality, "fake_jpeg_quality": quality})


def audit_one(manifest: pd.DataFrame, cfg: Config, matching: pd.DataFrame | None = None,
              rescore_sharpness: bool = True) -> tuple[pd.DataFrame, ...]:
    """File facts, probe AUCs, the sharpness match (chosen on the training split; ``matching``: the
    degrade stage's, which the table runs score) and the detector's counterfactual scores of one
    dataset (``rescore_sharpness``: with the sharpness counterfactual; not for the variant that is
    that change already), and the notes."""
    facts = audit.file_facts(manifest)
    probes = audit.shortcut_probes(manifest, cfg.input_size, cfg.seed, cfg.max_images, cfg.folds, cfg.min_images)
    if matching is None:
        matching = sharpness.match_sharpness(manifest[manifest["split"] == "train"], cfg.input_size, cfg.seed)
    scores, notes = audit.counterfactual_scores(Path(paths.DETECTOR), manifest[manifest["split"] == "test"],
                                                cfg.batch_size, cfg.device, cfg.num_workers,
                                                more=sharpness.conditions(matching, cfg.input_size)
                                                if rescore_sharpness else None)
    unmatched = sorted(set(manifest["subset"]) - set(matching["subset"]))
    if unmatched and rescore_sharpness:
        notes.append(f"No sharpness counterfactual for {', '.join(unmatched)}: no training images of both labels.")
    return facts, probes, matching, scores, notes


def variant_recovery(cfg: Config, out: Path, datasets: dict[str, pd.DataFrame], counterfactual: pd.DataFrame,
                     variant: str, manifest: Path, runs: dict[str, dict | None], column: str) -> pd.DataFrame:
    """The pipeline's detector and one trained on ``variant`` per entry of ``runs`` (run name ->
    ``data.debias``; None: as it is), each scored on the clean test set and the variant's:
    accuracy per test subset and their mean (``clean_*``, ``<column>_acc``, ``<column>_auc``).
    The pipeline's detector's scores as the files are come from the counterfactual table
    (``counterfactual``, one row per dataset and subset): not scored twice."""
    as_is = counterfactual[counterfactual["condition"] == audit.AS_IS_CONDITION]
    per_detector = {"clean": {name: g.set_index("subset") for name, g in as_is.groupby("dataset")}}
    for name, debias in runs.items():
        run_dir = out / "variant_runs" / name
        # the matched run is the `matched` table run of this model, subset and seed, when that has finished
        same = Path(paths.RUN_CHECKPOINTS) / run_name("matched", cfg.model, cfg.train_subset, cfg.seed) / "detector.pt"
        train_on_manifest(manifest, run_dir, Path(VARIANT_CHECKPOINTS) / name, cfg.model,
                          cfg.train_subset, cfg.train, cfg.seed, cfg.model_kwargs, device=cfg.device, debias=debias,
                          reuse=(same,) if name == "matched" else (),
                          release=False)  # released when the audit is complete
        per_detector[name] = {}
        for test_name in (AS_IS, variant):
            test = datasets[test_name][datasets[test_name]["split"] == "test"]
            probability = scoring.score(run_dir / "detector.pt", test, batch_size=cfg.batch_size,
                                        num_workers=cfg.num_workers, device=cfg.device)["fake_probability"]
            scored = test.reset_index(drop=True).assign(score=probability).dropna(subset=["score"])
            per_detector[name][test_name] = metrics_table(scored, ["subset"], n_bootstrap=0).set_index("subset")
    rows = []
    for name, per_test in per_detector.items():
        clean, changed = per_test[AS_IS], per_test[variant]
        table = pd.DataFrame({"clean_acc": clean["acc"], "clean_real_acc": clean["real_acc"],
                              "clean_fake_acc": clean["fake_acc"], "clean_auc": clean["auc"],
                              f"{column}_acc": changed["acc"], f"{column}_auc": changed["auc"]})
        table.loc["mean"] = table.mean()
        rows.append(table.reset_index(names="subset").assign(trained_on=TRAINED_ON[name]))
    return pd.concat(rows, ignore_index=True)


def run(params: dict) -> Result:
    cfg = Config.from_params(params)
    out = replace_owned_dir(Path(paths.AUDIT))
    make_owned_dir(Path(VARIANT_CHECKPOINTS))  # a declared output: there even without a biased variant
    datasets = {AS_IS: usable(read_manifest(Path(paths.SPLITS)))}
    notes: list[str] = []
    if cfg.biased_variant_quality:
        from synthdet.datasets.embedded.biased import write_biased_variant

        variant = write_biased_variant(datasets[AS_IS], out / "biased_variant", cfg.biased_variant_quality)
        variant.to_parquet(out / VARIANT_MANIFEST, index=False)
        datasets[BIASED] = usable(variant)
    else:
        notes.append("No biased variant: it is built from the embedded benchmark only (audit.biased_variant_quality).")
    strengths = {AS_IS: pd.read_csv(paths.SHARPNESS_STRENGTHS, dtype={"subset": str})}  # the variants: their own
    matched = read_manifest(Path(paths.MATCHED_VARIANT_MANIFEST))
    if len(matched):
        datasets[MATCHED] = usable(matched)
    facts, probes, matches, scores = [], [], [], []
    for name, manifest in datasets.items():
        f, p, m, s, n = audit_one(manifest, cfg, strengths.get(name), rescore_sharpness=name != MATCHED)
        facts.append(f.assign(dataset=name))
        probes.append(p.assign(dataset=name))
        matches.append(m.assign(dataset=name))
        scores.append(s.assign(dataset=name))
        notes += [f"{name}: {note}" for note in n]
    facts_t, probes_t, match_t, scores_t = (pd.concat(t, ignore_index=True) for t in (facts, probes, matches, scores))
    recovery = (variant_recovery(cfg, out, datasets, scores_t, BIASED, out / VARIANT_MANIFEST,
                                 {"biased": None, "debiased": cfg.variant_debias}, "biased")
                if BIASED in datasets else pd.DataFrame())
    matched_runs = (variant_recovery(cfg, out, datasets, scores_t, MATCHED, Path(paths.MATCHED_VARIANT_MANIFEST),
                                     {"matched": None}, "matched") if MATCHED in datasets else pd.DataFrame())
    facts_t.to_csv(out / "file_facts.csv", index=False)
    probes_t.to_csv(out / "probes.csv", index=False)
    scores_t.to_csv(out / "counterfactual.csv", index=False)
    match_t.to_csv(out / "sharpness.csv", index=False)
    metrics = {
        "bias_scores": {d: {r["subset"]: {"metadata_auc": round(r["metadata"], 4),
                                          "lowlevel_auc": round(r["low-level"], 4),
                                          "lowlevel_no_sharpness_auc": round(r[audit.NO_SHARPNESS], 4)}
                            for r in g.to_dict("records")} for d, g in probes_t.groupby("dataset")},
        "counterfactual_acc_change": {
            d: {c: {r["subset"]: round(r["acc_change"], 4) for r in gc.to_dict("records")}
                for c, gc in g[g["condition"] != audit.AS_IS_CONDITION].groupby("condition")}
            for d, g in scores_t.groupby("dataset")},
        "counterfactual_auc_change": {
            d: {c: {r["subset"]: round(r["auc_change"], 4) for r in gc.to_dict("records")}
                for c, gc in g[g["condition"] != audit.AS_IS_CONDITION].groupby("condition")}
            for d, g in scores_t.groupby("dataset")},
        # medians over the sampled training views; the strengths the sharpness counterfactual applies
        "sharpness": {d: {r["subset"]: {k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()
                                        if k not in ("subset", "dataset")}
                          for r in g.to_dict("records")} for d, g in match_t.groupby("dataset")},
    }
    if len(recovery):
        recovery.to_csv(out / "bias_recovery.csv", index=False)
        metrics["bias_recovery"] = {r["trained_on"]: {k: round(r[k], 4) for k in RECOVERY_METRICS}
                                    for r in recovery[recovery["subset"] == "mean"].to_dict("records")}
    if len(matched_runs):
        matched_runs.to_csv(out / "sharpness_matched.csv", index=False)
        metrics["sharpness_matched"] = {r["trained_on"]: {k: round(r[k], 4) for k in MATCHED_METRICS}
                                        for r in matched_runs[matched_runs["subset"] == "mean"].to_dict("records")}
    write_json(metrics, Path(paths.metrics_file("audit")))
    for name in ("biased", "debiased", "matched"):  # the audit is complete: its variant runs' resume state goes
        checkpoint.release_resume_state(Path(VARIANT_CHECKPOINTS) / name)
    long = probes_t.melt(id_vars=["dataset", "subset"], value_vars=list(audit.PROBES), var_name="probe",
                         value_name="AUC")
    figures = {"bias scores (cross-validated AUC; 0.5 = nothing to learn)": report.bars(
        long.assign(probe=long["dataset"] + ": " + long["probe"]), "subset", "AUC", "probe",
        "Shortcut probes: real vs fake without a generator fingerprint", Path(BIAS_PLOT), ylim=(0, 1.05),
        reference=0.5)}
    changed = scores_t[scores_t["condition"] != audit.AS_IS_CONDITION]
    if len(changed):
        figures["counterfactual accuracy change"] = report.bars(
            changed.assign(condition=changed["dataset"] + ": " + changed["condition"]), "subset", "acc_change",
            "condition", "Detector accuracy with the shortcut removed, minus as stored", Path(COUNTERFACTUAL_PLOT),
            reference=0.0)
    else:
        report.bars(scores_t, "subset", "acc", "dataset", "Detector accuracy as stored (no counterfactual applies)",
                    Path(COUNTERFACTUAL_PLOT), ylim=(0, 1.05))
    figures["sharpness (median high-frequency share of the training views)"] = sharpness_plot(match_t)
    if len(recovery):
        mean = recovery[recovery["subset"] == "mean"]
        figures["bias recovery"] = report.bars(
            mean.melt(id_vars="trained_on", value_vars=["clean_acc", "clean_real_acc", "biased_acc"],
                      var_name="measured on", value_name="accuracy"), "measured on", "accuracy", "trained_on",
            "Trained on the biased variant, with and without the debiased protocol", Path(RECOVERY_PLOT),
            ylim=(0, 1.05))
    else:
        report.message("No biased variant in this run: it is built from the embedded benchmark only.",
                       Path(RECOVERY_PLOT))
    if len(matched_runs):
        mean = matched_runs[matched_runs["subset"] == "mean"]
        figures["sharpness-matched variant"] = report.bars(
            mean.melt(id_vars="trained_on", value_vars=["clean_acc", "clean_auc", "matched_acc", "matched_auc"],
                      var_name="measured on", value_name="value"), "measured on", "value", "trained_on",
            "Trained on the benchmark as stored and on its sharpness-matched variant (mean over test subsets)",
            Path(MATCHED_PLOT), ylim=(0, 1.05))
    else:
        report.message("No sharpness-matched variant in this run (degrade.sharpness_variant).", Path(MATCHED_PLOT))
    wide = scores_t.pivot_table(index=["dataset", "condition"], columns="subset", values="acc", sort=False)
    tables = ({"bias recovery (mean over test subsets)": recovery[recovery["subset"] == "mean"].round(3)}
              if len(recovery) else {})
    if len(matched_runs):
        tables["sharpness-matched variant: trained on each, scored on both test sets"] = matched_runs.round(3)
    return Result(tables={**tables, "file facts": facts_t, "bias scores": probes_t.round(3),
                          "sharpness (medians of the training views; the counterfactual's strengths)":
                              match_t.round(4),
                          "counterfactual accuracy": wide.round(3), "counterfactual detail": scores_t.round(3)},
                  figures=figures, metrics=metrics, notes=notes)


def sharpness_plot(matching: pd.DataFrame) -> object:
    """Reals' and fakes' median high-frequency share per subset, as stored and after the
    counterfactual's change (reals blurred, fakes sharpened): the gap it closes."""
    if matching.empty:
        return report.message("No subset has training images of both labels: no sharpness match.",
                              Path(SHARPNESS_PLOT))
    columns = {"real_high_freq_share": "reals", "fake_high_freq_share": "fakes",
               "blurred_real_high_freq_share": "reals blurred", "sharpened_fake_high_freq_share": "fakes sharpened"}
    long = matching.melt(id_vars=["dataset", "subset"], value_vars=list(columns), var_name="images",
                         value_name="high-frequency share")
    long["images"] = long["dataset"] + ": " + long["images"].map(columns)
    return report.bars(long, "subset", "high-frequency share", "images",
                       "Median high-frequency share of the training views, before and after matching",
                       Path(SHARPNESS_PLOT))
