"""The whole DVC pipeline on fabricated miniature data, in a scratch copy of the repository."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from synthdet import cli
from synthdet.analysis import sharpness
from synthdet.cli import deep_update, load_profile, make_workspace
from synthdet.datasets.embedded import reproducible
from synthdet.detectors import list_detectors
from tests.conftest import make_embedded_data

ROOT = Path(__file__).resolve().parents[1]
TINY = deep_update(load_profile("smoke", ROOT / "profiles"), {
    "embedded": {"benchmark": {"images_per_subset": 20, "generator_train_images": 64,
                               "subsets": {"ldm": {"classes": 2}}, "content_tests": {"images": 4}}},
    "train": {"input_size": 32},
    "tables": {"subsets": ["ldm", "dcgan"], "class_budgets": ["1x4"]},
    "audit": {"min_images_per_label": 10},
})


GENIMAGE_STAGES = ("tables", "evaluate", "audit")  # with everything upstream of them


def _dvc(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run([str(Path(sys.executable).with_name("dvc")), *args], cwd=ws, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow(minutes=11)
def test_smoke_pipeline_runs_is_idempotent_and_swaps_models(tmp_path, monkeypatch):
    data = make_embedded_data(tmp_path / "fabricated" / "embedded", per_land_class=16)
    monkeypatch.chdir(ROOT)
    ws = make_workspace(tmp_path / "ws", TINY, data=data.parent, copy_data=True)
    _dvc(ws, "add", "data")  # the fabricated data replaces the real data.dvc in this scratch copy
    _dvc(ws, "repro")
    evaluate = json.loads((ws / "metrics/evaluate.json").read_text())
    assert set(evaluate) == {"clean", "lowres_112", "lowres_64", "jpeg_q65", "jpeg_q30", "blur_sigma3", "blur_sigma5"}
    subsets = set(yaml.safe_load((ws / "params.yaml").read_text())["embedded"]["benchmark"]["subsets"])
    assert set(evaluate["clean"]) == subsets | {"faces", "paintings", "mean"}
    assert all(0 <= v["acc"] <= 1 for k, v in evaluate["clean"].items())
    assert (ws / "plots/accuracy_heatmap.png").stat().st_size > 0
    assert json.loads((ws / "metrics/split.json").read_text())["leaks"] == 0
    # calibration: this tiny validation split is too small to fit a temperature, so none is fitted
    train = json.loads((ws / "metrics/train.json").read_text())
    assert train["calibration_images"] < 50 and train["temperature"] == 1.0
    assert train["ece_after"] == train["ece_before"]
    # and it scores a folder of the benchmark's own test images (`synthdet predict`)
    folder = ws / "artifacts/download/benchmark/ldm/val"
    assert cli.main(["predict", str(folder), "--detector", str(ws / "artifacts/train/detector.pt"),
                     "--out", str(tmp_path / "predictions.csv")]) == 0
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert len(predictions) == len(list(folder.rglob("*.png"))) and (predictions["status"] == "ok").all()
    # every generated subset was hashed by the download stage (this fabricated build has no record)
    check = json.loads((ws / "metrics/download.json").read_text())["reproducibility"]
    assert check["status"] == "unrecorded" and set(check["observed"]) == subsets | {"faces", "paintings"}
    assert check["machine"]["pinned_env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    tables = json.loads((ws / "metrics/tables.json").read_text())
    sharp = {sharpness.REALS_BLURRED, sharpness.FAKES_SHARPENED}  # the sharpness counterfactual, per subset
    # resnet50 on ldm and dcgan, npr on ldm, one class-budget run on ldm, the probe's heads on ldm and dcgan
    assert tables["runs"] == 6
    assert set(tables["training_size"]) == {"1x4", "full"}
    assert {"1x4/seen", "1x4/unseen", "1x4/all", "full/all"} <= set(tables["class_subsets"])
    runs = ("resnet50", "npr", "efficientnet_lite0_probe")
    assert set(tables["content_acc"]) == {f"{m}/{s}" for m in runs for s in ("ldm", "faces", "paintings")}
    assert set(tables["detectors_avg_acc"]) == set(runs)
    probe = tables["transfer"]["efficientnet_lite0_probe"]  # trained on every subset: the whole matrix
    assert probe["trained_on"] == 2 and 0 <= probe["off_diagonal_acc"] <= 1 and 0 <= probe["others_auc"] <= 1
    assert tables["transfer"]["npr"]["off_diagonal_acc"] is None  # trained on ldm only
    # the sharpness counterfactual (reals blurred, fakes sharpened): every xgen and zoo run scored the
    # degrade stage's changed test images; the probe's heads and the class budgets did not
    assert set(tables["sharpness_counterfactual_acc_change"]) == {"resnet50/ldm", "resnet50/dcgan", "npr/ldm"}
    assert set(tables["sharpness_counterfactual_acc_change"]["npr/ldm"]) <= sharp
    assert set(tables["sharpness_cross_generator_acc"]["resnet50: table 1 off the diagonal"]) == {"as_is", *sharp}
    changed = pd.read_parquet(ws / "artifacts/degrade/sharpness_matched.parquet")
    assert len(changed) and set(changed["condition"]) <= sharp and set(changed["subset"]) <= set(subsets)
    # table 1 on the sharpness-matched variant: resnet50 (the matched runs) and the probe (its matched
    # heads) trained on each subset of the variant, scored on the variant's test images and the
    # benchmark's; the resnet50 run on ldm and the audit's are one training
    assert set(tables["matched_cross_generator"]) == {"resnet50", "efficientnet_lite0_probe"}
    for cells in tables["matched_cross_generator"].values():
        assert set(cells) == {"stored", "variant", "variant_to_stored"}
    matched = tables["matched_cross_generator"]["resnet50"]
    assert matched["stored"] == pytest.approx(tables["cross_generator"], abs=1e-4)  # table 1 as stored
    assert all(0 <= v <= 1 for cells in matched.values() for v in cells.values())
    variant_rows = pd.read_parquet(ws / "artifacts/degrade/sharpness_matched_variant.parquet")
    # each real's own blur (to a drawn fake's sharpness); a subset whose reals needed none (its tiny
    # generator's fakes sharper than its reals) is as stored; fakes are never changed
    sigma = variant_rows[variant_rows["label"] == 0].groupby("subset")["variant_blur_sigma"].max()
    assert (sigma > 0).any() and (variant_rows.loc[variant_rows["label"] == 1, "variant_blur_sigma"] == 0).all()
    for subset in ("ldm", "dcgan"):
        variant_run = pd.read_parquet(ws / f"artifacts/runs/matched/resnet50__{subset}__s0/scores.parquet")
        on_variant = variant_run[variant_run["condition"] == "sharpness_matched"]
        assert set(on_variant["path"]) == set(variant_rows.loc[variant_rows["split"] == "test", "path"])
        clean = variant_run[variant_run["condition"] == "clean"].set_index("path")["score"].sort_index()
        stored_run = pd.read_parquet(ws / f"artifacts/runs/xgen/resnet50__{subset}__s0/scores.parquet")
        stored = stored_run[stored_run["condition"] == "clean"].set_index("path")["score"].sort_index()
        assert list(clean.index) == list(stored.index)
        # trained on blurred reals: another detector; with no blur the variant is the detector's own view
        # of each image (its pixels), so the same training gives the same detector
        assert np.allclose(clean, stored) == (sigma[subset] == 0), subset
    reused = [r for r in ("reports/runs/matched/resnet50__ldm__s0.ipynb", "reports/08_audit.ipynb")
              if "its weights are reused" in (ws / r).read_text()]
    assert len(reused) == 1, reused
    assert (ws / "plots/tables/cross_generator_matched_resnet50.png").stat().st_size > 0
    features = json.loads((ws / "artifacts/features/efficientnet_lite0/info.json").read_text())
    assert features["width"] == 1280 and features["unreadable"] == 0
    assert (ws / "artifacts/tables/cross_generator_efficientnet_lite0_probe.csv").is_file()
    assert 0 <= tables["cross_generator"]["same_generator_acc"] <= 1
    # the table run that repeats the train stage (resnet50 on ldm, seed 0) took its weights
    assert "its weights are reused" in (ws / "reports/runs/xgen/resnet50__ldm__s0.ipynb").read_text()
    assert "its weights are reused" not in (ws / "reports/runs/xgen/resnet50__dcgan__s0.ipynb").read_text()
    # the audit: nothing in the files tells the labels apart, until the biased variant stores reals as JPEG
    audit = json.loads((ws / "metrics/audit.json").read_text())
    stored = [v["metadata_auc"] for v in audit["bias_scores"]["as stored"].values()]
    assert stored and {auc for auc in stored if auc == auc} == {0.5}  # NaN: a content subset too small to probe
    assert audit["bias_scores"]["biased variant"]["ldm"]["metadata_auc"] > 0.9
    assert set(audit["counterfactual_acc_change"]["biased variant"]) == {"fakes_jpeg_q96", *sharp}
    assert set(audit["counterfactual_acc_change"]["as stored"]) == sharp  # same format and size: no other
    assert set(audit["counterfactual_auc_change"]["as stored"]) == sharp
    matched = audit["sharpness"]["as stored"]
    assert set(matched) == set(subsets) and all(m["real_images"] > 0 and m["fake_images"] > 0 for m in matched.values())
    assert set(audit["bias_recovery"]) == {"clean benchmark (the train stage)", "biased variant",
                                           "biased variant, debiased protocol"}
    # the sharpness-matched variant: audited (its probes and sharpness), and the detector trained on it
    assert set(audit["bias_scores"]["sharpness-matched variant"]) == set(audit["bias_scores"]["as stored"])
    assert set(audit["sharpness"]["sharpness-matched variant"]) == set(subsets)
    assert set(audit["sharpness_matched"]) == {"clean benchmark (the train stage)", "sharpness-matched variant"}
    assert not audit["counterfactual_acc_change"].get("sharpness-matched variant")  # it is that change already
    matched_rows = pd.read_parquet(ws / "artifacts/degrade/sharpness_matched_variant.parquet")  # degrade's
    variant = pd.read_parquet(ws / "artifacts/audit/biased_variant_manifest.parquet")
    assert set(matched_rows["format"]) == {"PNG"} and len(matched_rows) == len(variant)  # both: every usable image
    assert set(variant.loc[variant["label"] == 0, "jpeg_quality"]) == {96}
    assert set(variant.loc[variant["label"] == 1, "format"]) == {"PNG"}
    # ImagiNet's tracks on the embedded benchmark, written in ImagiNet's format and read back
    codes = json.loads((ws / "artifacts/imaginet/data/dataset/annotations/codes.json").read_text())
    assert set(codes["family"].values()) == {"gan", "vae", "vq", "diffusion", "real"}
    tracks = json.loads((ws / "metrics/imaginet.json").read_text())
    assert set(tracks["table3"]) == {"selfcon"}
    assert set(tracks["table3"]["selfcon"]) == {"gan", "vae", "vq", "diffusion", "Mean"}
    assert set(tracks["table7"]["acc"]) == {"gan", "vae", "vq", "diffusion", "Mean"}
    assert set(tracks["figure4"]) == {"jpeg_q50", "zoom_r0.5"} and set(tracks["figure3"]) == {"photos"}
    assert {"selfcon (resnet18)", "npr"} <= set(tracks["table6_ms_per_image"])
    first = (ws / "dvc.lock").read_text()

    again = _dvc(ws, "repro")  # only the source check runs (it always does); nothing else, nothing changes
    assert re.findall(r"Running stage '([^']+)'", again.stdout) == ["source"]
    assert (ws / "dvc.lock").read_text() == first

    _a_pulled_download_is_the_built_one_and_is_not_rebuilt(ws, tmp_path / "pulled", data.parent)
    _every_finished_run_keeps_its_weights_once(ws)
    _every_imported_file_is_a_dependency(ws)
    _rerunning_train_and_evaluate_gives_the_same_numbers(ws, evaluate)

    # another JPEG quality than the paper's: a new column, never dropped (table 3 needs the ldm runs
    # only: the other training subset and the class budgets are left out of this experiment; the
    # evaluate stage's jpeg_q50 is checked below, when the model swaps rerun it)
    _dvc(ws, "exp", "run", "-S", "degrade.jpeg_quality=[50]", "-S", "tables.subsets=[ldm]",
         "-S", "tables.class_budgets=[]", "tables")
    tables = json.loads((ws / "metrics/tables.json").read_text())
    assert {k.split("/")[1] for k in tables["degradation_acc"]} == {
        "clean", "lowres_112", "lowres_64", "jpeg_q50", "blur_sigma3", "blur_sigma5"}
    assert "jpeg_q50" in (ws / "artifacts/tables/degradations.csv").read_text()

    # another detector: the design card's `dvc exp run -S model=swin_t`, as written (first: random
    # weights, the default), and npr from a local timm ResNet-50 file (`-S train.pretrained=<file>`),
    # rerun train and evaluate with it; every other registered name runs the same two stages' code
    # directly (`synthdet stage train|evaluate`, what the notebooks call), which saves minutes of
    # notebook starts. From npr on (npr, resnet50, resnet50_nodown, spec) the backbone starts from that file.
    import timm

    conditions = set(evaluate) - {"jpeg_q65", "jpeg_q30"} | {"jpeg_q50"}
    resnet50 = tmp_path / "resnet50_timm.pth"
    torch.save(timm.create_model("resnet50").state_dict(), resnet50)
    monkeypatch.chdir(ws)
    for name in sorted(list_detectors(), key=lambda n: n != "swin_t"):
        # `evaluate` as the target: train.* is a param of every table run too, which would all rerun
        if name == "swin_t":
            _dvc(ws, "exp", "run", "-S", "model=swin_t", "evaluate")
        elif name == "npr":
            _dvc(ws, "exp", "run", "-S", f"model={name}", "-S", f"train.pretrained={resnet50}", "evaluate")
        else:
            params = yaml.safe_load((ws / "params.yaml").read_text())
            (ws / "params_model.yaml").write_text(yaml.safe_dump({**params, "model": name}))
            for stage in ("train", "evaluate"):
                assert cli.main(["stage", stage, "--params", "params_model.yaml"]) == 0
        if name in ("npr", "swin_t"):
            saved = torch.load(ws / "artifacts/train/detector.pt", weights_only=True)["config"]["pretrained"]
            assert saved == (False if name == "swin_t" else str(resnet50))
        assert json.loads((ws / "metrics/train.json").read_text())["model"] == name
        assert torch.load(ws / "artifacts/train/detector.pt", weights_only=True)["config"]["model"] == name
        assert set(pd.read_parquet(ws / "artifacts/evaluate/scores.parquet")["model"]) == {name}
        assert set(json.loads((ws / "metrics/evaluate.json").read_text())) == conditions
    monkeypatch.chdir(ROOT)
    shutil.rmtree(ws)  # ~4 GB of checkpoints and DVC cache; a failing test keeps its workspace


def _a_pulled_download_is_the_built_one_and_is_not_rebuilt(ws: Path, clone: Path, data: Path) -> None:
    """The download stage's outputs pushed to a (local-folder) remote and pulled into a fresh copy of
    the repository with that run's dvc.lock: `dvc repro download` there builds nothing, and every
    subset has the built one's hash (the way to the recorded bytes on a machine that builds others)."""
    remote = clone.parent / "remote"
    _dvc(ws, "remote", "add", "-d", "store", str(remote))
    _dvc(ws, "push", "download")
    built = json.loads((ws / "metrics/download.json").read_text())["reproducibility"]["observed"]
    make_workspace(clone, TINY, data=data, copy_data=True)
    _dvc(clone, "add", "data")
    shutil.copy2(ws / "dvc.lock", clone / "dvc.lock")  # what a user's `git pull` of the recording run brings
    _dvc(clone, "remote", "add", "-d", "store", str(remote))
    _dvc(clone, "pull", "download")
    out = _dvc(clone, "repro", "download").stdout
    assert set(re.findall(r"Running stage '([^']+)'", out)) == {"source", "code"}  # code: its outputs were not pulled
    assert "Stage 'download' didn't change, skipping" in out
    benchmark = clone / "artifacts/download/benchmark"
    assert {s: reproducible.subset_hash(benchmark / s) for s in built} == built
    assert json.loads((clone / "metrics/download.json").read_text())["reproducibility"]["observed"] == built
    shutil.rmtree(clone)


