"""Stages ``features@<backbone>`` and ``probe@<backbone>``: the frozen-feature linear probes
(UnivFD's recipe, :mod:`synthdet.detectors.probe`) of the GenImage tables.

``features`` runs the frozen backbone once over every image a probe learns from or is scored on:
the train and validation images of every subset and the test images the table runs score (clean,
and the degraded copies of ``tables.detector_subset``), and every image of the sharpness-matched
variant where the degrade stage built one. ``probe`` fits one logistic-regression head
per training subset of ``tables.subsets`` (and of ``tables.detector_subset``, e.g. ``all``) on those
features, its ``C`` chosen by validation AUC, and scores every test image, in the score format of
the other table runs (one file for all training subsets:
``artifacts/runs/probe/<backbone>__each__s<seed>``), so the tables read it as one more detector,
called ``<backbone>_probe``. A probe has no random start: the seed only names it. With a
sharpness-matched variant it also fits a head per training subset on the variant's features and
scores the variant's test images and the benchmark's clean ones: rows of family ``matched`` in the
same file, which the tables read as table 1 on the variant (the ``matched`` runs' table).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from synthdet.analysis import sharpness
from synthdet.data.manifest import read_manifest, usable
from synthdet.detectors.probe import BackboneSource, FrozenBackbone, fit_probe
from synthdet.fsutil import atomic_output, write_json
from synthdet.metrics import metrics_table
from synthdet.stages import paths
from synthdet.stages.base import Out, Result, Stage, select
from synthdet.stages.paths import EACH, MATCHED_CONDITION, probe_model, run_name
from synthdet.training import scoring
from synthdet.training.runtime import workers_param

NOTEBOOK = "notebooks/12_probe.ipynb"
FEATURE_PARAMS = ("probe.custom", "probe.input_size", "probe.batch_size", "tables.detector_subset", "device",
                  "evaluate.num_workers")
PROBE_PARAMS = ("seed", "probe.C", "tables.subsets", "tables.detector_subset")
MATRIX = (("backbone", "probe.backbones"),)


def feature_dir(backbone: str) -> Path:
    return Path(paths.FEATURES) / backbone


STAGES = (
    Stage(name="features", notebook=NOTEBOOK, module=__name__, params=FEATURE_PARAMS,
          deps=(paths.SPLITS, paths.DEGRADED, paths.MATCHED_VARIANT_MANIFEST),
          outs=(Out(f"{paths.FEATURES}/${{item.backbone}}"),), matrix=MATRIX,
          arguments=(("family", "features"),), report="reports/features/${item.backbone}.ipynb",
          detectors=()),  # frozen backbones (detectors/probe.py, imported itself), not the registry's
    Stage(name="probe", notebook=NOTEBOOK, module=__name__, params=PROBE_PARAMS,
          deps=(paths.SPLITS, paths.DEGRADED, paths.MATCHED_VARIANT_MANIFEST, f"{paths.FEATURES}/${{item.backbone}}"),
          outs=(Out(f"{paths.RUNS}/{run_name('probe', '${item.backbone}', EACH, '${seed}')}"),), matrix=MATRIX,
          arguments=(("family", "probe"),), report="reports/probe/${item.backbone}.ipynb", detectors=()),
)


def scored_tests(degraded: pd.DataFrame, detector_subset: str) -> np.ndarray:
    """Which rows of the degraded table the probes score: every clean test image, and the degraded
    copies of ``detector_subset``'s (of every subset's for ``all``), as the table runs do."""
    if detector_subset == "all":
        return np.ones(len(degraded), dtype=bool)
    return ((degraded["condition"] == "clean") | (degraded["subset"] == detector_subset)).to_numpy()


def feature_rows(splits: pd.DataFrame, degraded: pd.DataFrame, detector_subset: str,
                 variant: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per image file a probe reads (its ``path``): train and val images of every subset,
    the test images the table runs score (every clean one, the degraded ones of ``detector_subset``)
    and every usable image of the sharpness-matched ``variant``."""
    learn = splits[splits["split"].isin(["train", "val"])]
    tests = degraded[scored_tests(degraded, detector_subset)]
    parts = [learn[["path", "label"]], tests[["path", "label"]]]
    if variant is not None and len(variant):
        parts.append(usable(variant)[["path", "label"]])
    rows = pd.concat(parts, ignore_index=True)
    return rows.drop_duplicates("path").reset_index(drop=True)


@dataclass(frozen=True)
class FeatureConfig:
    source: BackboneSource
    input_size: int
    batch_size: int
    detector_subset: str
    num_workers: int | str
    device: str

    @classmethod
    def from_params(cls, params: dict, backbone: str) -> FeatureConfig:
        p = select(params, FEATURE_PARAMS)
        return cls(BackboneSource.named(backbone, p["probe"]["custom"]), int(p["probe"]["input_size"]),
                   int(p["probe"]["batch_size"]), str(p["tables"]["detector_subset"]),
                   workers_param(p["evaluate"]["num_workers"]), str(p["device"]))


