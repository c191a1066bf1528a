"""The GPU paths, on a real GPU: they run where CUDA is present and are reported as skipped
(with the reason) everywhere else, never mocked. The CPU tests cover the same code with
``device="cpu"``; these check what only a GPU exercises: device placement, bf16/fp16 autocast
with its scaler, pinned memory, scoring on ``cuda``, and DDP over NCCL on two GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from synthdet.training.checkpoint import load_detector
from synthdet.training.config import TrainConfig
from synthdet.training.loop import train_detector
from synthdet.training.scoring import score
from tests.conftest import noise_image

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="no CUDA device: the GPU tests run only on a GPU machine")

ROOT = Path(__file__).resolve().parents[1]


def _rows(folder: Path, n: int = 32) -> pd.DataFrame:
    rows = []
    for i in range(n):
        a = np.asarray(noise_image(i, (32, 32))).copy()
        if i % 2:  # fakes: a checkerboard, learnable in a few steps
            a[::2, ::2] = 255
        path = folder / f"img{i:02d}.png"
        Image.fromarray(a).save(path)
        rows.append({"path": str(path), "label": i % 2})
    return pd.DataFrame(rows)


def _cfg(**kw) -> TrainConfig:
    base = dict(model="resnet18", input_size=32, epochs=3, batch_size=8, lr=1e-3, num_workers=0, seed=0, amp=True)
    return TrainConfig(**{**base, **kw})


def test_amp_training_on_cuda_learns_and_its_detector_scores_alike_on_cuda_and_cpu(tmp_path):
    rows = _rows(tmp_path)
    result = train_detector(rows.iloc[:24], rows.iloc[24:], _cfg(), tmp_path / "run", device="cuda")
    losses = [h["train_loss"] for h in result["history"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]  # autocast (and its scaler) trained it
    model, cfg = load_detector(tmp_path / "run/detector.pt", device="cpu")  # saved from the GPU, read anywhere
    assert all(p.device.type == "cpu" for p in model.parameters())
    on_cpu = score(model, rows, input_size=cfg["input_size"], device="cpu")["fake_probability"].to_numpy()
    on_gpu = score(tmp_path / "run/detector.pt", rows, device="cuda")["fake_probability"].to_numpy()
    # scoring on the GPU runs under bf16 (or fp16) autocast: the same decisions, probabilities close
    assert np.abs(on_gpu - on_cpu).max() < 0.05
    assert ((on_gpu >= 0.5) == (on_cpu >= 0.5)).mean() >= 0.9


def test_gpu_training_is_placed_on_the_gpu_and_leaves_no_resume_state(tmp_path):
    rows = _rows(tmp_path)
    before = torch.cuda.max_memory_allocated()
    train_detector(rows.iloc[:24], rows.iloc[24:], _cfg(epochs=1), tmp_path / "run", device="cuda")
    assert torch.cuda.max_memory_allocated() > before  # the network and batches went to the GPU
    assert [p.name for p in (tmp_path / "run/checkpoints").glob("*.pt")] == ["detector.pt"]  # no resume state


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs two GPUs")
def test_two_gpu_ddp_over_nccl_trains_and_writes_once(tmp_path):
    from tests.test_ddp import EPOCHS, _workspace

    ws = _workspace(tmp_path / "ws")
    params = (ws / "params.yaml").read_text().replace("device: cpu", "device: cuda")
    (ws / "params.yaml").write_text(params)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "entry.py"]
    done = subprocess.run(cmd, cwd=ws, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(  # a mutated copy (scripts/mutants.py) first
                              p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)})
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(ws / "artifacts/train/detector.pt", weights_only=True)
    assert len(saved["result"]["history"]) == EPOCHS
    assert [p.name for p in (ws / "artifacts/train/checkpoints").glob("*.pt")] == ["detector.pt"]
