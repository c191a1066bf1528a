"""The benchmark scripts run (at toy sizes here: timings belong in benchmarks/results/, not in tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from synthdet.detectors import list_detectors

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_every_measurement_at_toy_sizes_on_the_cpu():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu.py"), "--tiny", "--device", "cpu"],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["machine"]["tiny"] is True and result["machine"]["precision"] == "fp32"
    assert result["train_images_per_s_synthetic"] > 0 and result["train_images_per_s_data_path"] > 0
    assert result["eval_images_per_s_resnet50"] > 0 and result["data_path_workers"] == 0
    assert set(result["inference_ms_per_image"]) == set(list_detectors())
    assert all(ms > 0 for ms in result["inference_ms_per_image"].values())


def test_datapath_benchmark_runs_on_a_few_files():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/datapath.py"), "--jpegs", "6", "--pngs", "2"],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["setting"]["images"] == 8 and all(v > 0 for v in result["images_per_s"].values())
    assert set(result["ratios"]) >= {"pixel_cache_vs_naive", "decode_limit_vs_decoding"}