def extract(params: dict, backbone: str) -> Result:
    """Write ``artifacts/features/<backbone>/``: ``features.npy`` (float16, a row per image),
    ``rows.parquet`` (those images' paths, in order) and ``info.json`` (what made them)."""
    cfg = FeatureConfig.from_params(params, backbone)
    rows = feature_rows(read_manifest(Path(paths.SPLITS)), pd.read_parquet(paths.DEGRADED), cfg.detector_subset,
                        read_manifest(Path(paths.MATCHED_VARIANT_MANIFEST)))
    network = FrozenBackbone(cfg.source, cfg.input_size)
    t0 = time.perf_counter()
    _, features = scoring.score(network, rows, input_size=cfg.input_size, features=True, batch_size=cfg.batch_size,
                                device=cfg.device, num_workers=cfg.num_workers, desc=f"features {backbone}")
    seconds = round(time.perf_counter() - t0, 1)
    out = feature_dir(backbone)
    with atomic_output(out / "features.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, features.astype(np.float16))
    with atomic_output(out / "rows.parquet") as tmp:
        rows[["path"]].to_parquet(tmp, index=False)
    unreadable = int(np.isnan(features).any(axis=1).sum())
    info = {"backbone": backbone, "arch": cfg.source.arch, "weights": cfg.source.weights,
            "input_size": cfg.input_size, "data_config": {"mean": network.data_config.mean,
                                                          "std": network.data_config.std,
                                                          "interpolation": network.data_config.interpolation},
            "images": len(rows), "width": int(features.shape[1]), "unreadable": unreadable, "seconds": seconds,
            "images_per_second": round(len(rows) / max(seconds, 1e-9), 1)}
    write_json(info, out / "info.json")
    return Result(tables={"features": pd.Series(info, dtype=object).to_frame("value")}, metrics=info)


def read_features(backbone: str) -> tuple[dict[str, int], np.ndarray]:
    """(path -> row, the feature matrix as float32) of a ``features`` stage's output."""
    folder = feature_dir(backbone)
    if not (folder / "features.npy").is_file() or not (folder / "rows.parquet").is_file():
        raise FileNotFoundError(f"{folder}: no features (features.npy, rows.parquet); run "
                                f"`dvc repro features@{backbone}` first")
    features = np.load(folder / "features.npy", allow_pickle=False).astype(np.float32)
    paths_ = pd.read_parquet(folder / "rows.parquet")["path"].tolist()
    if len(paths_) != len(features):
        raise ValueError(f"{folder}: {len(paths_)} rows for {len(features)} feature vectors (rerun the stage)")
    return {p: i for i, p in enumerate(paths_)}, features


def _lookup(index: dict[str, int], features: np.ndarray, rows: pd.DataFrame, what: str) -> np.ndarray:
    missing = [p for p in rows["path"] if p not in index]
    if missing:
        raise ValueError(f"{len(missing)} {what} images have no features, e.g. {missing[0]}: the features stage ran "
                         "on other data (rerun it)")
    return features[[index[p] for p in rows["path"]]]


@dataclass(frozen=True)
class ProbeConfig:
    backbone: str
    seed: int
    cs: tuple[float, ...]
    subsets: tuple[str, ...]
    detector_subset: str

    @classmethod
    def from_params(cls, params: dict, backbone: str) -> ProbeConfig:
        p = select(params, PROBE_PARAMS)
        cs = tuple(float(c) for c in p["probe"]["C"])
        if not cs or min(cs) <= 0:
            raise ValueError(f"probe.C: a list of positive inverse regularisation strengths (got {p['probe']['C']})")
        return cls(backbone, int(p["seed"]), cs, tuple(p["tables"]["subsets"]), str(p["tables"]["detector_subset"]))


class Config:
    """The configuration of either stage (``family``: features or probe), from the params it declares."""

    @staticmethod
    def from_params(params: dict, family: str, backbone: str) -> FeatureConfig | ProbeConfig:
        if family == "features":
            return FeatureConfig.from_params(params, backbone)
        if family == "probe":
            return ProbeConfig.from_params(params, backbone)
        raise ValueError(f"{family!r}: expected the features or the probe stage")


def _fit_head(index: dict[str, int], features: np.ndarray, rows: pd.DataFrame, cs: list[float], seed: int
              ) -> tuple[object, dict, pd.DataFrame, float]:
    """A head on ``rows``' train split (its ``C`` by validation AUC): (head, fit info, train rows, seconds)."""
    train, val = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    train_x, val_x = _lookup(index, features, train, "train"), _lookup(index, features, val, "val")
    ok_train, ok_val = np.isfinite(train_x).all(1), np.isfinite(val_x).all(1)
    t0 = time.perf_counter()
    head, info = fit_probe(train_x[ok_train], train["label"].to_numpy()[ok_train], val_x[ok_val],
                           val["label"].to_numpy()[ok_val], cs, seed)
    return head, {**info, "train_images": int(ok_train.sum())}, train, round(time.perf_counter() - t0, 2)


def _scored(head: object, x: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
    ok = np.isfinite(x).all(1)
    score = np.full(len(rows), np.nan)
    score[ok] = head.predict_proba(x[ok])[:, 1]
    return score


def fit_and_score(params: dict, backbone: str) -> Result:
    """A head per training subset on the backbone's features; every clean test image scored, and
    the degraded ones by the head of ``tables.detector_subset`` (as the table runs do). With a
    sharpness-matched variant, a head per training subset on its features too (family ``matched``),
    scoring its test images (condition ``sharpness_matched``) and the benchmark's clean ones."""
    cfg = ProbeConfig.from_params(params, backbone)
    seed, cs, subsets, detector_subset = cfg.seed, list(cfg.cs), list(cfg.subsets), cfg.detector_subset
    index, features = read_features(backbone)
    splits, degraded = read_manifest(Path(paths.SPLITS)), pd.read_parquet(paths.DEGRADED)
    degraded = degraded[scored_tests(degraded, detector_subset)].reset_index(drop=True)
    test_x = _lookup(index, features, degraded, "test")
    is_clean = (degraded["condition"] == "clean").to_numpy()
    variant = usable(read_manifest(Path(paths.MATCHED_VARIANT_MANIFEST)))
    name = run_name("probe", backbone, EACH, seed)
    out = Path(paths.RUNS) / name
    tables, heads, chosen = [], {}, []

    def add(family: str, subset: str, head: object, info: dict, train: pd.DataFrame, seconds: float,
            scored: pd.DataFrame, score: np.ndarray, prefix: str = "") -> None:
        classes = set(train["class"].dropna())
        tables.append(scored.assign(
            score=score, model=probe_model(backbone), family=family, train_subset=subset, seed=seed,
            train_seconds=seconds, class_budget=paths.FULL, train_classes=len(classes),
            train_images=int((train["label"] == 1).sum()), seen_class=scored["class"].isin(classes), best_epoch=-1))
        scaler, logistic = head[0], head[-1]
        heads.update({f"{prefix}{subset}/mean": scaler.mean_, f"{prefix}{subset}/scale": scaler.scale_,
                      f"{prefix}{subset}/coef": logistic.coef_[0], f"{prefix}{subset}/intercept": logistic.intercept_})
        chosen.append({"family": family, "train_subset": subset,
                       **{k: v for k, v in info.items() if k != "C_val_auc"}, "seconds": seconds})

    # one head per training subset, and one for tables.detector_subset when it is
    # not among them (``all``: every subset's training images, as the zoo runs train)
    for subset in [*subsets, *([detector_subset] if detector_subset not in subsets else [])]:
        rows = splits if subset == "all" else splits[splits["subset"] == subset]
        head, info, train, seconds = _fit_head(index, features, rows, cs, seed)
        # the head of tables.detector_subset scores every row kept above (its degraded copies too)
        keep = np.ones(len(degraded), bool) if subset == detector_subset else is_clean
        add("probe", subset, head, info, train, seconds, degraded[keep].reset_index(drop=True),
            _scored(head, test_x[keep], degraded[keep]))
    if len(variant):  # table 1 on the sharpness-matched variant: its heads, scored on both test sets
        tests = pd.concat([degraded[is_clean], sharpness.variant_test_rows(variant, MATCHED_CONDITION,
                                                                             degraded.columns)], ignore_index=True)
        tests_x = _lookup(index, features, tests, "test")
        for subset in subsets:
            head, info, train, seconds = _fit_head(index, features, variant[variant["subset"] == subset], cs, seed)
            add("matched", subset, head, info, train, seconds, tests, _scored(head, tests_x, tests), "matched/")
    table = pd.concat(tables, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "scores.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_output(out / "heads.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **heads)  # standardiser and logistic weights per training subset: plain arrays, no pickle
    choices = pd.DataFrame(chosen)
    write_json({"name": name, "heads": chosen}, out / "probe.json")
    clean = metrics_table(table[(table["condition"] == "clean") & (table["family"] == "probe")].dropna(
        subset=["score"]), ["train_subset", "subset"], n_bootstrap=0)
    matrix = clean.pivot(index="train_subset", columns="subset", values="acc")
    result = Result(tables={"heads (C chosen by validation AUC)": choices.round(4),
                            f"{name}: clean accuracy, train subset (rows) x test subset": matrix.round(3)},
                    metrics={"name": name, "heads": chosen})
    if len(variant):
        on_variant = metrics_table(table[table["condition"] == MATCHED_CONDITION].dropna(subset=["score"]),
                                   ["train_subset", "subset"], n_bootstrap=0)
        result.tables[f"{name}: the sharpness-matched variant, train subset (rows) x test subset"] = (
            on_variant.pivot(index="train_subset", columns="subset", values="acc").round(3))
    return result


def run(params: dict, family: str, backbone: str) -> Result:
    """``family`` features: the backbone's feature pass; probe: its heads and scores."""
    Config.from_params(params, family, backbone)  # a wrong stage or bad params fail before any work
    return extract(params, backbone) if family == "features" else fit_and_score(params, backbone)