def _every_imported_file_is_a_dependency(ws: Path) -> None:
    """Edit a source file: once the code stage has run (it depends on the whole source tree),
    `dvc status` reports exactly the stages whose code imports that file (as the stage table
    computes it), each through its module's code file; restoring the file restores the status."""
    from synthdet.stages import paths, table

    stages = table.all_stages()
    for rel in ("src/synthdet/stages/split.py", "src/synthdet/training/loop.py", "src/synthdet/metrics.py"):
        path = ws / rel
        original = path.read_text()
        path.write_text(original + "\n# touched\n")
        _dvc(ws, "repro", "-s", "code")
        status = json.loads(_dvc(ws, "status", "--json").stdout)
        path.write_text(original)
        changed = {name.split("@")[0] for name in status if name != "source"}
        assert changed == {s.name for s in stages if s.code_dep and rel in s.source_files()}, rel
        for name, entries in status.items():
            if name != "source":
                deps = {f for entry in entries if isinstance(entry, dict) for f in entry.get("changed deps", {})}
                stage = next(s for s in stages if s.name == name.split("@")[0])
                assert deps == {paths.stage_code(stage.module)}, name
        _dvc(ws, "repro", "-s", "code")
    restored = json.loads(_dvc(ws, "status", "--json").stdout or "{}")
    assert restored == {"source": ["always changed"]}, "restoring the sources restores the status"


