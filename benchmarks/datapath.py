"""Training data path, images/s at 224 px, on fabricated GenImage-like files: ImageNet-size JPEG
reals (500x375, q90) and 512 px PNG fakes, batch 64.

- naive: torchvision ``ImageFolder`` + ``RandomResizedCrop(224)`` + ``ToTensor`` (the usual baseline);
- project, decoding: ``ManifestDataset`` + the training transform, every image decoded every epoch;
- project, pixel cache: the same, reading the cached ``fit_to_input`` views (``train.pixel_cache``;
  the cache's one-time build is timed separately: it is one decoding epoch), with the workers and
  without (``num_workers: auto`` on a CPU: the batches then need no inter-process copy);
- decode-only limit: PIL decoding alone in one process, times the number of workers.

Usage: python benchmarks/datapath.py [--workers 2] [--jpegs 1200 --pngs 300] > benchmarks/results/datapath_<m>.json
Each loader runs two epochs and is timed on the second (workers are started again every epoch,
as the training loop does).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from synthdet.data.dataset import ManifestDataset, make_transform, view_transform
from synthdet.data.pixelcache import PixelCache
from synthdet.machine import machine_facts

SIZE, BATCH = 224, 64


def fabricate(root: Path, jpegs: int, pngs: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for label, folder, n, (w, h) in ((0, "nature", jpegs, (500, 375)), (1, "ai", pngs, (512, 512))):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
            img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-8, 9, (h, w, 3)), 0, 255)
                                  .astype(np.uint8))  # some texture: a realistic decode cost
            path = root / folder / (f"{i:05d}.png" if label else f"{i:05d}.JPEG")
            img.save(path, **({} if label else {"quality": 90}))
            rows.append({"path": str(path), "label": label, "sha256": ""})
    return pd.DataFrame(rows)


def epoch_rate(dataset, workers: int) -> float:  # noqa: ANN001
    """Images/s of the second of two shuffled epochs."""
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=False)
    for _epoch in range(2):
        t0, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch[0])
        seconds = time.perf_counter() - t0
    return n / seconds


def decode_rate(paths: list[str]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        with Image.open(p) as img:
            img.convert("RGB").load()
    return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jpegs", type=int, default=1200)
    parser.add_argument("--pngs", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = fabricate(Path(tmp) / "tree", args.jpegs, args.pngs)
        naive = datasets.ImageFolder(str(Path(tmp) / "tree"), transform=v2.Compose(
            [v2.RandomResizedCrop(SIZE), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
        result = {"naive_imagefolder": epoch_rate(naive, args.workers)}
        result["project_decoding"] = epoch_rate(ManifestDataset(rows, make_transform(SIZE, train=True)), args.workers)
        cache = PixelCache(Path(tmp) / "cache", rows["path"].tolist(), rows["sha256"].tolist(), SIZE)
        t0 = time.perf_counter()
        cache.build(num_workers=args.workers)
        result["pixel_cache_build"] = len(rows) / (time.perf_counter() - t0)
        cached = ManifestDataset(rows, view_transform(train=True), cache=cache)
        result["project_pixel_cache"] = epoch_rate(cached, args.workers)
        result["project_pixel_cache_no_workers"] = epoch_rate(cached, 0)
        per_process = decode_rate(rows["path"].tolist())
        result["decode_only_per_process"] = per_process
        result["decode_only_limit"] = per_process * args.workers
    figures = {k: round(v, 1) for k, v in result.items()}
    ratios = {"pixel_cache_vs_naive": round(result["project_pixel_cache"] / result["naive_imagefolder"], 2),
              "pixel_cache_no_workers_vs_naive": round(result["project_pixel_cache_no_workers"]
                                                       / result["naive_imagefolder"], 2),
              "decoding_vs_naive": round(result["project_decoding"] / result["naive_imagefolder"], 2),
              "decode_limit_vs_decoding": round(result["decode_only_limit"] / result["project_decoding"], 2)}
    json.dump({"machine": machine_facts(), "setting": {"images": len(rows), "jpegs_500x375_q90": args.jpegs,
                                                       "pngs_512": args.pngs, "batch": BATCH, "size": SIZE,
                                                       "workers": args.workers},
               "images_per_s": figures, "ratios": ratios}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
