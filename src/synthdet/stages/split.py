"""Stage ``split``: train / val / test, grouped and seeded, with the leak check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synthdet.data.manifest import read_manifest, usable, write_manifest
from synthdet.data.splits import assign_splits, check_no_leaks, find_leaks, split_counts
from synthdet.fsutil import write_json
from synthdet.stages import paths
from synthdet.stages.base import Out, Result, Stage, select

STAGE = Stage(
    name="split", notebook="notebooks/02_split.ipynb", module=__name__,
    params=("seed", "split.val_fraction", "split.on_leak"),
    deps=(paths.MANIFEST,), outs=(Out(paths.SPLIT),), metrics=(paths.metrics_file("split"),),
)


@dataclass(frozen=True)
class Config:
    seed: int
    val_fraction: float
    on_leak: str

    @classmethod
    def from_params(cls, params: dict) -> Config:
        p = select(params, STAGE.params)
        return cls(int(p["seed"]), float(p["split"]["val_fraction"]), str(p["split"]["on_leak"]))


def run(params: dict) -> Result:
    cfg = Config.from_params(params)
    df = read_manifest(Path(paths.MANIFEST))
    bad = df[df["status"] != "ok"]
    df = check_no_leaks(assign_splits(usable(df), cfg.val_fraction, cfg.seed), cfg.on_leak)
    write_manifest(df, Path(paths.SPLITS))
    bad.to_csv(Path(paths.SPLIT) / "quarantine.csv", index=False)
    leaks = find_leaks(df)
    metrics = {"train": int((df["split"] == "train").sum()), "val": int((df["split"] == "val").sum()),
               "test": int((df["split"] == "test").sum()), "leaks": int(len(leaks)), "quarantined": int(len(bad))}
    write_json(metrics, Path(paths.metrics_file("split")))
    return Result(tables={"images per subset, split and label": split_counts(df),
                          "quarantined (not usable)": bad[["path", "status", "error"]].head(20)}, metrics=metrics)