def _rerunning_train_and_evaluate_gives_the_same_numbers(ws: Path, evaluate: dict) -> None:
    """Forced (no run cache), from scratch (no checkpoint): the notebooks really execute."""
    timing = {"seconds", "images_per_s"}
    train = {k: v for k, v in json.loads((ws / "metrics/train.json").read_text()).items() if k not in timing}
    shutil.rmtree(ws / "artifacts/train/checkpoints")
    for stage in ("train", "evaluate"):
        out = _dvc(ws, "repro", "-f", "-s", stage).stdout
        assert f"Running stage '{stage}'" in out
    assert {k: v for k, v in json.loads((ws / "metrics/train.json").read_text()).items() if k not in timing} == train
    assert json.loads((ws / "metrics/evaluate.json").read_text()) == evaluate


def _every_finished_run_keeps_its_weights_once(ws: Path) -> None:
    """No resume state is left once every stage has finished; each run's detector.pt is one file
    with DVC's cache (cache.type links it there) and the repeated ResNet-50 run shares the train stage's."""
    assert not list((ws / "artifacts").rglob("last.pt")) and not list((ws / "artifacts").rglob("best.pt"))
    detectors = list((ws / "artifacts").rglob("detector.pt"))
    assert len(detectors) >= 8 and all(p.stat().st_nlink >= 2 for p in detectors)  # linked, not copied
    assert (ws / "artifacts/runs/xgen/resnet50__ldm__s0/detector.pt").samefile(ws / "artifacts/train/detector.pt")
    assert (ws / "artifacts/train/detector.pt").stat().st_mode & 0o222 == 0  # DVC protects a linked output
    # the checkpoint folder keeps the finished run as a link to the same file: a forced rerun (DVC
    # deletes the output folder first) takes it instead of training, and scores the same
    run = "zoo/npr__ldm__s0"
    assert (ws / "artifacts/checkpoints" / run / "detector.pt").samefile(ws / "artifacts/runs" / run / "detector.pt")
    before = pd.read_parquet(ws / "artifacts/runs" / run / "scores.parquet")
    _dvc(ws, "repro", "-f", "-s", "zoo@npr-0")
    report = (ws / "reports/runs" / f"{run}.ipynb").read_text()
    assert "checkpoints/zoo/npr__ldm__s0/detector.pt: this run (configuration, data and code) has finished" in report
    after = pd.read_parquet(ws / "artifacts/runs" / run / "scores.parquet")
    pd.testing.assert_frame_equal(after.drop(columns="train_seconds"), before.drop(columns="train_seconds"))
    _dvc(ws, "repro", "tables")  # the rerun's scores carry its own train_seconds: bring the tables up to date


