"""GPU throughput: training images/s (ResNet-50, 224 px, bf16, channels_last) on synthetic tensors
and through the project's data path, evaluation images/s, and inference ms/image of every
registered detector at 448x448 (ImagiNet's Table 6 setting).

Usage on a GPU machine:
    python benchmarks/gpu.py > benchmarks/results/gpu_<gpu name>.json
Targets (issue 13, one H100): training >= 2,500 images/s end to end with the data path; inference
at 448x448, batch 64: ResNet-50 <= 1 ms/image, ResNet-50-nodown <= 5 ms/image (ImagiNet reports
25.1 ms on an RTX 4090). ``--tiny`` runs every measurement at toy sizes on whatever device there
is (the test suite's smoke test: it checks the script runs, not how fast).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from synthdet.data.dataset import ManifestDataset, make_transform
from synthdet.detectors import create_detector, list_detectors
from synthdet.imaginet import tracks as imaginet_tracks
from synthdet.training.runtime import resolve_device, resolve_workers


@dataclass(frozen=True)
class Sizes:
    train_size: int = 224
    train_batch: int = 256
    train_steps: int = 30
    infer_size: int = 448
    infer_batch: int = 64
    infer_steps: int = 20
    warmup: int = 5
    files: int = 2048  # fabricated GenImage-like files for the data path


TINY = Sizes(train_size=32, train_batch=4, train_steps=2, infer_size=32, infer_batch=2, infer_steps=1, warmup=1,
             files=16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _timed(step, n: int, warmup: int, device: torch.device) -> float:  # noqa: ANN001
    """Seconds for ``n`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return time.perf_counter() - t0


def fabricate(folder: Path, n: int) -> pd.DataFrame:
    """GenImage-like files: 3/4 ImageNet-size JPEG reals (500x375, q90-96), 1/4 512 px PNG fakes."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        fake = i % 4 == 0
        w, h = (512, 512) if fake else (500, 375)
        base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
        path = folder / (f"{i}.png" if fake else f"{i}.jpg")
        img.save(path, **({} if fake else {"quality": int(rng.integers(90, 97))}))
        rows.append({"path": str(path), "label": int(fake)})
    return pd.DataFrame(rows)


def train_throughput(device: torch.device, s: Sizes, rows: pd.DataFrame | None) -> float:
    """Images/s of ResNet-50 training steps: synthetic tensors (``rows`` None) or the data path."""
    model = create_detector("resnet50", img_size=s.train_size).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    if rows is None:
        x = torch.randn(s.train_batch, 3, s.train_size, s.train_size, device=device)
        y = torch.randint(0, 2, (s.train_batch,), device=device)
        batches = itertools.repeat((x, y))
    else:
        ds = ManifestDataset(rows, make_transform(s.train_size, train=True))
        gpu = device.type == "cuda"
        loader = DataLoader(ds, batch_size=s.train_batch, shuffle=True, drop_last=True, pin_memory=gpu,
                            num_workers=resolve_workers("auto", device), persistent_workers=gpu)
        batches = (batch[:2] for _ in itertools.count() for batch in loader)  # epoch after epoch

    def step() -> None:
        x, y = next(batches)
        x = x.to(device, non_blocking=True, memory_format=torch.channels_last)
        with _autocast(device):
            loss = loss_fn(model(x).float(), y.float().to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    return s.train_batch * s.train_steps / _timed(step, s.train_steps, s.warmup, device)


def inference_ms(name: str, device: torch.device, size: int, batch: int, steps: int, warmup: int) -> float:
    """ms per image, timed as ImagiNet's Table 6 stage times it (median of ``steps`` batches)."""
    return imaginet_tracks.inference_ms(create_detector(name, img_size=size), size, batch, steps, warmup, device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: a smoke test, not a timing")
    args = parser.parse_args()
    device = resolve_device(args.device)
    s = TINY if args.tiny else Sizes()
    torch.backends.cudnn.benchmark = True
    facts = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
             "torch": torch.__version__, "tiny": args.tiny, "sizes": s.__dict__, "precision": "bf16 autocast"
             if device.type == "cuda" else "fp32", "memory_format": "channels_last"}
    result: dict = {"machine": facts}
    result["train_images_per_s_synthetic"] = round(train_throughput(device, s, None), 1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = fabricate(Path(tmp), s.files)
        result["train_images_per_s_data_path"] = round(train_throughput(device, s, rows), 1)
        result["data_path_workers"] = resolve_workers("auto", device)
    eval_ms = inference_ms("resnet50", device, s.train_size, s.train_batch, s.infer_steps, s.warmup)
    result["eval_images_per_s_resnet50"] = round(1000 / eval_ms, 1)
    result["inference_ms_per_image"] = {
        name: round(inference_ms(name, device, s.infer_size, s.infer_batch, s.infer_steps, s.warmup), 3)
        for name in list_detectors()}
    result["inference_setting"] = f"{s.infer_size}x{s.infer_size}, batch {s.infer_batch}"
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
