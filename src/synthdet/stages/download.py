"""Stage ``download``: each dataset -> one manifest (see synthdet.data.manifest).

``data.name`` picks the dataset: the embedded benchmark (real images from ``data/``, fakes made
here), GenImage's archives, or ImagiNet's annotation files.

Every output is in DVC's cache (``pullable``): on a machine whose float arithmetic builds other
fakes (another CPU vendor), ``dvc pull download`` from a remote that holds a recorded build restores
the stage and ``dvc repro`` skips it, so the tables start from the recorded bytes. The stage's two
resume folders (the archive index cache, the finished generator groups) are therefore not DVC
outputs: DVC neither deletes them before a rerun (they persist) nor asks a pulled workspace for them.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from synthdet.analysis.report import sample_grid
from synthdet.data.indexcache import IndexCache
from synthdet.data.manifest import describe_files, normalise, usable, write_manifest
from synthdet.datasets.embedded import reproducible, sources
from synthdet.datasets.embedded.build import build_benchmark
from synthdet.fsutil import DataSourceError, make_owned_dir, write_json
from synthdet.genimage import archives as genimage
from synthdet.genimage import layout as genimage_layout
from synthdet.genimage.layout import index_genimage_tree
from synthdet.imaginet import dataset as imaginet
from synthdet.machine import machine_facts
from synthdet.stages import paths
from synthdet.stages.base import Out, Result, Stage, select
from synthdet.stages.source import dataset_folder

STAGE = Stage(
    name="download", notebook="notebooks/01_download.ipynb", module=__name__,
    params=("seed", "data", "embedded"), deps=(paths.DATA, paths.FINGERPRINT),
    outs=(Out(paths.DOWNLOAD),), metrics=(paths.metrics_file("download"),), pullable=True,
)


@dataclass(frozen=True)
class Config:
    seed: int
    dataset: str
    genimage: dict
    imaginet: dict
    embedded: dict

    @classmethod
    def from_params(cls, params: dict) -> Config:
        p = select(params, STAGE.params)
        d = p["data"]
        if d["name"] not in ("embedded", "genimage", "imaginet"):
            raise ValueError(f"data.name must be embedded, genimage or imaginet, not {d['name']!r}")
        e = dict(p["embedded"])
        if e.get("reproducibility", "warn") not in ("warn", "error"):  # checked before a 10-minute build
            raise ValueError(f"embedded.reproducibility must be warn or error, not {e['reproducibility']!r}")
        procs = e.get("generator_processes")
        if procs is not None and (not isinstance(procs, int) or procs < 0):
            raise ValueError(f"embedded.generator_processes must be null or a count >= 0, not {procs!r}")
        return cls(int(p["seed"]), d["name"], dict(d["genimage"]), dict(d["imaginet"]), e)


def run(params: dict) -> Result:
    cfg = Config.from_params(params)
    out = Path(paths.DOWNLOAD)
    make_owned_dir(Path(paths.INDEX_CACHE))  # resume folders of this stage (not DVC outputs: see above)
    make_owned_dir(Path(paths.GENERATOR_GROUPS))
    t0 = time.perf_counter()
    extra: dict = {}
    if cfg.dataset == "embedded":
        manifest, extra = download_embedded(Path(paths.DATA) / "embedded", out, cfg.embedded, cfg.seed,
                                            Path(paths.GENERATOR_GROUPS))
    elif cfg.dataset == "genimage":
        g = cfg.genimage
        source = dataset_folder("genimage", g)
        checksums = genimage.load_checksums(Path(g["checksums"])) if g.get("checksums") else None
        cache = IndexCache(Path(paths.INDEX_CACHE) / "genimage")
        manifest = download_genimage(source, out, g["subsets"],
                                     Path(g["extract_to"]) if g.get("extract_to") else None, checksums,
                                     bool(g.get("verify_extracted", False)), cache)
        extra = {"index_cache": cache.stats()}
    else:
        i = cfg.imaginet
        cache = IndexCache(Path(paths.INDEX_CACHE) / "imaginet")
        manifest, report = download_imaginet(dataset_folder("imaginet", i), out, i["annotations"], i["perturb"],
                                             cfg.seed, cache,
                                             Path(i["extract_to"]) if i.get("extract_to") else None,
                                             float(i.get("max_missing", 0.01)))
        extra = {"index_cache": cache.stats(), "imaginet": report}
    metrics = {"images": int(len(manifest)), "usable": int((manifest["status"] == "ok").sum()),
               "subsets": int(manifest["subset"].nunique()), "seconds": round(time.perf_counter() - t0, 1), **extra}
    write_json(metrics, Path(paths.metrics_file("download")))
    figures = {}
    for subset, g in usable(manifest).groupby("subset"):
        figures[f"{subset}: fakes (top), reals (bottom)"] = sample_grid(
            g[g["label"] == 1]["path"].head(8).tolist() + g[g["label"] == 0]["path"].head(8).tolist())
    facts = manifest.groupby("label")[["width", "height", "format", "mode"]].agg(
        lambda s: sorted(map(str, s.unique()))[:10])
    return Result(tables={"images per subset, label and status":
                          manifest.groupby(["subset", "label", "status"]).size().unstack("label", fill_value=0),
                          "images per family and content": manifest.groupby(["family", "content"]).size()
                          .rename("images").to_frame(),
                          "file facts per label (first 10 values)": facts},
                  figures=figures, metrics=metrics)


def download_embedded(data_root: Path, out: Path, embedded: dict, seed: int,
                      resume: Path | None = None) -> tuple[pd.DataFrame, dict]:
    """Reals from ``data_root`` (``data/embedded``) -> crops -> fakes -> GenImage tree -> manifest.
    ``resume``: where finished generator groups are kept for a rerun (:mod:`~synthdet.datasets.embedded.finished`).

    Returns the manifest and metrics (not data): the seconds each generator took and whether every
    generated subset is byte-identical to the one recorded with the repository (a mismatch warns, or
    stops with ``embedded.reproducibility: error``).
    """
    prepare, benchmark = embedded["prepare"], embedded["benchmark"]
    reals = sources.prepare_reals(
        data_root, out / "reals", size=benchmark["image_size"], scale=prepare["crop_scale"],
        max_crops=prepare["max_crops_per_image"], min_side=prepare["min_side"],
    )
    reals["group"] = reals["picture"]  # crops, detail views and puzzle pieces of one picture share a split
    write_manifest(normalise(reals.assign(label=0, subset="pool", split=None, generator="real",
                                          family="real")), out / "reals.parquet")
    labels, seconds = build_benchmark(
        usable(reals), out / "benchmark", data_root / "weights",
        benchmark["subsets"], benchmark["images_per_subset"], benchmark["test_fraction"], seed,
        benchmark["image_size"], batch_size=benchmark["generator_batch_size"],
        generator_train_images=benchmark.get("generator_train_images"), content_tests=benchmark.get("content_tests"),
        processes=embedded.get("generator_processes"), resume=resume,
    )
    sources.write_attribution(data_root, out / "ATTRIBUTION.md")
    names = list(benchmark["subsets"]) + list((benchmark.get("content_tests") or {}).get("subsets", {}))
    check = check_reproducible(out / "benchmark", names, seed, prepare, benchmark,
                               embedded.get("reproducibility", "warn"))
    manifest = index_genimage_tree(out / "benchmark", names)
    manifest = manifest.drop(columns=[c for c in labels.columns if c != "path"]).merge(labels, on="path", how="left")
    manifest = normalise(manifest)
    write_manifest(manifest, out / "manifest.parquet")
    return manifest, {"generator_seconds": seconds, "reproducibility": check}


def check_reproducible(benchmark_dir: Path, names: list[str], seed: int, prepare: dict, benchmark: dict,
                       on_mismatch: str = "warn", expected: dict | None = None) -> dict:
    """Hash every generated subset and compare with ``expected_hashes.json`` (the README's record and
    those of other machine types); warn (or raise, ``on_mismatch="error"``) naming the subsets that
    differ, the likely cause and the machine facts that matter. ``expected``: a record to use instead
    (tests)."""
    if on_mismatch not in ("warn", "error"):
        raise ValueError(f"embedded.reproducibility must be warn or error, not {on_mismatch!r}")
    observed = {name: reproducible.subset_hash(benchmark_dir / name) for name in names}
    key = reproducible.config_key(seed, prepare, benchmark)
    if expected is None:
        report = reproducible.verify(observed, key, reproducible.load_expected(), reproducible.load_other_machines(),
                                     reproducible.recorded_on())
    else:
        report = reproducible.verify(observed, key, expected)
    facts = machine_facts()
    if report["status"] == "identical":
        print(f"embedded benchmark: all {len(names)} subsets byte-identical to the record made on {report['record']} "
              f"(configuration {key})" + (f"; the README's tables come from another machine's record, which differs "
                                          f"in {report['differing']}" if report["differing"] else ""))
    elif report["status"] == "unrecorded":
        print(f"embedded benchmark: no recorded hashes for configuration {key} (params differ from the recorded "
              "profiles); its subsets cannot be compared")
    else:
        message = reproducible.mismatch_message(report, facts)
        if on_mismatch == "error":
            raise DataSourceError(message)
        warnings.warn(message, stacklevel=2)
    return {**report, "machine": facts}


def download_genimage(source: Path, out: Path, subsets: list[str] | None, extract_to: Path | None = None,
                      checksums: dict[str, str] | None = None, verify_extracted: bool = False,
                      cache: IndexCache | None = None) -> pd.DataFrame:
    """GenImage from ``source`` (split-zip archives, or already extracted subsets) -> manifest.

    Archives are MD5-verified and extracted (resumably) into ``extract_to`` (default
    ``<source>/extracted``: outside the DVC outputs, so a terabyte is not copied into the cache);
    known-corrupt and undecodable images are marked in the manifest and quarantined by the split stage.
    ``cache``: only files changed since the last run are decoded and hashed again.
    """
    extract_to = extract_to or source / "extracted"
    if subsets is None:
        subsets = [s for s in genimage_layout.SUBSETS if (source / s).is_dir() or any(source.glob(f"{s}*.zip"))]
        if not subsets:
            raise DataSourceError(f"{source}: no GenImage subset folders or archives found "
                                  f"(expected names like {list(genimage_layout.SUBSETS)[:2]})")
    report = genimage.ingest(source, extract_to, subsets, checksums, verify_extracted)
    roots = {s: genimage.subset_root(source, extract_to, s) for s in subsets}
    manifest = pd.concat([index_genimage_tree(root, [s], cache) for s, root in roots.items()], ignore_index=True)
    if cache is not None:
        cache.save()
    manifest = genimage_layout.mark_known_corrupt(manifest, roots)
    names = {s: genimage_layout.SUBSETS.get(s, (s, "unknown")) for s in subsets}
    fake = manifest["label"] == 1
    manifest["generator"] = np.where(fake, manifest["subset"].map(lambda s: names[s][0]), "real")
    manifest["family"] = np.where(fake, manifest["subset"].map(lambda s: names[s][1]), "real")
    manifest["content"] = "photo"
    manifest["class"] = manifest["path"].map(genimage_layout.image_class)
    stem = manifest["path"].map(lambda p: Path(p).stem)
    manifest["group"] = np.where(fake, manifest["path"], stem)  # one ImageNet photo = one group
    manifest = normalise(manifest)
    write_manifest(manifest, out / "manifest.parquet")
    write_json(report, out / "ingest_report.json")
    return manifest


def imaginet_root(root: Path, extract_to: Path | None = None) -> Path:
    """The folder ImagiNet's annotation paths are relative to: ``root`` itself, or, when ``root``
    holds the packed distribution (``imaginet.7z.001 ...``), where it is extracted (resumably;
    default ``<root>/extracted``), or the one folder the archive put everything in."""
    archive = imaginet.find_archive(root)
    if archive is None:
        return root
    from synthdet.imaginet import sevenzip

    dest = extract_to or root / "extracted"
    sevenzip.extract(archive, dest)
    tops = [p for p in dest.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return tops[0] if not (dest / "annotations").is_dir() and len(tops) == 1 else dest


def download_imaginet(root: Path, out: Path, annotations: dict[str, str | None], perturb: dict, seed: int,
                      cache: IndexCache | None = None, extract_to: Path | None = None,
                      max_missing: float = 0.01) -> tuple[pd.DataFrame, dict]:
    """ImagiNet from its root folder (or its packed 7z distribution) and annotation files ->
    manifest (split = the file's role) and what was done (perturbation, missing images).

    Every annotation file is read and every listed image looked for before any long work. With
    ``perturb.enabled`` (``auto``: unless the test list is already a perturbed test set, such as
    the packed distribution's ``test_all.txt``) the test images are replaced by the paper's
    perturbed copies, written resumably to ``perturb.out`` (default ``<root>/perturbed_synthdet``,
    outside DVC's outputs, so an interrupted run resumes). More than ``max_missing`` of a split's
    images missing or unreadable stops the run. ``cache``: only files changed since the last run
    are decoded and hashed again.
    """
    root = imaginet_root(root, extract_to)
    tables = {}
    for split_name, rel in annotations.items():
        if not rel:
            continue  # a split set to null is not used
        path = root / rel
        if not path.is_file():
            ready = root / "annotations" / "test_all.txt"
            hint = (f"; the packed distribution's test list is {ready.relative_to(root)}: "
                    f"-S data.imaginet.annotations.test={ready.relative_to(root)}") if ready.is_file() else ""
            raise DataSourceError(f"{path}: annotation file for the {split_name} split not found (set "
                                  f"data.imaginet.annotations.{split_name} to its path under {root}, or to null "
                                  f"to leave the split out){hint}")
        tables[split_name] = imaginet.read_annotations(path)  # with the codes.json beside it, if any
    missing = imaginet.check_missing(tables, root, max_missing)
    mode = perturb.get("enabled", "auto")
    if mode not in (True, False, "auto"):
        raise ValueError(f"data.imaginet.perturb.enabled must be true, false or auto, not {mode!r}")
    report: dict = {"missing": missing, "test_set": "as listed"}
    frames = []
    for split_name, ann in tables.items():
        bad = ann.iloc[0:0]
        ready = imaginet.ready_testset(root / annotations[split_name], ann) if split_name == "test" else None
        if ready and mode is True:
            raise DataSourceError(f"{root / annotations[split_name]}: {ready}; perturbing it again would crop and "
                                  "compress every image twice. Set data.imaginet.perturb.enabled to auto (use it as "
                                  "it is) or false")
        if split_name == "test" and (mode is True or (mode == "auto" and not ready)):
            target = Path(perturb["out"]) if perturb.get("out") else root / "perturbed_synthdet"
            ann = imaginet.build_perturbed(ann, root, target, seed, perturb.get("size", 256),
                                           perturb.get("p_compress", 0.75),
                                           imaginet.Codes.beside(root / annotations[split_name]))
            report.update(test_set=f"perturbed by synthdet into {target}", perturbed_now=ann.attrs["perturbed_now"])
            bad = ann[ann["status"] != "ok"]
            ann = ann[ann["status"] == "ok"].drop(columns=["status", "error"])
        else:
            if ready:
                report["test_set"] = f"used as it is: {ready}"
            ann = ann.assign(path=[(root / r).as_posix() for r in ann["relpath"]])
        frames.append(ann.assign(split=split_name))
        if len(bad):
            frames.append(bad.assign(split=split_name, path=bad["source_path"]))
    # file facts (and status) come from decoding each file again, perturbed or not
    table = pd.concat(frames, ignore_index=True).drop(columns=["status", "error"], errors="ignore")
    files = describe_files([Path(p) for p in table["path"]], cache=cache)
    if cache is not None:
        cache.save()
    manifest = pd.concat([table.reset_index(drop=True), pd.DataFrame(files)], axis=1)
    for split_name, g in manifest.groupby("split"):
        broken = g[g["status"] != "ok"]
        examples = [f"{p} ({s})" for p, s in zip(broken["path"][:3], broken["status"][:3], strict=True)]
        if error := imaginet.too_many_missing(root, split_name, len(broken), len(g), max_missing,
                                              "missing or unreadable", examples):
            raise error
    manifest["subset"] = manifest["content"]
    manifest["group"] = manifest["relpath"]
    manifest["source"] = manifest["generator"]
    manifest = normalise(manifest)
    write_manifest(manifest, out / "manifest.parquet")
    return manifest, report