def _assert_sharpness_audited(audit: dict, subsets: list[str] | tuple[str, ...]) -> None:
    """The audit's sharpness statistics (medians over each subset's training views, both labels) and
    the counterfactual they set, for every subset of a dataset that is not the embedded one."""
    stats = audit["sharpness"]["as stored"]
    assert set(stats) == set(subsets)
    for s in stats.values():
        assert s["real_images"] > 0 and s["fake_images"] > 0
        assert s["real_laplacian_var"] > 0 and s["fake_laplacian_var"] > 0
        assert 0 < s["real_high_freq_share"] < 1 and 0 < s["fake_high_freq_share"] < 1
    changes = audit["counterfactual_acc_change"]["as stored"]
    assert {sharpness.REALS_BLURRED, sharpness.FAKES_SHARPENED} <= set(changes)
    assert set(changes[sharpness.REALS_BLURRED]) <= set(subsets)


def _workspace_for(tmp_path: Path, profile: str, overrides: dict) -> Path:
    """A scratch repository running ``profile`` (plus ``overrides``); data/ holds fabricated
    embedded data because the download stage depends on it whatever the dataset."""
    data = make_embedded_data(tmp_path / "fabricated" / "embedded")
    small = {"train": {"input_size": 32, "epochs": 1, "batch_size": 8, "num_workers": 0, "pretrained": False},
             "evaluate": {"batch_size": 32, "num_workers": 0, "n_bootstrap": 20},
             "tables": {"detectors": ["npr"], "n_bootstrap": 20}, "audit": {"min_images_per_label": 10},
             "imaginet": {**load_profile("smoke", ROOT / "profiles")["imaginet"], "methods": ["selfcon"],
                          "max_train_images": None, "loco": {"contents": ["faces"], "train_images": 8, "epochs": 1},
                          "timing": {"size": 64, "repeats": 1, "detectors": ["npr"]}}}
    small["imaginet"]["baseline"] = {**small["imaginet"]["baseline"], "nodown": False, "calibration_size": 64}
    ws = make_workspace(tmp_path / "ws", deep_update(deep_update(load_profile(profile, ROOT / "profiles"), small),
                                                     overrides), data=data.parent, copy_data=True)
    _dvc(ws, "add", "data")
    return ws


