"""ImagiNet's test-set perturbation (random crop, Lanczos resize, JPEG/WebP) in images per second,
in this process against worker processes on every core, on fabricated 1-2 MP JPEGs (the size of
ImagiNet's photos); the outputs are checked to be the same bytes.

Usage: python benchmarks/perturb.py [--images 200] > benchmarks/results/perturb_<machine>.json
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from synthdet.imaginet.dataset import build_perturbed
from synthdet.machine import machine_facts


def fabricate(root: Path, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(1000, 1700, 2))  # 1-2.9 MP
        small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)  # smooth content, photo-like sizes
        path = root / f"img_{i:04d}.jpg"
        Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(path, quality=90)
        rows.append({"relpath": path.name, "label": 1, "content": "photos", "family": "gan",
                     "generator": "stylegan_xl", "specific": 1})
    return pd.DataFrame(rows)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.png")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    results = {}
    with tempfile.TemporaryDirectory(prefix="perturb_bench_") as scratch:
        root = Path(scratch) / "src"
        root.mkdir()
        ann = fabricate(root, args.images)
        hashes = {}
        for processes in (1, cores):
            out = Path(scratch) / f"out_{processes}"
            t0 = time.perf_counter()
            build_perturbed(ann, root, out, seed=0, processes=processes)
            seconds = time.perf_counter() - t0
            results[f"{processes} process{'es' if processes > 1 else ''}"] = round(args.images / seconds, 1)
            hashes[processes] = digest(out)
    print(json.dumps({"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                      "machine": machine_facts(), "images": args.images, "images_per_s": results,
                      "speedup": round(results[list(results)[-1]] / results[list(results)[0]], 2),
                      "same_bytes": len(set(hashes.values())) == 1}, indent=2))


if __name__ == "__main__":
    main()
