"""Stage ``imaginet_data``: the rows ImagiNet's tracks train, calibrate and test on.

On ImagiNet these are its own splits (the download stage read its annotation files and perturbed
its test set). Any other dataset (the embedded benchmark) is first written in ImagiNet's format,
then read back through ImagiNet's own code path: annotation files ``path,origin,content,family,
specific`` for train, test and a balanced calibration set, with a ``codes.json`` naming its
families and generators (the model-identification classes), and its test set perturbed by the
same function as ImagiNet's (:func:`synthdet.imaginet.dataset.build_perturbed`), at the
dataset's image size instead of 256 px.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from synthdet.data.manifest import read_manifest, usable
from synthdet.fsutil import replace_owned_dir, write_json
from synthdet.imaginet import dataset as imaginet
from synthdet.stages import paths
from synthdet.stages.base import Out, Result, Stage, select

ROOT = "artifacts/imaginet"  # every ImagiNet stage writes below it (here, not in paths.py: every stage imports that)
FOLDER = f"{ROOT}/data"
ROWS = f"{FOLDER}/rows.parquet"
STAGE = Stage(
    name="imaginet_data", notebook="notebooks/09_imaginet_data.ipynb", module=__name__,
    params=("seed", "data.name", "imaginet.perturb", "imaginet.max_train_images"),
    deps=(paths.SPLITS,), outs=(Out(FOLDER),), metrics=(paths.metrics_file("imaginet_data"),),
)
# another dataset's content labels as ImagiNet's four content types (unconditional generators'
# fakes, "mixed", count as uncategorized: ImagiNet's catch-all)
CONTENT_TYPES = {"photo": "photos", "painting": "paintings", "face": "faces", "misc": "uncategorized",
                 "mixed": "uncategorized"}
COLUMNS = ["path", "relpath", "label", "content", "family", "generator", "split"]


@dataclass(frozen=True)
class Config:
    seed: int
    dataset: str
    perturb_size: int
    p_compress: float
    max_train_images: int | None

    @classmethod
    def from_params(cls, params: dict) -> Config:
        p = select(params, STAGE.params)
        i = p["imaginet"]
        cap = i["max_train_images"]
        return cls(int(p["seed"]), str(p["data"]["name"]), int(i["perturb"]["size"]), float(i["perturb"]["p_compress"]),
                   int(cap) if cap else None)


def balanced(rows: pd.DataFrame, seed: int, per_label: int | None = None) -> pd.DataFrame:
    """As many reals as fakes (at most ``per_label`` each), a seeded sample of the larger side."""
    n = min(rows["label"].value_counts().reindex([0, 1], fill_value=0))
    n = min(n, per_label) if per_label else n
    parts = [g.sample(n=n, random_state=seed) if len(g) > n else g for _, g in rows.groupby("label")]
    return pd.concat(parts).sort_values("path", kind="stable") if parts else rows


def balanced_families(rows: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The calibration set: as many fakes of every family, and as many reals as fakes (as many as
    the smallest family and the reals allow), seeded. Both heads are trained on it: an unbalanced
    one teaches the model-identification head the largest family's prior."""
    fakes, reals = rows[rows["label"] == 1], rows[rows["label"] == 0]
    if fakes.empty or reals.empty:
        return rows
    counts = fakes["family"].value_counts()
    n = min(int(counts.min()), len(reals) // len(counts))
    fakes = pd.concat([g.sample(n=n, random_state=seed) for _, g in fakes.groupby("family")])
    return pd.concat([reals.sample(n=len(fakes), random_state=seed), fakes]).sort_values("path", kind="stable")


def rows_from_manifest(splits: pd.DataFrame, seed: int) -> dict[str, pd.DataFrame]:
    """A GenImage-layout dataset's rows as ImagiNet's splits: train; calibration (the validation
    split, balanced over labels and families); test. A real image listed by several subsets is
    one row (by sha256), and its content type is ImagiNet's name for it."""
    df = usable(splits).drop_duplicates("sha256").copy()
    unknown = sorted(set(df["content"].fillna("")) - set(CONTENT_TYPES))
    if unknown:
        raise ValueError(f"content labels {unknown} have no ImagiNet content type (known: {sorted(CONTENT_TYPES)})")
    df["content"] = df["content"].map(CONTENT_TYPES)
    df["family"] = df["family"].where(df["label"] == 1, imaginet.REAL)
    df["generator"] = df["generator"].where(df["label"] == 1, imaginet.REAL)
    df["relpath"] = df["path"]  # relative to the repository (the embedded benchmark) or made so below
    return {"train": df[df["split"] == "train"], "calibration": balanced_families(df[df["split"] == "val"], seed),
            "test": df[df["split"] == "test"]}


def dataset_root(paths: pd.Series) -> Path:
    """What the written annotation paths are relative to: the repository when every image path is
    relative to it (the embedded benchmark), else the deepest folder holding every image (GenImage
    extracted elsewhere)."""
    if not any(Path(p).is_absolute() for p in paths):
        return Path(".")
    root = Path(os.path.commonpath([str(Path(p).resolve()) for p in paths]))
    return root.parent if root.is_file() else root


def export(splits: pd.DataFrame, cfg: Config, out: Path) -> tuple[pd.DataFrame, dict]:
    """Write the dataset in ImagiNet's format under ``out``, read it back and perturb its test set."""
    parts = rows_from_manifest(splits, cfg.seed)
    train_fakes = parts["train"][parts["train"]["label"] == 1]
    codes = imaginet.Codes.for_generators(list(train_fakes["family"]), list(train_fakes["generator"]))
    root = dataset_root(splits["path"])
    if root != Path("."):
        parts = {name: rows.assign(relpath=[Path(p).resolve().relative_to(root).as_posix() for p in rows["path"]])
                 for name, rows in parts.items()}
    files = imaginet.write_dataset(parts, out / "dataset", codes)
    frames = []
    for split, path in files.items():
        table = imaginet.read_annotations(path)  # ImagiNet's reader, with the codes.json beside it
        if split == "test":
            table = imaginet.build_perturbed(table, root, out / "perturbed", cfg.seed, cfg.perturb_size,
                                             cfg.p_compress, codes)
            table = table[table["status"] == "ok"]
        else:
            table = table.assign(path=[(root / r).as_posix() for r in table["relpath"]])
        frames.append(table.assign(split=split))
    rows = pd.concat(frames, ignore_index=True)
    return rows, {"annotations": {s: p.as_posix() for s, p in files.items()}}


def run(params: dict) -> Result:
    cfg = Config.from_params(params)
    out = replace_owned_dir(Path(FOLDER))
    splits = read_manifest(Path(paths.SPLITS))
    if cfg.dataset == "imaginet":
        df = usable(splits)
        df = df.assign(relpath=df["relpath"] if "relpath" in df else df["path"])
        calibration = "calibration" if (df["split"] == "calibration").any() else "val"
        rows = df[df["split"].isin(["train", calibration, "test"])].replace({"split": {calibration: "calibration"}})
        written = {"annotations": "ImagiNet's own (read by the download stage)"}
    else:
        rows, written = export(splits, cfg, out)
    train = rows[rows["split"] == "train"]
    if cfg.max_train_images:
        rows = pd.concat([balanced(train, cfg.seed, cfg.max_train_images), rows[rows["split"] != "train"]])
    rows = rows[COLUMNS].reset_index(drop=True)
    rows.to_parquet(Path(ROWS), index=False)
    counts = rows.groupby(["split", "content", "family"]).size().rename("images").reset_index()
    metrics = {"images": {s: int(n) for s, n in rows["split"].value_counts().sort_index().items()},
               "families": sorted(set(rows.loc[rows["label"] == 1, "family"])),
               "content_types": sorted(set(rows["content"])), **written}
    write_json(metrics, Path(paths.metrics_file("imaginet_data")))
    return Result(tables={"images per split, content type and family": counts}, metrics=metrics)
