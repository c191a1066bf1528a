"""One function per DVC stage after download (the download stage is synthdet.data.download).
Notebooks pass parameters in; nothing here reads params.yaml."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from synthdet.data.imageio import load_rgb
from synthdet.data.manifest import read_manifest, usable, write_manifest
from synthdet.data.splits import assign_splits, check_no_leaks, class_subset, parse_class_budget
from synthdet.degrade import fit_to_input, scaled_conditions
from synthdet.fsutil import atomic_write_bytes, inside, write_json  # noqa: F401 - write_json: the notebooks' writer
from synthdet.metrics import metrics_table
from synthdet.train import TrainConfig, load_detector, predict, train_detector


def split(manifest_path: Path, out: Path, val_fraction: float, seed: int, on_leak: str) -> pd.DataFrame:
    df = read_manifest(manifest_path)
    bad = df[df["status"] != "ok"]
    df = check_no_leaks(assign_splits(usable(df), val_fraction, seed), on_leak)
    write_manifest(df, out)
    bad.to_csv(out.with_name("quarantine.csv"), index=False)
    return df


def train(splits_path: Path, out_dir: Path, model: str, train_subset: str, cfg: dict, seed: int,
          model_kwargs: dict | None = None, class_budget: str | None = None) -> dict:
    """Train on the train split of ``train_subset`` (or "all"); ``class_budget`` ("8x20") keeps
    that many classes and images per class and label (tables 4 and 5), validating on those classes."""
    df = read_manifest(splits_path)
    if train_subset != "all" and train_subset not in set(df["subset"]):
        raise ValueError(f"train_subset {train_subset!r} not in the manifest ({sorted(set(df['subset']))})")
    rows = df if train_subset == "all" else df[df["subset"] == train_subset]
    train_rows, val_rows = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    if class_budget:
        train_rows = class_subset(train_rows, *parse_class_budget(class_budget), seed=seed)
        val_rows = val_rows[val_rows["class"].isin(set(train_rows["class"]))]
    tc = TrainConfig(model=model, seed=seed, model_kwargs=model_kwargs or {}, **cfg)
    t0 = time.perf_counter()
    result = train_detector(train_rows, val_rows, tc, out_dir)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["train_classes"] = sorted(set(train_rows["class"].dropna()))
    result["train_images"] = int((train_rows["label"] == 1).sum())  # per label; reals are as many
    return result


def degrade(splits_path: Path, out: Path, image_size: int, cfg: dict) -> pd.DataFrame:
    """Write a degraded copy of every test image for every condition (lossless PNG), degraded at
    the detector's input size ``image_size`` (``train.input_size``; see synthdet.degrade)."""
    df = read_manifest(splits_path)
    test = df[df["split"] == "test"]
    conditions = scaled_conditions(image_size, cfg["reference_size"], cfg["lowres"], cfg["jpeg_quality"],
                                   cfg["blur_sigma"])
    rows = []
    common = os.path.commonpath(test["path"].tolist())
    for cond in conditions:
        for r in tqdm(test.to_dict("records"), desc=cond.name):
            if cond.kind == "clean":
                path = r["path"]
            else:
                rel = Path(os.path.relpath(r["path"], common)).with_suffix(".png").as_posix()
                target = inside(out, f"{cond.name}/{rel}", "degraded test set")
                path = target.as_posix()
                if not target.exists():
                    buf = io.BytesIO()
                    cond.apply(fit_to_input(load_rgb(r["path"]), image_size)).save(buf, format="PNG")
                    atomic_write_bytes(target, buf.getvalue())
            rows.append({"path": path, "source_path": r["path"],
                         **{k: r[k] for k in ("label", "subset", "generator", "content", "class")},
                         "condition": cond.name, "kind": cond.kind, "paper_value": cond.value,
                         "effective_value": cond.effective})
    table = pd.DataFrame(rows)
    table.to_parquet(out / "degraded.parquet", index=False)
    return table


def evaluate(model_path: Path, degraded_path: Path, out_dir: Path, n_bootstrap: int, seed: int,
             batch_size: int = 128, num_workers: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores for every (test image, condition); metrics per (condition, subset)."""
    table = score(model_path, pd.read_parquet(degraded_path), batch_size, num_workers)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out_dir / "scores.parquet", index=False)
    scored = table.dropna(subset=["score"])
    metrics = metrics_table(scored, ["condition", "subset"], n_bootstrap=n_bootstrap, seed=seed)
    return table, metrics


def score(model_path: Path, table: pd.DataFrame, batch_size: int = 128, num_workers: int = 0) -> pd.DataFrame:
    """``table`` (rows with a ``path``) plus the saved detector's fake-probability and name."""
    model, cfg = load_detector(model_path)
    table = table.reset_index(drop=True)
    table["score"] = predict(model, table, cfg["input_size"], batch_size, num_workers=num_workers)
    table["model"] = cfg["model"]
    return table


def run(splits_path: Path, degraded_path: Path, out_dir: Path, model: str, train_subset: str, train_cfg: dict,
        seed: int, model_kwargs: dict | None = None, batch_size: int = 128, num_workers: int = 0,
        degraded_subsets: str = "train_subset", class_budget: str | None = None) -> pd.DataFrame:
    """One cell-run of the tables: train, then score every clean test image of every subset and
    the degraded test images of ``train_subset`` (``degraded_subsets``: "train_subset", "all" or
    "none"). With ``class_budget`` the run is a training-set ablation (see :func:`train`)."""
    result = train(splits_path, out_dir, model, train_subset, train_cfg, seed, model_kwargs, class_budget)
    table = pd.read_parquet(degraded_path)
    if degraded_subsets != "all" and not (degraded_subsets == "train_subset" and train_subset == "all"):
        keep = table["subset"] == train_subset if degraded_subsets == "train_subset" else False
        table = table[(table["condition"] == "clean") | keep]
    table = score(out_dir / "detector.pt", table, batch_size, num_workers)
    classes = set(result["train_classes"])
    table = table.assign(train_subset=train_subset, seed=seed, train_seconds=result["seconds"],
                         class_budget=class_budget or "full", train_classes=len(classes),
                         train_images=result["train_images"], seen_class=table["class"].isin(classes))
    table.to_parquet(out_dir / "scores.parquet", index=False)
    return table


def sample_grid(paths: list[str], cols: int = 8, size: int = 64) -> Image.Image:
    """Tile images, each brought to ``size`` px (short side, centre crop), into one picture."""
    imgs = [fit_to_input(load_rgb(p), size) for p in paths]
    w, h = size, size
    rows = -(-len(imgs) // cols)
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(imgs):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid
