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


def test_metrics_comparison_prints_a_moved_number_and_ignores_timings(tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    for folder, acc, seconds in ((before, 0.75, 10.0), (after, 0.75, 12.5)):
        folder.mkdir()
        (folder / "evaluate.json").write_text(json.dumps({"clean": {"ldm": {"acc": acc, "auc": float("nan")}}}))
        (folder / "train.json").write_text(json.dumps({"seconds": seconds, "images_per_s": seconds * 3,
                                                       "history": [{"loss": 0.5, "seconds": seconds}]}))
    script = [sys.executable, str(ROOT / "benchmarks/compare_metrics.py"), str(before), str(after)]
    same = subprocess.run(script, capture_output=True, text=True, timeout=60)
    assert same.returncode == 0 and "0 difference(s) over 2" in same.stdout, same.stdout + same.stderr
    (after / "evaluate.json").write_text(json.dumps({"clean": {"ldm": {"acc": 0.7, "auc": float("nan")}}}))
    (after / "audit.json").write_text("{}")
    moved = subprocess.run(script, capture_output=True, text=True, timeout=60)
    assert moved.returncode == 1
    assert "evaluate.json:/clean/ldm/acc: 0.75 -> 0.7" in moved.stdout and "audit.json: only in" in moved.stdout
