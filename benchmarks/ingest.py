"""Incremental ingest on a fabricated GenImage-layout tree (extracted subsets): the download
stage's indexing from scratch, rerun on the unchanged tree, and rerun after 1% of the files changed;
plus the ``source`` stage's fingerprint (what decides whether ``download`` reruns at all).

Files: GenImage-like sizes, ImageNet-style JPEG reals (q96) and PNG fakes, ``--size`` px.
Usage: python benchmarks/ingest.py [--files 20000] [--size 256] > benchmarks/results/ingest_<machine>.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from synthdet.data.indexcache import IndexCache
from synthdet.genimage import archives as genimage
from synthdet.genimage import layout as genimage_layout
from synthdet.machine import machine_facts
from synthdet.stages.download import download_genimage

SUBSETS = ("imagenet_ai_0419_sdv4", "imagenet_glide")


def image(rng: np.random.Generator, size: int) -> Image.Image:
    """Smooth noise: compresses like a photo more than white noise does."""
    small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def fabricate(root: Path, files: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    per_folder = files // (len(SUBSETS) * 4)
    paths = []
    with tqdm(total=per_folder * len(SUBSETS) * 4, desc="fabricate") as bar:
        for subset in SUBSETS:
            for split in ("train", "val"):
                for label in ("ai", "nature"):
                    folder = root / subset / split / label
                    folder.mkdir(parents=True)
                    for i in range(per_folder):
                        if label == "nature":
                            path = folder / f"n01440764_{len(paths)}.JPEG"
                            image(rng, size).save(path, quality=96)
                        else:
                            path = folder / f"{i % 1000:03d}_sdv4_{len(paths):05d}.png"
                            image(rng, size).save(path, compress_level=1)
                        paths.append(path)
                        bar.update()
    return paths


def timed(fn) -> tuple[float, object]:  # noqa: ANN001
    t0 = time.perf_counter()
    out = fn()
    return round(time.perf_counter() - t0, 2), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source, out, cache_dir = Path(tmp) / "GenImage", Path(tmp) / "download", Path(tmp) / "cache"
        paths = fabricate(source, args.files, args.size)
        out.mkdir()

        def index(use_cache: bool = True) -> dict:
            cache = IndexCache(cache_dir) if use_cache else None
            manifest = download_genimage(source, out, list(SUBSETS), cache=cache)
            return {"images": len(manifest), **(cache.stats() if cache else {})}

        # timm's class list, loaded once, untimed
        genimage_layout.image_class("n01440764_0.JPEG"), genimage_layout._synsets()
        rows = {}
        rows["fingerprint_s"], _ = timed(lambda: genimage.source_fingerprint(source, list(SUBSETS)))
        rows["first_s"], rows["first"] = timed(index)
        rows["rerun_unchanged_s"], rows["rerun_unchanged"] = timed(index)
        rng = np.random.default_rng(1)
        changed = [paths[i] for i in rng.choice(len(paths), len(paths) // 100, replace=False)]
        for path in changed:  # new pixels at the same path
            image(rng, args.size).save(path, **({"quality": 96} if path.suffix == ".JPEG" else {"compress_level": 1}))
        rows["rerun_1pct_changed_s"], rows["rerun_1pct_changed"] = timed(index)
        rows["no_cache_s"], _ = timed(lambda: index(use_cache=False))
        rows["rerun_fraction_of_first"] = round(rows["rerun_unchanged_s"] / rows["first_s"], 4)
    print(json.dumps({"machine": machine_facts(), "files": len(paths), "size_px": args.size, **rows}, indent=1))


if __name__ == "__main__":
    main()
