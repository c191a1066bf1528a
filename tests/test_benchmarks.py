"""The benchmark scripts run (at toy sizes here: timings belong in benchmarks/results/, not in tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_perturbation_benchmark_compares_processes_on_the_same_bytes():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/perturb.py"), "--images", "4"],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["images"] == 4 and result["same_bytes"] is True
    assert "1 process" in result["images_per_s"] and all(v > 0 for v in result["images_per_s"].values())


def test_datapath_benchmark_runs_on_a_few_files():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/datapath.py"), "--jpegs", "6", "--pngs", "2"],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["setting"]["images"] == 8 and all(v > 0 for v in result["images_per_s"].values())
    assert set(result["ratios"]) >= {"pixel_cache_vs_naive", "decode_limit_vs_decoding"}
    # the ratios it reports are the ones its measurements give (rounded to 2 decimals)
    rate = result["images_per_s"]
    ratios = result["ratios"]
    assert ratios["pixel_cache_vs_naive"] == pytest.approx(rate["project_pixel_cache"] / rate["naive_imagefolder"],
                                                           rel=0.02)
    assert ratios["decode_limit_vs_decoding"] == pytest.approx(rate["decode_only_limit"] / rate["project_decoding"],
                                                               rel=0.02)


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


def test_readme_tables_come_from_the_tables_outputs_and_the_params(tmp_path):
    import pandas as pd
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    tables = tmp_path / "artifacts/tables"
    tables.mkdir(parents=True)
    pd.DataFrame([{"model": "resnet50", "own_acc": 0.97, "own_auc": 0.99, "others_acc": 0.707, "others_auc": 0.8,
                   "off_diagonal_acc": 0.617, "off_diagonal_auc": 0.7, "trained_on": 7},
                  {"model": "effnet_lite0", "own_acc": 0.99, "own_auc": 1.0, "others_acc": 0.753, "others_auc": 0.85,
                   "off_diagonal_acc": None, "off_diagonal_auc": None, "trained_on": 1}]).to_csv(
        tables / "transfer.csv", index=False)
    subsets = params["tables"]["subsets"]
    pd.DataFrame([{"train_subset": t, "subset": s, "acc": 1.0 if t == s else 0.625, "auc": 0.9}
                  for t in subsets for s in subsets]).to_csv(tables / "cross_generator_efficientnet_lite0_probe.csv",
                                                             index=False)
    models = ("resnet50", "effnet_lite0")
    pd.DataFrame([{"model": m, "subset": s, "acc": 0.5} for m in models for s in subsets]).to_csv(
        tables / "detectors.csv", index=False)
    pd.DataFrame([{"model": m, "condition": c, "acc": 0.75 if c == "clean" else 0.5} for m in models
                  for c in ("clean", "jpeg_q30", "blur_sigma5")]).to_csv(tables / "degradations.csv", index=False)
    pd.DataFrame([{"model": m, "subset": s, "acc": 1.0} for m in models for s in ("ldm", "faces")]).to_csv(
        tables / "content.csv", index=False)
    (tmp_path / "metrics").mkdir()
    pd.DataFrame([{"train_subset": t, "subset": s, "acc": 0.9 if t == s else 0.5}
                  for t in subsets for s in subsets]).to_csv(tables / "cross_generator_matched_resnet50.csv",
                                                             index=False)
    (tmp_path / "metrics/tables.json").write_text(json.dumps({"sharpness_cross_generator_acc": {
        "resnet50: table 1 off the diagonal": {"as_is": 0.625, "reals_blurred": 0.6, "fakes_sharpened": 0.55}},
        "matched_cross_generator": {"resnet50": {
            "stored": {"same_generator_acc": 0.97, "cross_generator_acc": 0.7},
            "variant": {"same_generator_acc": 0.9, "cross_generator_acc": 0.55},
            "variant_to_stored": {"same_generator_acc": 0.8, "cross_generator_acc": 0.65}}}}))
    sharp = {"real_laplacian_var": 0.0123, "fake_laplacian_var": 0.000456}
    (tmp_path / "metrics/audit.json").write_text(json.dumps({
        "bias_scores": {"as stored": {"ldm": {"metadata_auc": 0.5, "lowlevel_auc": 0.989,
                                              "lowlevel_no_sharpness_auc": 0.871}},
                        "sharpness-matched variant": {"ldm": {"metadata_auc": 0.5, "lowlevel_auc": 0.612,
                                                              "lowlevel_no_sharpness_auc": 0.593}}},
        "sharpness": {"as stored": {"ldm": sharp},
                      "sharpness-matched variant": {"ldm": {**sharp, "real_laplacian_var": 0.0004}}},
        "sharpness_matched": {"sharpness-matched variant": {"clean_acc": 0.71, "matched_acc": 0.93}}}))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/readme_tables.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any("resnet50" in line and "random (from scratch)" in line and "0.707" in line for line in lines)
    assert any("effnet_lite0" in line and "ImageNet (efficientnet_lite0), fine-tuned" in line for line in lines)
    header = next(line for line in lines if "clean" in line and "jpeg_q30" in line)
    assert header.index("clean") < header.index("jpeg_q30") < header.index("blur_sigma5") < header.index("Avg")
    # the share of the accuracy above chance kept under each counterfactual: 0.1 / 0.125 and 0.05 / 0.125
    assert any("table 1 off the diagonal" in line and "80%" in line and "40%" in line for line in lines)
    # the sharpness-matched variant: the probe and the medians as stored and matched; the run trained on it
    assert any(line.startswith("| ldm") and "0.989" in line and "0.612" in line and "0.0123 / 0.000456" in line
               and "0.0004 / 0.000456" in line and line.index("0.612") < line.index("0.871") < line.index("0.593")
               for line in lines)
    assert any("sharpness-matched variant" in line and "0.710" in line and "0.930" in line for line in lines)
    # table 1 on the variant, and the share of table 1's cross-generator accuracy above chance each keeps
    assert any(line.startswith("| ldm") and "0.500" in line and "0.900" in line for line in lines)
    assert any("sharpness-matched variant" in line and "0.550" in line and "25%" in line for line in lines)
    assert any("trained on the variant, tested as stored" in line and "0.650" in line and "75%" in line
               for line in lines)
    ldm = next(line for line in lines if line.startswith("| ldm") and "0.625" in line)
    assert ldm.rstrip(" |").endswith(f"{(1 + 0.625 * (len(subsets) - 1)) / len(subsets):.3f}")  # the row's mean


def test_lock_roundtrip_measures_a_lock_with_and_without_its_source_entries(tmp_path):
    import yaml

    src = [{"path": f"src/synthdet/m{i}.py", "hash": "md5", "md5": f"{i:032x}", "size": 100 + i} for i in range(30)]
    lock = {"schema": "2.0", "stages": {f"s{k}": {"cmd": "synthdet stage x", "deps": [
        {"path": "artifacts/in.parquet", "hash": "md5", "md5": "a" * 32, "size": 9}, *src]} for k in range(5)}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/lock_roundtrip.py"), str(tmp_path / "dvc.lock")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["stages"] == 5 and result["bytes"]["one code file"] < result["bytes"]["every source file"] / 3
    assert set(result["roundtrip_s"]) == {"every source file", "one code file"}
