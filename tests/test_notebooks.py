import json
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_source_notebooks_are_committed_clean_and_papermill_ready():
    assert len(NOTEBOOKS) >= 5
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", path
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{path} has outputs"
        assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in code) == 1, path
        assert "sys.path" not in "".join("".join(c["source"]) for c in code), path
        ids = [c.get("id") for c in nb["cells"]]  # nbformat 4.5 requires them (papermill warns, later fails)
        assert all(ids) and len(set(ids)) == len(ids), path
        nbformat.validate(nbformat.reads(path.read_text(), as_version=4))


def test_every_dvc_stage_runs_its_notebook_and_declares_params():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages)[:3] == ["source", "detector_code", "download"]
    assert {"download", "split", "train", "degrade", "evaluate"} <= set(stages)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in stages.items():
        if name == "source":  # a check without a notebook: it runs on every `dvc repro`
            assert stage["cmd"] == "synthdet stage source" and stage["always_changed"] is True
            continue
        if name == "detector_code":  # hashes only, nothing to show: a command, rerun when a detector's file changes
            assert stage["cmd"] == "synthdet stage detector_code" and "src/synthdet/detectors/npr.py" in stage["deps"]
            continue
        assert stage["cmd"].count("papermill notebooks/") == 1, name
        nb = stage["cmd"].split("papermill ")[1].split()[0]
        assert (ROOT / nb).exists() and nb in stage["deps"], name
        for key in stage["params"]:
            node = params
            for part in key.split("."):
                node = node[part]  # KeyError: a declared param that params.yaml lacks


def test_profiles_override_only_existing_params():
    from synthdet.cli import load_profile, set_flags

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for path in sorted((ROOT / "profiles").glob("*.yaml")):
        flags = set_flags(load_profile(path.stem, ROOT / "profiles"))
        assert flags and flags[0] == "-S"
        for flag in flags[1::2]:
            node = params
            for part in flag.split("=")[0].split("."):
                assert part in node, f"{path.name}: {flag} sets a key params.yaml does not have"
                node = node[part]
