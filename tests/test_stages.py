"""The stage table: dvc.yaml is generated from it and checked; each stage reads only the params it
declares and depends on every file it imports; the package's layers import only downwards."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from synthdet import cli
from synthdet.codegraph import DETECTORS, import_closure
from synthdet.data.dataset import IMAGENET_MEAN, IMAGENET_STD, make_transform
from synthdet.data.imageio import fit_to_input
from synthdet.genimage.tables import over_seeds, wide
from synthdet.stages import code, paths, runs, table
from synthdet.stages.base import select
from synthdet.transforms.degrade import natural_order, scaled_conditions, write_degraded
from tests.conftest import noise_image

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_dvc_yaml_is_the_generated_one(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert cli.main(["stages", "--check"]) == 0, capsys.readouterr().out


def test_a_hand_edit_of_dvc_yaml_is_caught(tmp_path, monkeypatch, capsys):
    edited = (ROOT / "dvc.yaml").read_text().replace("- artifacts/code/stage/split\n", "", 1)
    (tmp_path / "dvc.yaml").write_text(edited)
    monkeypatch.chdir(ROOT)
    assert cli.main(["stages", "--check", "--dvc-yaml", str(tmp_path / "dvc.yaml")]) == 1
    captured = capsys.readouterr()
    assert "+    - artifacts/code/stage/split" in captured.out and "never edit it by hand" in captured.err


# one value of every matrix item, to build a matrix stage's config
MATRIX_ITEMS = {"seed": 0, "model": "resnet50", "subset": "ldm", "budget": "2x20", "method": "selfcon",
                "content": "photos", "backbone": "efficientnet_lite0"}


def _configs(params: dict) -> list:
    out = []
    for stage in table.all_stages():
        module = __import__(stage.module, fromlist=["Config"])
        view = select(params, stage.params)
        if stage.matrix:
            items = {name: MATRIX_ITEMS[name] for name, _ in stage.matrix}
            out.append(module.Config.from_params(view, stage.name, **items))
        else:
            out.append(module.Config.from_params(view))
    return out


def test_every_stage_config_reads_only_the_params_it_declares():
    configs = _configs(PARAMS)  # built from the declared keys alone: an undeclared read is a KeyError
    assert len(configs) == len(table.all_stages())
    with pytest.raises(KeyError, match="missing key 'split.on_leak'"):
        select({"seed": 0, "split": {"val_fraction": 0.1}}, ("seed", "split.on_leak"))


def test_every_profile_gives_valid_stage_configs():
    profiles = sorted((ROOT / "profiles").glob("*.yaml"))
    assert {p.stem for p in profiles} >= {"smoke", "paper", "genimage", "imaginet"}
    for profile in profiles:
        overrides = yaml.safe_load(profile.read_text()) or {}
        configs = _configs(cli.deep_update(PARAMS, overrides))  # a bad value raises here
        assert len(configs) == len(table.all_stages()), profile.name
        # what the profile sets reaches the stage that reads it (train.epochs: the train stage's config)
        if "epochs" in overrides.get("train", {}):
            train = next(c for c in configs if type(c).__module__.endswith(".train"))
            assert train.train["epochs"] == overrides["train"]["epochs"], profile.name


# Imported once before the fork, so that each stage module's own import costs milliseconds; none
# of them imports synthdet, so the synthdet modules a child holds are the ones its stage loaded.
_PRELOAD = ("numpy", "pandas", "PIL.Image", "torch", "torchvision", "timm", "sklearn.metrics", "tqdm.auto",
            "yaml", "seaborn", "matplotlib.pyplot")
_LOADED_BY_FORKED_CHILD = """
import importlib, json, os, sys
for name in sys.argv[2:]:
    importlib.import_module(name)