@pytest.mark.slow(minutes=5)
@pytest.mark.skipif(shutil.which("zip") is None, reason="needs Info-ZIP `zip` (apt-get install zip)")
def test_genimage_archives_run_the_same_tables(tmp_path, monkeypatch):
    from synthdet.fsutil import file_digest
    from tests.conftest import make_genimage_tree

    subsets = ("imagenet_ai_0419_sdv4", "imagenet_glide")
    tree = make_genimage_tree(tmp_path / "tree", subsets=subsets, per_folder=12, real_qualities=(96, 75))
    (tree / subsets[0] / "train/ai/000_sdv4_99999.png").write_bytes(b"")  # a zero-byte PNG, as ADM ships
    jpg = next((tree / subsets[1] / "val/nature").glob("*.JPEG"))
    jpg.write_bytes(jpg.read_bytes()[:300])  # truncated
    source = tmp_path / "GenImage"
    source.mkdir()
    for s in subsets:
        subprocess.run(["zip", "-q", "-r", "-s", "64k", str(source / f"{s}.zip"), s], cwd=tree, check=True)
    checksums = tmp_path / "checksums.csv"
    checksums.write_text("originalFilename,md5Checksum\n"
                         + "".join(f"{p.name},{file_digest(p, 'md5')}\n" for p in sorted(source.iterdir())))
    monkeypatch.chdir(ROOT)
    ws = _workspace_for(tmp_path, "genimage", {
        "data": {"genimage": {"source": str(source), "checksums": str(checksums)}},
        "tables": {"subsets": list(subsets), "class_budgets": ["2x2"]},
    })
    # GenImage's stages (ImagiNet's run on GenImage's photos-only layout in test_imaginet_tracks.py)
    _dvc(ws, "repro", *GENIMAGE_STAGES)
    download = json.loads((ws / "metrics/download.json").read_text())
    assert download["images"] == 2 * 4 * 12 + 1 and download["usable"] == download["images"] - 2
    quarantine = (ws / "artifacts/split/quarantine.csv").read_text()
    assert "000_sdv4_99999.png" in quarantine and jpg.name in quarantine
    assert (source / "extracted" / subsets[0] / "train/ai").is_dir()  # extracted beside the archives
    tables = json.loads((ws / "metrics/tables.json").read_text())
    assert tables["runs"] == 2 + 1 + 1 + 2  # resnet50 on both subsets, npr on sdv4, one class budget, 2 probe heads
    assert set(tables["training_size"]) == {"2x2", "full"} and tables["content_acc"] == {}
    evaluate = json.loads((ws / "metrics/evaluate.json").read_text())
    assert set(evaluate["clean"]) == {*subsets, "mean"} and "jpeg_q30" in evaluate
    assert download["index_cache"] == {"cached": 0, "decoded": download["images"]}
    # the audit flags GenImage's bias: JPEG reals, PNG fakes (the counterfactual JPEG-compresses the
    # fakes at the reals' most common quality); no biased variant outside the embedded benchmark
    audit = json.loads((ws / "metrics/audit.json").read_text())
    assert set(audit["bias_scores"]) == {"as stored"}
    assert all(audit["bias_scores"]["as stored"][s]["metadata_auc"] > 0.9 for s in subsets)
    assert set(audit["counterfactual_acc_change"]["as stored"]) == {"fakes_jpeg_q75", sharpness.REALS_BLURRED,
                                                                     sharpness.FAKES_SHARPENED}
    assert "bias_recovery" not in audit
    _assert_sharpness_audited(audit, subsets)  # the blur shortcut measured on real data (issue 28)

    # a re-downloaded part (same bytes, new mtime): the source check sees it, `dvc status` then reports
    # the download stage changed, and its rerun decodes no image again (the index cache)
    part = sorted(source.glob(f"{subsets[0]}.z*"))[0]
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 10**9))
    assert "download" not in json.loads(_dvc(ws, "status", "--json").stdout)  # DVC cannot see outside
    _dvc(ws, "repro", "-s", "source")
    changed = json.loads(_dvc(ws, "status", "--json").stdout)["download"]
    assert {"changed deps": {"artifacts/source/fingerprint.json": "modified"}} in changed
    rerun = _dvc(ws, "repro", *GENIMAGE_STAGES).stdout
    assert re.findall(r"Running stage '([^']+)'", rerun) == ["source", "download"]  # same manifest: no more
    again = json.loads((ws / "metrics/download.json").read_text())
    assert again["index_cache"] == {"cached": download["images"], "decoded": 0}

    # the debiased protocol: reals kept only at JPEG q96, fakes compressed at 96, images in the size
    # window, centre-cropped, balanced per class; the train stage and every table run train that way
    # (one table run here: `tables` would rerun them all)
    plain = json.loads((ws / "metrics/train.json").read_text())
    run = f"xgen@resnet50-{subsets[0]}-0"
    plain_run = pd.read_parquet(ws / f"artifacts/runs/xgen/resnet50__{subsets[0]}__s0/scores.parquet")
    _dvc(ws, "exp", "run", "-S", "data.debias.enabled=true", "-S", "data.debias.size_window=[32,64]", "train", run)
    debiased = json.loads((ws / "metrics/train.json").read_text())
    splits = pd.read_parquet(ws / "artifacts/split/splits.parquet")
    train_reals = splits[(splits["subset"] == subsets[0]) & (splits["split"] == "train") & (splits["label"] == 0)]
    assert debiased["debiased"] and not plain["debiased"]
    assert 0 < debiased["train_images_per_label"] <= (train_reals["jpeg_quality"] == 96).sum()
    assert debiased["train_images_per_label"] < plain["train_images_per_label"]
    debiased_run = pd.read_parquet(ws / f"artifacts/runs/xgen/resnet50__{subsets[0]}__s0/scores.parquet")
    assert debiased_run["train_images"].iloc[0] == debiased["train_images_per_label"]
    assert plain_run["train_images"].iloc[0] == plain["train_images_per_label"]
    assert len(debiased_run) == len(plain_run)  # the test set is left as it is
    shutil.rmtree(ws)


