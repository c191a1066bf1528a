"""The download stage: each dataset -> one manifest (see synthdet.data.manifest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from synthdet.data import embedded, genimage, imaginet
from synthdet.data.manifest import describe_files, index_genimage_tree, normalise, usable, write_manifest
from synthdet.fsutil import write_json
from synthdet.generators.build import build_benchmark


def download_embedded(data_root: Path, out: Path, prepare: dict, benchmark: dict, seed: int) -> pd.DataFrame:
    """Reals from ``data_root`` (``data/embedded``) -> crops -> fakes -> GenImage tree -> manifest."""
    reals = embedded.prepare_reals(
        data_root, out / "reals", size=benchmark["image_size"], scale=prepare["crop_scale"],
        max_crops=prepare["max_crops_per_image"], min_side=prepare["min_side"],
    )
    reals["group"] = reals["picture"]  # crops, detail views and puzzle pieces of one picture share a split
    write_manifest(normalise(reals.assign(label=0, subset="pool", split=None, generator="real",
                                          family="real")), out / "reals.parquet")
    labels = build_benchmark(
        usable(reals), out / "benchmark", data_root / "weights",
        benchmark["subsets"], benchmark["images_per_subset"], benchmark["test_fraction"], seed,
        benchmark["image_size"], batch_size=benchmark["generator_batch_size"],
        generator_train_images=benchmark.get("generator_train_images"), content_tests=benchmark.get("content_tests"),
    )
    embedded.write_attribution(data_root, out / "ATTRIBUTION.md")
    names = list(benchmark["subsets"]) + list((benchmark.get("content_tests") or {}).get("subsets", {}))
    manifest = index_genimage_tree(out / "benchmark", names)
    manifest = manifest.drop(columns=[c for c in labels.columns if c != "path"]).merge(labels, on="path", how="left")
    manifest = normalise(manifest)
    write_manifest(manifest, out / "manifest.parquet")
    return manifest


def download_genimage(source: Path, out: Path, subsets: list[str] | None, extract_to: Path | None = None,
                      checksums: dict[str, str] | None = None, verify_extracted: bool = False) -> pd.DataFrame:
    """GenImage from ``source`` (split-zip archives, or already extracted subsets) -> manifest.

    Archives are MD5-verified and extracted (resumably) into ``extract_to`` (default
    ``<source>/extracted``: outside the DVC outputs, so a terabyte is not copied into the cache);
    known-corrupt and undecodable images are marked in the manifest and quarantined by the split stage.
    """
    extract_to = extract_to or source / "extracted"
    if subsets is None:
        subsets = [s for s in genimage.SUBSETS if (source / s).is_dir() or any(source.glob(f"{s}*.zip"))]
        if not subsets:
            raise genimage.DataSourceError(f"{source}: no GenImage subset folders or archives found "
                                           f"(expected names like {list(genimage.SUBSETS)[:2]})")
    report = genimage.ingest(source, extract_to, subsets, checksums, verify_extracted)
    roots = {s: genimage.subset_root(source, extract_to, s) for s in subsets}
    manifest = pd.concat([index_genimage_tree(root, [s]) for s, root in roots.items()], ignore_index=True)
    manifest = genimage.mark_known_corrupt(manifest, roots)
    names = {s: genimage.SUBSETS.get(s, (s, "unknown")) for s in subsets}
    fake = manifest["label"] == 1
    manifest["generator"] = np.where(fake, manifest["subset"].map(lambda s: names[s][0]), "real")
    manifest["family"] = np.where(fake, manifest["subset"].map(lambda s: names[s][1]), "real")
    manifest["content"] = "photo"
    manifest["class"] = manifest["path"].map(genimage.image_class)
    stem = manifest["path"].map(lambda p: Path(p).stem)
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