assert not [n for n in sys.modules if n.split('.')[0] == 'synthdet'], 'a preloaded library imported synthdet'
loaded = {}
for module in sys.argv[1].split(','):
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        importlib.import_module(module)
        files = sorted(m.__file__ for n, m in sys.modules.items()
                       if n.split('.')[0] == 'synthdet' and getattr(m, '__file__', None))
        os.write(write, json.dumps(files).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        loaded[module] = json.loads(pipe.read() or 'null')
    os.wait()
print(json.dumps(loaded))
"""


def test_each_stage_depends_on_every_file_it_imports_at_run_time():
    """The import graph read from the source covers what Python really loads (checked after
    importing the stage module, alone in a fresh process, and calling nothing)."""
    modules = sorted({stage.module for stage in table.all_stages()})
    child = subprocess.run([sys.executable, "-c", _LOADED_BY_FORKED_CHILD, ",".join(modules), *_PRELOAD],
                           capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-3000:]
    loaded_by = json.loads(child.stdout)
    for stage in table.all_stages():
        loaded = loaded_by[stage.module]
        assert loaded, f"importing {stage.module} failed in its forked process:\n{child.stderr[-3000:]}"
        declared = {str(p) for p in import_closure(stage.module, () if stage.detectors is None else (DETECTORS,))}
        if stage.detectors is not None:  # what only the registry's package imports: the detectors' code files
            declared |= {str(p) for p in import_closure(DETECTORS)}
        missing = sorted(set(loaded) - declared)
        assert not missing, f"{stage.name} imports {missing} but does not depend on them"
        deps = set(stage.entry()["deps"])
        assert paths.stage_code(stage.module) in deps or not stage.code_dep, stage.name
        assert not any(d.startswith("src/") for d in deps) or stage.name == "code"  # one entry per stage, not 30
        assert stage.notebook in deps or stage.cli
        if stage.code_dep:  # what the code stage writes into the file the stage depends on
            assert set(code.stage_code(stage)["files"]) == set(stage.source_files()), stage.name


def test_an_edit_to_one_detector_reruns_only_the_stages_that_build_it(tmp_path, monkeypatch):
    """NPR's file is in the code of no stage but imaginet_tables (which times every detector); an
    edit to it changes only NPR's detector code file (and imaginet_tables'), which only the runs that
    build NPR depend on. An edit to the code every timm network shares moves each such file."""

    stages = {s.name: s.entry() for s in table.all_stages()}
    assert {s.name for s in table.all_stages() if "src/synthdet/detectors/npr.py" in s.source_files()} == {
        "code", "imaginet_tables"}
    assert "artifacts/code/detector/${item.model}" in stages["zoo"]["deps"]
    assert "artifacts/code/detector/${model}" in stages["train"]["deps"]
    cfg = code.Config.from_params(PARAMS)
    assert {"npr", "resnet50", "imaginet_selfcon", *PARAMS["tables"]["detectors"]} <= set(cfg.names)

    def hashes() -> dict[str, dict]:
        return {name: code.builder_code(name) for name in cfg.names}

    before = hashes()
    read = Path.read_bytes
    for edited, moved in (("npr.py", {"npr"}), ("timm_backbones.py", {"resnet50", "deit_s", "swin_t"})):
        monkeypatch.setattr(Path, "read_bytes", lambda self, edited=edited: read(self) + b"#"
                            if self.name == edited else read(self))
        after = hashes()
        assert {n for n in before if after[n] != before[n]} == moved, edited
    monkeypatch.undo()
    # the stage writes one file per name, inside its own folder
    monkeypatch.chdir(tmp_path)
    code.run(PARAMS)
    written = json.loads((tmp_path / paths.detector_code("npr")).read_text())
    assert written == before["npr"] and "src/synthdet/detectors/npr.py" in written["files"]
    train = json.loads((tmp_path / paths.stage_code("synthdet.stages.train")).read_text())
    assert train["module"] == "synthdet.stages.train" and "src/synthdet/training/loop.py" in train["files"]
    assert "src/synthdet/detectors/npr.py" not in train["files"]  # the registry's imports are the detectors' files


def test_dvc_reruns_only_the_stage_whose_file_in_a_folder_output_changed(tmp_path):
    """What the code stage relies on, with the DVC installed: a stage that depends on one file of
    another stage's folder output reruns when that file changes, not when a sibling does."""
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "params.yaml").write_text("names: [a, b]\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "code": {"cmd": "mkdir -p code && cp src_a code/a && cp src_b code/b", "deps": ["src_a", "src_b"],
                 "outs": ["code"]},
        "use": {"matrix": {"name": "${names}"}, "cmd": "cp code/${item.name} out_${item.name}",
                "deps": ["code/${item.name}"], "outs": ["out_${item.name}"]}}}))
    for name in "ab":
        (tmp_path / f"src_{name}").write_text("1")

    def repro() -> set[str]:
        out = subprocess.run([*dvc, "repro"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}

    assert repro() == {"code", "use@a", "use@b"}
    (tmp_path / "src_a").write_text("2")
    assert repro() == {"code", "use@a"}


def test_run_names_are_spelled_once_and_never_collide():
    assert paths.run_name("zoo", "resnet50", "ldm", 0) != paths.run_name("xgen", "resnet50", "ldm", 0)
    assert paths.run_name("ablate", "resnet50", "ldm", 1, "8x20") == "ablate/resnet50__ldm__8x20__s1"
    outs = [o for s in runs.STAGES for o in s.entry()["outs"]]
    assert len(outs) == len(set(map(str, outs)))
    cfg = runs.Config.from_params(PARAMS, "xgen", seed=0, model="resnet50", subset="ldm")
    rendered = runs.STAGES[0].entry()["outs"][0].replace("${item.model}", "resnet50").replace(
        "${item.subset}", "ldm").replace("${item.seed}", "0")
    assert rendered == f"artifacts/runs/{cfg.name}"


def test_the_clean_condition_is_exactly_what_the_detector_sees(tmp_path):
    img = noise_image(0, (97, 61))
    seen = make_transform(32, train=False)(img)
    by_hand = torch.from_numpy(np.array(fit_to_input(img, 32))).permute(2, 0, 1).float() / 255
    by_hand = (by_hand - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(seen, by_hand, atol=1e-6)
    # a degraded copy is stored at the input size: the transform does not resample it again
    path = tmp_path / "a.png"
    img.save(path)
    test = pd.DataFrame([{"path": str(path), "label": 1, "subset": "s", "generator": "g", "content": "c",
                          "class": None}])
    conds = scaled_conditions(32, 224, [112], [65], [3])
    table_ = write_degraded(test, tmp_path / "out", 32, conds)
    for row in table_.itertuples():
        stored = Image.open(row.path).convert("RGB")
        if row.condition == "clean":
            assert row.path == str(path)
        else:
            assert stored.size == (32, 32) and fit_to_input(stored, 32) is stored
    low = Image.open(table_[table_.condition == "lowres_112"].path.iloc[0]).convert("RGB")
    assert np.array_equal(np.asarray(low), np.asarray(conds[1].apply(fit_to_input(img, 32))))
    # each row records the paper's value and the one applied at the input size
    values = table_.set_index("condition")[["paper_value", "effective_value"]]
    assert values.loc["lowres_112"].tolist() == [112, 16] and values.loc["jpeg_q65"].tolist() == [65, 65]
    assert values.loc["blur_sigma3", "effective_value"] == pytest.approx(3 * 32 / 224, abs=1e-3)


def test_conditions_keep_their_natural_order():
    names = ["blur_sigma5", "jpeg_q30", "clean", "lowres_64", "jpeg_q50", "blur_sigma3", "lowres_112", "jpeg_q65"]
    assert natural_order(names) == ["clean", "lowres_112", "lowres_64", "jpeg_q65", "jpeg_q50", "jpeg_q30",
                                    "blur_sigma3", "blur_sigma5"]
    assert [c.name for c in scaled_conditions(64, 224, [112, 64], [50], [3])] == natural_order(
        ["jpeg_q50", "blur_sigma3", "lowres_64", "lowres_112", "clean"])


def test_tables_keep_unknown_columns_and_no_std_from_one_seed():
    cells = pd.DataFrame({"model": ["a", "a"], "condition": ["jpeg_q50", "jpeg_q30"], "seed": [0, 0],
                          **{m: [0.5, 0.6] for m in ("acc", "real_acc", "fake_acc", "auc", "ap", "acc_ci_low",
                                                     "acc_ci_high")}})
    one = over_seeds(cells, ["model", "condition"])
    assert "acc_std" not in one
    assert list(wide(one, "model", "condition", order=["jpeg_q65", "jpeg_q30"]).columns) == [
        "jpeg_q30", "jpeg_q50", "Avg"]
    two = over_seeds(pd.concat([cells, cells.assign(seed=1, acc=[0.7, 0.8])]), ["model", "condition"])
    assert two["acc_std"].round(4).tolist() == [0.1414, 0.1414]


def test_stage_cli_twin_names_missing_items(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert cli.main(["stage", "xgen", "seed=0", "--params", str(ROOT / "params.yaml")]) == 2
    assert "needs a model" in capsys.readouterr().err
    assert json.loads(json.dumps(table.get("xgen@resnet50-ldm-0").entry()["matrix"]))["model"] == \
        "${tables.xgen_models}"
    # every matrix family is checked by its stage name and item (ImagiNet's runs and the probes too)
    assert cli.main(["stage", "imaginet_train", "method=nope", "--params", str(ROOT / "params.yaml")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert cli.main(["stage", "features", "backbone=nope", "--params", str(ROOT / "params.yaml")]) == 2
    assert "probe backbone 'nope'" in capsys.readouterr().err


def test_a_params_file_with_a_renamed_key_says_what_it_is_called_now(tmp_path):
    from synthdet.stages.base import load_params

    old = {**PARAMS, "tables": {**PARAMS["tables"], "train_subset": "ldm"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ValueError, match=r"params.yaml: tables.train_subset is now tables.detector_subset"):
        load_params(tmp_path / "params.yaml")
    assert load_params(ROOT / "params.yaml")["tables"]["detector_subset"] == PARAMS["train_subset"] == "ldm"


def test_a_pullable_stage_caches_every_output_and_refuses_an_uncached_one():
    """The download stage: every output (its metrics too) in DVC's cache, so `dvc pull download`
    restores the whole stage; a pullable stage with an uncached output is refused when written."""
    from synthdet.stages.base import Out, Stage

    download = next(s for s in table.all_stages() if s.name == "download")
    entry = download.entry()
    assert download.pullable and all(isinstance(o, str) for o in entry["outs"] + entry["metrics"])
    train = next(s for s in table.all_stages() if s.name == "train").entry()
    assert all(isinstance(m, dict) and m[next(iter(m))] == {"cache": False} for m in train["metrics"])
    bad = Stage(name="x", notebook="", module="synthdet.stages.source", params=(),
                outs=(Out("a"), Out("b", cache=False, persist=True)), pullable=True)
    with pytest.raises(ValueError, match="stage x: pullable, so every output must be cached"):
        bad.entry()
