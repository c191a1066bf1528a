"""One function per DVC stage. Notebooks pass parameters in; nothing here reads params.yaml."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from synthdet.data import embedded, genimage, imaginet
from synthdet.data.archives import atomic_write_bytes
from synthdet.data.imageio import load_rgb
from synthdet.data.manifest import (
    describe_files,
    index_genimage_tree,
    normalise,
    read_manifest,
    usable,
    write_manifest,
)
from synthdet.data.splits import assign_splits, check_no_leaks
from synthdet.degrade import scaled_conditions
from synthdet.generators.build import build_benchmark
from synthdet.metrics import metrics_table
from synthdet.train import TrainConfig, load_detector, predict, train_detector


def download_embedded(data_root: Path, out: Path, prepare: dict, benchmark: dict, seed: int) -> pd.DataFrame:
    """Reals from ``data_root`` (``data/embedded``) -> crops -> fakes -> GenImage tree -> manifest."""
    reals = embedded.prepare_reals(
        data_root, out / "reals", size=benchmark["image_size"], scale=prepare["crop_scale"],
        max_crops=prepare["max_crops_per_image"], min_side=prepare["min_side"],
    )
    reals["group"] = reals["original"]
    write_manifest(normalise(reals.assign(label=0, subset="pool", split=None, generator="real",
                                          family="real")), out / "reals.parquet")
    labels = build_benchmark(
        usable(reals), out / "benchmark", data_root / "weights",
        benchmark["subsets"], benchmark["images_per_subset"], benchmark["test_fraction"], seed,
        benchmark["image_size"], batch_size=benchmark["generator_batch_size"],
        generator_train_images=benchmark.get("generator_train_images"),
    )
    embedded.write_attribution(data_root, out / "ATTRIBUTION.md")
    manifest = index_genimage_tree(out / "benchmark", list(benchmark["subsets"]))
    manifest = manifest.drop(columns=[c for c in labels.columns if c != "path"]).merge(labels, on="path", how="left")
    manifest = normalise(manifest)
    write_manifest(manifest, out / "manifest.parquet")
    return manifest


def download_genimage(source: Path, out: Path, subsets: list[str] | None, extract_to: Path | None = None,
                      checksums: dict[str, str] | None = None) -> pd.DataFrame:
    """GenImage from ``source`` (split-zip archives, or already extracted subsets) -> manifest.

    Archives are MD5-verified and extracted (resumably) into ``extract_to``; known-corrupt and
    undecodable images are marked in the manifest and quarantined by the split stage.
    """
    extract_to = extract_to or out / "extracted"
    if subsets is None:
        subsets = [s for s in genimage.SUBSETS if (source / s).is_dir() or any(source.glob(f"{s}*.zip"))]
        if not subsets:
            raise genimage.DataSourceError(f"{source}: no GenImage subset folders or archives found "
                                           f"(expected names like {list(genimage.SUBSETS)[:2]})")
    report = genimage.ingest(source, extract_to, subsets, checksums)
    roots = {s: genimage.subset_root(source, extract_to, s) for s in subsets}
    manifest = pd.concat([index_genimage_tree(root, [s]) for s, root in roots.items()], ignore_index=True)
    manifest = genimage.mark_known_corrupt(manifest, roots)
    names = {s: genimage.SUBSETS.get(s, (s, "unknown")) for s in subsets}
    fake = manifest["label"] == 1
    manifest["generator"] = np.where(fake, manifest["subset"].map(lambda s: names[s][0]), "real")
    manifest["family"] = np.where(fake, manifest["subset"].map(lambda s: names[s][1]), "real")
    manifest["content"] = "photo"
    stem = manifest["path"].map(lambda p: Path(p).stem)
    manifest["class"] = stem.str.extract(r"^(n\d{8})_", expand=False)
    manifest["group"] = np.where(fake, manifest["path"], stem)  # one ImageNet photo = one group
    manifest = normalise(manifest)
    write_manifest(manifest, out / "manifest.parquet")
    write_json(report, out / "ingest_report.json")
    return manifest


def download_imaginet(root: Path, out: Path, annotations: dict[str, str], perturb: dict, seed: int) -> pd.DataFrame:
    """ImagiNet from its root folder and annotation files -> manifest (split = the file's role).

    With ``perturb.enabled`` the test images are replaced by the paper's perturbed copies.
    """
    frames = []
    for split_name, rel in annotations.items():
        ann = imaginet.read_annotations(root / rel)
        if split_name == "test" and perturb.get("enabled", True):
            ann = imaginet.build_perturbed(ann, root, out / "perturbed_test", seed, perturb.get("size", 256),
                                           perturb.get("p_compress", 0.75))
            bad = ann[ann["status"] != "ok"]
            ann = ann[ann["status"] == "ok"].drop(columns=["status", "error"])
        else:
            ann = ann.assign(path=[(root / r).as_posix() for r in ann["relpath"]])
            bad = ann.iloc[0:0]
        frames.append(ann.assign(split=split_name))
        if len(bad):
            frames.append(bad.assign(split=split_name, path=bad["source_path"]))
    # file facts (and status) come from decoding each file again, perturbed or not
    table = pd.concat(frames, ignore_index=True).drop(columns=["status", "error"], errors="ignore")
    files = describe_files([Path(p) for p in table["path"]])
    manifest = pd.concat([table.reset_index(drop=True), pd.DataFrame(files)], axis=1)
    manifest["subset"] = manifest["content"]
    manifest["group"] = manifest["relpath"]
    manifest["source"] = manifest["generator"]
    manifest = normalise(manifest)
    write_manifest(manifest, out / "manifest.parquet")
    return manifest


def split(manifest_path: Path, out: Path, val_fraction: float, seed: int, on_leak: str) -> pd.DataFrame:
    df = read_manifest(manifest_path)
    bad = df[df["status"] != "ok"]
    df = check_no_leaks(assign_splits(usable(df), val_fraction, seed), on_leak)
    write_manifest(df, out)
    bad.to_csv(out.with_name("quarantine.csv"), index=False)
    return df


def train(splits_path: Path, out_dir: Path, model: str, train_subset: str, cfg: dict, seed: int,
          model_kwargs: dict | None = None) -> dict:
    df = read_manifest(splits_path)
    if train_subset != "all" and train_subset not in set(df["subset"]):
        raise ValueError(f"train_subset {train_subset!r} not in the manifest ({sorted(set(df['subset']))})")
    rows = df if train_subset == "all" else df[df["subset"] == train_subset]
    tc = TrainConfig(model=model, seed=seed, model_kwargs=model_kwargs or {}, **cfg)
    t0 = time.perf_counter()
    result = train_detector(rows[rows["split"] == "train"], rows[rows["split"] == "val"], tc, out_dir)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def degrade(splits_path: Path, out: Path, image_size: int, cfg: dict) -> pd.DataFrame:
    """Write a degraded copy of every test image for every condition (lossless PNG)."""
    df = read_manifest(splits_path)
    test = df[df["split"] == "test"]
    conditions = scaled_conditions(image_size, cfg["reference_size"], cfg["lowres"], cfg["jpeg_quality"],
                                   cfg["blur_sigma"])
    rows = []
    common = os.path.commonpath(test["path"].tolist())
    for cond in conditions:
        for r in tqdm(test.itertuples(index=False), total=len(test), desc=cond.name):
            if cond.kind == "clean":
                path = r.path
            else:
                rel = Path(os.path.relpath(r.path, common)).with_suffix(".png")
                path = (out / cond.name / rel).as_posix()
                if not Path(path).exists():
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    cond.apply(load_rgb(r.path)).save(path + ".part.png")
                    os.replace(path + ".part.png", path)
            rows.append({"path": path, "source_path": r.path, "label": r.label, "subset": r.subset,
                         "generator": r.generator, "content": r.content, "condition": cond.name,
                         "kind": cond.kind, "paper_value": cond.value, "effective_value": cond.effective})
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
        degraded_subsets: str = "train_subset") -> pd.DataFrame:
    """One cell-run of the tables: train, then score every clean test image of every subset and
    the degraded test images of ``train_subset`` (or of every subset with ``degraded_subsets="all"``)."""
    result = train(splits_path, out_dir, model, train_subset, train_cfg, seed, model_kwargs)
    table = pd.read_parquet(degraded_path)
    if degraded_subsets == "train_subset":
        table = table[(table["condition"] == "clean") | (table["subset"] == train_subset)]
    table = score(out_dir / "detector.pt", table, batch_size, num_workers)
    table = table.assign(train_subset=train_subset, seed=seed, train_seconds=result["seconds"])
    table.to_parquet(out_dir / "scores.parquet", index=False)
    return table


def sample_grid(paths: list[str], cols: int = 8) -> Image.Image:
    """Tile images (all the same size) into one picture for the notebooks."""
    imgs = [load_rgb(p) for p in paths]
    w, h = imgs[0].size
    rows = -(-len(imgs) // cols)
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(imgs):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def write_json(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n").encode())
