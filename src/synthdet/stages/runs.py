"""The table runs: each trains one detector on one training subset with one seed, then scores
every clean test image of every subset and, where table 3 reads them, the degraded test images
of its own subset.

Four families, each a DVC matrix stage:
- ``xgen``: every model of ``tables.xgen_models`` x every subset of ``tables.subsets`` (GenImage's
  cross-generator matrix, and its "different generators" table when several models are listed);
- ``zoo``: every model of ``tables.detectors`` on ``tables.detector_subset`` (the detector tables);
- ``ablate``: ``tables.ablation_model`` on class budgets of ``tables.detector_subset`` (tables 4-5;
  clean test images only);
- ``matched``: every model of ``tables.matched_models`` x every subset, trained on the
  sharpness-matched variant (the degrade stage's, embedded only: every split's reals blurred until
  blur tells nothing) and scored on its test images (condition ``sharpness_matched``) and on the
  benchmark's clean ones: table 1 where a detector cannot read sharpness, and what it keeps as stored.
Runs of ``xgen`` and ``zoo`` also score the sharpness counterfactual's test images (the degrade
stage's: every subset's reals blurred, its fakes sharpened), which the tables stage turns into
each detector's reliance on sharpness. A run's folder is
``artifacts/runs/<family>/<model>__<subset>[__<budget>]__s<seed>``
(:func:`~synthdet.stages.paths.run_name`, which the tables stage reads without the training code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from synthdet.analysis import sharpness
from synthdet.data.manifest import read_manifest
from synthdet.metrics import metrics_table
from synthdet.stages import paths
from synthdet.stages.base import Out, Result, Stage, select
from synthdet.stages.paths import FULL, MATCHED_CONDITION, run_name
from synthdet.training import checkpoint, scoring
from synthdet.training.config import checked_train_settings
from synthdet.training.loop import train_on_manifest
from synthdet.training.runtime import workers_param

NOTEBOOK = "notebooks/06_run.ipynb"
COMMON_PARAMS = ("train", "evaluate", "device", "tables.model_kwargs", "tables.train_overrides", "data.debias")


@dataclass(frozen=True)
class Family:
    name: str
    matrix: tuple[tuple[str, str], ...]  # item -> params key listing its values
    model: str  # "${item.model}" or the params key that fixes it
    subset: str
    budget: str
    extra_params: tuple[str, ...]
    degraded: str  # which runs also score their training subset's degraded test images (table 3):
    # "always", "detector_subset" (only the run on tables.detector_subset) or "never"
    sharpness: bool  # whether its runs score every subset's sharpness-matched test images (the counterfactual)
    variant: bool = False  # trained on the sharpness-matched variant instead of the benchmark as split


FAMILIES = {
    "xgen": Family("xgen", (("model", "tables.xgen_models"), ("subset", "tables.subsets"), ("seed", "tables.seeds")),
                   "${item.model}", "${item.subset}", FULL, ("tables.detector_subset",), "detector_subset", True),
    "zoo": Family("zoo", (("model", "tables.detectors"), ("seed", "tables.seeds")),
                  "${item.model}", "${tables.detector_subset}", FULL, ("tables.detector_subset",), "always", True),
    "ablate": Family("ablate", (("budget", "tables.class_budgets"), ("seed", "tables.seeds")),
                     "${tables.ablation_model}", "${tables.detector_subset}", "${item.budget}",
                     ("tables.detector_subset", "tables.ablation_model"), "never", False),
    "matched": Family("matched", (("model", "tables.matched_models"), ("subset", "tables.subsets"),
                                  ("seed", "tables.seeds")),
                      "${item.model}", "${item.subset}", FULL, ("tables.detector_subset",), "never", False, True),
}


def _stage(f: Family) -> Stage:
    name = run_name(f.name, f.model, f.subset, "${item.seed}", f.budget)
    return Stage(name=f.name, notebook=NOTEBOOK, module=__name__, params=(*COMMON_PARAMS, *f.extra_params),
                 deps=(paths.SPLITS, paths.DEGRADED, *((paths.SHARPNESS_MATCHED,) if f.sharpness else ()),
                       *((paths.MATCHED_VARIANT_MANIFEST,) if f.variant else ())),
                 outs=(Out(f"{paths.RUNS}/{name}"), Out(f"{paths.RUN_CHECKPOINTS}/{name}", cache=False, persist=True)),
                 matrix=f.matrix, arguments=(("family", f.name),), report=f"reports/runs/{name}.ipynb",
                 detectors=(f.model,))


STAGES = tuple(_stage(f) for f in FAMILIES.values())


@dataclass(frozen=True)
class Config:
    family: str
    model: str
    subset: str
    seed: int
    budget: str
    train: dict
    model_kwargs: dict
    batch_size: int
    num_workers: int | str
    device: str
    debias: dict
    detector_subset: str  # tables.detector_subset: the runs that feed table 3

    @classmethod
    def from_params(cls, params: dict, family: str, seed: int, model: str | None = None, subset: str | None = None,
                    budget: str | None = None) -> Config:
        if family not in FAMILIES:
            raise ValueError(f"unknown run family {family!r} (known: {sorted(FAMILIES)})")
        f = FAMILIES[family]
        p = select(params, (*COMMON_PARAMS, *f.extra_params))
        tables = p["tables"]
        model = tables["ablation_model"] if family == "ablate" else model
        subset = subset if family in ("xgen", "matched") else tables["detector_subset"]
        if model is None or subset is None:
            raise ValueError(f"a {family} run needs {'a model' if model is None else 'a training subset'}: "
                             "set the notebook's parameters (papermill -p model ... -p subset ...)")
        overrides = dict((tables["train_overrides"] or {}).get(model) or {})
        unknown = sorted(set(overrides) - set(p["train"]))
        if unknown:
            raise KeyError(f"tables.train_overrides.{model}: {unknown} are not train settings "
                           f"(known: {sorted(p['train'])})")
        return cls(family, str(model), str(subset), int(seed), str(budget or FULL),
                   checked_train_settings({**p["train"], **overrides}),
                   dict((tables["model_kwargs"] or {}).get(model, {})), int(p["evaluate"]["batch_size"]),
                   workers_param(p["evaluate"]["num_workers"]), str(p["device"]), dict(p["data"]["debias"] or {}),
                   str(tables["detector_subset"]))

    @property
    def name(self) -> str:
        return run_name(self.family, self.model, self.subset, self.seed, self.budget)


def run(params: dict, family: str, seed: int, model: str | None = None, subset: str | None = None,
        budget: str | None = None) -> Result:
    """Train, then score; writes ``artifacts/runs/<name>/scores.parquet`` (and ``detector.pt``)."""
    cfg = Config.from_params(params, family, seed, model, subset, budget)
    out, checkpoints = Path(paths.RUNS) / cfg.name, Path(paths.RUN_CHECKPOINTS) / cfg.name
    class_budget = None if cfg.budget == FULL else cfg.budget
    variant = matched_variant() if FAMILIES[cfg.family].variant else None
    # the run that repeats the train stage's (by default xgen@<model>-<train_subset>-<seed>) reuses it, and
    # the matched run that repeats the audit's on the variant (matched@<model>-<train_subset>-<seed>) the audit's
    reuse = (Path(paths.AUDIT_CHECKPOINTS) / "matched" / "detector.pt",) if variant is not None else (
        Path(paths.DETECTOR),)
    result = train_on_manifest(Path(paths.MATCHED_VARIANT_MANIFEST if variant is not None else paths.SPLITS), out,
                               checkpoints, cfg.model, cfg.subset, cfg.train, cfg.seed, cfg.model_kwargs,
                               class_budget, cfg.device, cfg.debias, reuse=reuse, release=False)
    table = pd.read_parquet(paths.DEGRADED)
    keep = table["condition"] == "clean"
    degraded = FAMILIES[cfg.family].degraded
    if degraded == "always" or (degraded == "detector_subset" and cfg.subset == cfg.detector_subset):
        keep |= True if cfg.subset == "all" else table["subset"] == cfg.subset
    table = table[keep]
    if variant is not None:  # the variant's test images, beside the benchmark's clean ones
        table = pd.concat([table, sharpness.variant_test_rows(variant, MATCHED_CONDITION, table.columns)],
                          ignore_index=True)
    if FAMILIES[cfg.family].sharpness:  # reals blurred, fakes sharpened: the sharpness gap closed
        matched = pd.read_parquet(paths.SHARPNESS_MATCHED)
        table = pd.concat([table, matched], ignore_index=True) if len(matched) else table
    table = table.reset_index(drop=True)
    scored = scoring.score(out / "detector.pt", table, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                           device=cfg.device, desc=cfg.name)
    table = table.assign(score=scored["fake_probability"], model=scored["model"])
    classes = set(result["train_classes"])
    table = table.assign(family=cfg.family, train_subset=cfg.subset, seed=cfg.seed, train_seconds=result["seconds"],
                         class_budget=cfg.budget, train_classes=len(classes), train_images=result["train_images"],
                         seen_class=table["class"].isin(classes), best_epoch=result["best_epoch"])
    table.to_parquet(out / "scores.parquet", index=False)
    checkpoint.release_resume_state(checkpoints)  # the outputs are complete: a crash before kept the training
    clean = metrics_table(table[table["condition"] == "clean"].dropna(subset=["score"]), ["subset"], n_bootstrap=0)
    return Result(tables={f"{cfg.name}: clean test images": clean.round(3),
                          "training history": pd.DataFrame(result["history"])},
                  metrics={"name": cfg.name, "seconds": result["seconds"]})


def matched_variant() -> pd.DataFrame:
    """The degrade stage's sharpness-matched variant (its manifest), or a clear error where it was not built."""
    variant = read_manifest(Path(paths.MATCHED_VARIANT_MANIFEST))
    if variant.empty:
        raise ValueError(f"{paths.MATCHED_VARIANT_MANIFEST}: no sharpness-matched variant to train on (it is built "
                         "from the embedded benchmark, with degrade.sharpness_variant: true); leave these runs out "
                         "with -S 'tables.matched_models=[]'")
    return variant