@pytest.mark.slow(minutes=5)
def test_imaginet_annotations_run_the_same_tables(tmp_path, monkeypatch):
    from tests.conftest import SEVEN_ZIP, add_ready_testset, make_imaginet_dataset, pack_7z

    root = make_imaginet_dataset(tmp_path / "ImagiNet")
    monkeypatch.chdir(ROOT)
    ws = _workspace_for(tmp_path, "imaginet", {"data": {"imaginet": {"root": str(root)}},
                                               "tables": {"subsets": ["photos", "faces"]}})
    _dvc(ws, "repro", "tables", "imaginet_tables", "audit")  # both papers' tables, and the audit of ImagiNet
    manifest = pd.read_parquet(ws / "artifacts/download/manifest.parquet")
    test = manifest[manifest.split == "test"]
    assert set(test["width"]) == {256} and len(test) == 16  # the perturbed copies, 256 x 256
    tables = json.loads((ws / "metrics/tables.json").read_text())
    # resnet50 on two of the four content types, npr on all four, the probe's heads on the two and on all
    assert tables["runs"] == 2 + 1 + 3
    assert set(tables["detectors_avg_acc"]) == {"npr", "efficientnet_lite0_probe"} and tables["training_size"] == {}
    assert tables["transfer"]["efficientnet_lite0_probe"]["trained_on"] == 2  # photos and faces ("all" aside)
    assert 0 <= tables["degradation_avg_acc"]["npr"] <= 1
    tracks = json.loads((ws / "metrics/imaginet.json").read_text())  # ImagiNet's own codes and families
    assert set(tracks["table3"]["selfcon"]) == {"gan", "sd", "dalle3", "Mean"}
    assert set(tracks["table7"]["acc"]) == {"gan", "sd", "dalle3", "Mean"} and set(tracks["figure3"]) == {"faces"}
    # the audit reads ImagiNet's content types as GenImage's subsets: file facts, probes and the
    # sharpness statistics and counterfactual of each, no variant (those are the embedded benchmark's)
    audit = json.loads((ws / "metrics/audit.json").read_text())
    assert set(audit["bias_scores"]) == {"as stored"} and "sharpness_matched" not in audit
    _assert_sharpness_audited(audit, sorted(set(manifest[manifest.split == "train"]["subset"])))
    if SEVEN_ZIP is None:  # reported, not silent: everything above has passed
        shutil.rmtree(ws)
        pytest.skip("the packed-distribution part needs the 7-Zip command (make setup installs Debian's 7zip); "
                    "the rest of this test passed")
    # the packed distribution: a split 7z holding the sources and the ready WebP test set listed in
    # test_all.txt; the ingest stages extract it and use that test set as it is
    packed = add_ready_testset(make_imaginet_dataset(tmp_path / "packed"), per_cell=2)
    first_part = pack_7z(packed, tmp_path / "ImagiNet-7z", volume="2m")
    _dvc(ws, "exp", "run", "-S", f"data.imaginet.root={first_part.parent}",
         "-S", "data.imaginet.annotations.test=annotations/test_all.txt", "split")
    manifest = pd.read_parquet(ws / "artifacts/download/manifest.parquet")
    test = manifest[manifest.split == "test"]
    assert len(test) == 16 and (test["format"] == "WEBP").all() and (test["status"] == "ok").all()
    assert test["path"].str.startswith(str(first_part.parent / "extracted/testset/")).all()
    report = json.loads((ws / "metrics/download.json").read_text())["imaginet"]
    assert report["test_set"].startswith("used as it is: test_all.txt")
    assert set(pd.read_parquet(ws / "artifacts/split/splits.parquet")["split"]) >= {"train", "val", "test"}
    shutil.rmtree(ws)
