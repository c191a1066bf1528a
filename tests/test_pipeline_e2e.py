"""The whole DVC pipeline on fabricated miniature data, in a scratch copy of the repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthdet.cli import deep_update, load_profile, make_workspace
from tests.conftest import make_embedded_data

ROOT = Path(__file__).resolve().parents[1]
TINY = deep_update(load_profile("smoke", ROOT / "profiles"), {
    "embedded": {"benchmark": {"images_per_subset": 20, "generator_train_images": 64}},
    "train": {"input_size": 32},
})


def _dvc(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run([str(Path(sys.executable).with_name("dvc")), *args], cwd=ws, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_smoke_pipeline_runs_is_idempotent_and_swaps_models(tmp_path, monkeypatch):
    data = make_embedded_data(tmp_path / "fabricated" / "embedded")
    monkeypatch.chdir(ROOT)
    ws = make_workspace(tmp_path / "ws", TINY, data=data.parent, copy_data=True)
    _dvc(ws, "add", "data")  # the fabricated data replaces the real data.dvc in this scratch copy
    _dvc(ws, "repro")
    evaluate = json.loads((ws / "metrics/evaluate.json").read_text())
    assert set(evaluate) == {"clean", "lowres_112", "lowres_64", "jpeg_q65", "jpeg_q30", "blur_sigma3", "blur_sigma5"}
    subsets = set(yaml.safe_load((ws / "params.yaml").read_text())["embedded"]["benchmark"]["subsets"])
    assert set(evaluate["clean"]) == subsets | {"mean"}
    assert all(0 <= v["acc"] <= 1 for k, v in evaluate["clean"].items())
    assert (ws / "plots/accuracy_heatmap.png").stat().st_size > 0
    assert json.loads((ws / "metrics/split.json").read_text())["leaks"] == 0
    tables = json.loads((ws / "metrics/tables.json").read_text())
    assert tables["runs"] == 3  # resnet50 on ldm and dcgan, npr on ldm
    assert set(tables["detectors_avg_acc"]) == {"resnet50", "npr"}
    assert 0 <= tables["cross_generator"]["same_generator_acc"] <= 1
    first = (ws / "dvc.lock").read_text()

    again = _dvc(ws, "repro")
    assert "Running stage" not in again.stdout and (ws / "dvc.lock").read_text() == first

    shutil.rmtree(ws / "artifacts/evaluate")  # re-running a stage gives the same numbers
    _dvc(ws, "repro", "-s", "evaluate")
    assert json.loads((ws / "metrics/evaluate.json").read_text()) == evaluate

    _dvc(ws, "exp", "run", "-S", "model=swin_t")
    assert json.loads((ws / "metrics/train.json").read_text())["model"] == "swin_t"
