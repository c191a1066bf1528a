"""ImagiNet's tracks on a small fabricated GenImage-layout split table: the dataset written in
ImagiNet's format and read back, every ImagiNet stage's code, and the metrics against direct
computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image, ImageFilter
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from synthdet.cli import deep_update, load_profile
from synthdet.data.manifest import normalise
from synthdet.imaginet import dataset as imaginet
from synthdet.imaginet import tracks as T
from synthdet.imaginet.augment import apply_condition, condition_names, condition_transform
from synthdet.imaginet.relational import embedding_map, relational_loss
from synthdet.training import scoring
from synthdet.training.checkpoint import load_detector
from tests.conftest import noise_image

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {"dcgan": "gan", "vae": "vae", "ldm": "diffusion"}
CONTENTS = ["photo", "painting", "face", "misc"]


def _splits(folder: Path, per_cell: int = 6) -> pd.DataFrame:
    """Reals of four content types shared by three generator subsets (a GenImage layout: every
    subset lists its reals), fakes blurred and tinted per family, 40 px."""
    rows, k = [], 0
    reals = []
    for content in CONTENTS:
        for j in range(per_cell * 2):
            path = folder / "reals" / f"{content}{j}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            noise_image(100 + k, (40, 40)).save(path)
            split = ("train", "train", "train", "val", "test", "test")[j % 6]
            reals.append({"path": path.as_posix(), "label": 0, "content": content, "split": split,
                          "sha256": f"real{k}", "generator": None, "family": None})
            k += 1
    for subset, family in FAMILIES.items():
        rows += [{**r, "subset": subset} for r in reals]
        for j in range(len(reals)):
            path = folder / subset / f"{j}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img = noise_image(1000 + k, (40, 40)).filter(ImageFilter.GaussianBlur(1 + list(FAMILIES).index(subset)))
            img.save(path)
            rows.append({"path": path.as_posix(), "label": 1, "content": "mixed" if subset != "ldm" else "photo",
                         "split": reals[j]["split"], "sha256": f"{subset}{j}", "generator": subset, "family": family,
                         "subset": subset})
            k += 1
    return normalise(pd.DataFrame(rows).assign(status="ok"))


def _params(tmp: Path) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = deep_update(params, load_profile("smoke", ROOT / "profiles"))
    return deep_update(params, {"imaginet": {"methods": ["selfcon", "grag2021"], "perturb": {"size": 40},
                                             "baseline": {"calibration_size": 40},
                                             "loco": {"train_images": 20, "contents": ["photos"]},
                                             "timing": {"size": 32, "detectors": ["npr"]}},
                                "train": {"input_size": 32, "batch_size": 8}, "evaluate": {"batch_size": 32}})


def test_condition_views():
    img = noise_image(3, (40, 40))
    assert apply_condition(img, "clean", 40) is img
    zoomed = apply_condition(img, "zoom_r0.5", 40)
    assert zoomed.size == (40, 40)
    expected = img.crop((10, 10, 30, 30)).resize((40, 40), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(zoomed), np.asarray(expected))
    assert apply_condition(img, "jpeg_q50", 40).size == (40, 40)
    with pytest.raises(ValueError, match="unknown test condition"):
        apply_condition(img, "blur", 40)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        apply_condition(img, "zoom_r1.5", 40)
    assert condition_names([50, 90], [0.5, 0.75]) == ["clean", "jpeg_q90", "jpeg_q50", "zoom_r0.75", "zoom_r0.5"]


def test_origin_and_model_id_tables_match_direct_computations():
    rng = np.random.default_rng(0)
    n = 60
    scores = pd.DataFrame({"method": "m", "label": np.r_[np.zeros(n), np.ones(2 * n)].astype(int),
                           "family": ["real"] * n + ["gan"] * n + ["sd"] * n})
    scores["p_synthetic"] = np.clip(scores["label"] * 0.3 + rng.uniform(0, 0.7, len(scores)), 0, 1)
    table = T.origin_table(scores).set_index("family")
    gan = scores[scores["family"].isin(["real", "gan"])]
    pred = gan["p_synthetic"] >= 0.5
    direct = (pred[gan["label"] == 1].mean() + (~pred[gan["label"] == 0]).mean()) / 2
    assert table.loc["gan", "acc"] == pytest.approx(direct)
    assert table.loc["gan", "auc"] == pytest.approx(roc_auc_score(gan["label"], gan["p_synthetic"]))
    thresholds = np.unique(gan["p_synthetic"])
    fake, real = gan["label"] == 1, gan["label"] == 0
    best = max(((gan["p_synthetic"] >= t)[fake].mean() + (gan["p_synthetic"] < t)[real].mean()) / 2 for t in thresholds)
    assert table.loc["gan", "best_acc"] == pytest.approx(best)
    assert table.loc["Mean", "auc"] == pytest.approx(table.loc[["gan", "sd"], "auc"].mean())
    # model identification: synthetic rows only, accuracy per true family, macro one-vs-rest AUC
    synthetic = scores[scores["label"] == 1].copy()
    synthetic["p_gan"] = rng.uniform(0, 1, len(synthetic))
    synthetic["p_sd"] = 1 - synthetic["p_gan"]
    synthetic["model_pred"] = np.where(synthetic["p_gan"] > 0.5, "gan", "sd")
    ident, auc = T.model_id_table(pd.concat([scores.iloc[:n], synthetic]), ["gan", "sd"])
    per = {f: (synthetic.loc[synthetic.family == f, "model_pred"] == f).mean() for f in ("gan", "sd")}
    expected = {**per, "Mean": np.mean(list(per.values()))}
    assert dict(zip(ident["class"], ident["acc"], strict=True)) == pytest.approx(expected)
    assert auc == pytest.approx(roc_auc_score(synthetic["family"] == "sd", synthetic["p_sd"]))


def test_relational_loss_is_equation_3_and_the_map_is_deterministic():
    x, y = torch.randn(5, 4), torch.randn(5, 4)
    b = 5
    direct = sum((1 - 0.3) / b**2 * float(((x[i] - y[i]) ** 2).sum()) for i in range(b))
    direct += sum(0.3 / b**2 * (float(((y[i] - y[j]) ** 2).sum()) - float(((x[i] - x[j]) ** 2).sum())) ** 2
                  for i in range(b) for j in range(b))
    assert float(relational_loss(x, y, 0.3)) == pytest.approx(direct, rel=1e-5)
    features = np.r_[np.random.default_rng(1).normal(0, 1, (30, 16)), np.random.default_rng(2).normal(4, 1, (30, 16))]
    first = embedding_map(features, [0.0, 0.5, 1.0], steps=60, seed=0)
    again = embedding_map(features, [0.0, 0.5, 1.0], steps=60, seed=0)
    assert first.coordinates.shape == (60, 2) and np.array_equal(first.coordinates, again.coordinates)
    assert first.alpha in (0.0, 0.5, 1.0) and len(first.search) == 3
    centre_a, centre_b = first.coordinates[:30].mean(0), first.coordinates[30:].mean(0)
    spread = first.coordinates.std(0).mean()
    assert np.linalg.norm(centre_a - centre_b) > spread  # two well-separated clusters stay apart in 2-D


@pytest.mark.slow(minutes=0.1)
def test_imaginet_stages_on_a_genimage_layout(tmp_path, monkeypatch):
    from synthdet.stages import imaginet_data, imaginet_runs, imaginet_tables, paths

    monkeypatch.chdir(tmp_path)
    Path(paths.PAPER).symlink_to(ROOT / paths.PAPER)
    splits = _splits(Path("images"))
    Path(paths.SPLITS).parent.mkdir(parents=True)
    splits.to_parquet(paths.SPLITS)
    params = _params(tmp_path)
    imaginet_data.run(params)
    # written in ImagiNet's format, read back by ImagiNet's reader with the codes beside it
    folder = Path(imaginet_data.FOLDER) / "dataset/annotations"
    codes = imaginet.Codes.read(folder / imaginet.CODES_FILE)
    assert list(codes.family.values()) == ["diffusion", "gan", "vae", "real"]
    train = imaginet.read_annotations(folder / "train_annotations.txt")
    assert (train["label"] == 0).sum() == 4 * 6 and (train["label"] == 1).sum() == 3 * 4 * 6
    assert set(train.loc[train["label"] == 1, "family"]) == {"gan", "vae", "diffusion"}
    rows = pd.read_parquet(imaginet_data.ROWS)
    reals = rows[rows["label"] == 0]
    assert reals["relpath"].is_unique  # each real once, though three subsets list it
    assert reals["split"].value_counts().to_dict() == {"train": 24, "test": 16, "calibration": 6}
    assert set(rows["content"]) == {"photos", "paintings", "faces", "uncategorized"}
    calibration = rows[rows["split"] == "calibration"]
    assert (calibration["label"] == 0).sum() == (calibration["label"] == 1).sum() > 0  # balanced
    assert calibration.loc[calibration["label"] == 1, "family"].value_counts().nunique() == 1  # and per family
    test = rows[rows["split"] == "test"]
    assert test["path"].str.startswith(f"{imaginet_data.FOLDER}/perturbed/").all()
    assert all(Image.open(p).size == (40, 40) for p in test["path"])
    assert (Path(imaginet_data.FOLDER) / "perturbed" / imaginet.PERTURBED_LIST).is_file()
    for method in params["imaginet"]["methods"]:
        imaginet_runs.run(params, "train", method=method)
    for content in params["imaginet"]["loco"]["contents"]:
        imaginet_runs.run(params, "loco", content=content)
    selfcon = pd.read_parquet(Path(imaginet_runs.run_dir("train", "selfcon")) / imaginet_runs.SCORES)
    assert set(selfcon["condition"]) == {"clean", "jpeg_q50", "zoom_r0.5"}
    assert len(selfcon) == len(test) + 2 * (test["label"] == 1).sum()  # Figure 4's conditions: synthetic only
    assert {"p_diffusion", "p_gan", "p_vae", "model_pred"} <= set(selfcon.columns)
    features = np.load(Path(imaginet_runs.run_dir("train", "selfcon")) / imaginet_runs.FEATURES)
    assert features.shape == (len(test), 512)  # resnet18's pooled features (the smoke profile's backbone)
    skipped = imaginet_runs.run(params, "loco", content="cartoons")  # a content type the data lacks (GenImage: all
    assert skipped.metrics["skipped"].startswith("the data has no 'cartoons' images")  # photos): an empty run, said so
    assert pd.read_parquet(Path(imaginet_runs.run_dir("loco", "cartoons")) / imaginet_runs.SCORES).empty
    loco = pd.read_parquet(Path(imaginet_runs.run_dir("loco", "photos")) / imaginet_runs.SCORES)
    assert loco["train_images"].iloc[0] == 20 and len(loco) == len(test)
    # an external test set in ImagiNet's own format and codes (Tables 4-5): paths relative to its root
    external = Path("external")
    (external / "annotations").mkdir(parents=True)
    lines = []
    mixed = pd.concat([test[test["label"] == 0].head(3), test[test["label"] == 1].head(3)])
    for k, r in enumerate(mixed.itertuples()):
        Image.open(r.path).save(external / f"{k}.png")
        lines.append(f"./{k}.png,{r.label},0,{1 if r.label else 4},{3 if r.label else 8}")  # photos; SD V2.1 or real
    (external / "annotations/test.txt").write_text("\n".join(lines) + "\n")
    params["imaginet"]["external_tests"] = {"mine": str(external / "annotations/test.txt")}
    result = imaginet_tables.run(params)
    outside = pd.read_csv(Path(imaginet_tables.FOLDER) / "tables4_5_external.csv")
    assert set(outside["test_set"]) == {"mine"} and set(outside["family"]) == {"sd", "Mean"}
    metrics = json.loads(Path(paths.metrics_file("imaginet")).read_text())
    assert set(metrics["table3"]) == {"selfcon", "grag2021"}
    assert set(metrics["table3"]["selfcon"]) == {"diffusion", "gan", "vae", "Mean"}
    assert set(metrics["table7"]["acc"]) == {"diffusion", "gan", "vae", "Mean"}
    assert 0 <= metrics["table7"]["macro_auc"] <= 1
    assert set(metrics["figure3"]) == {"photos"}
    # the numbers, not only their keys: every score row carries its image's truth (the data stage's
    # rows), and each table is recomputed here from those rows with sklearn alone
    truth = test.set_index("path")[["label", "family", "content"]]
    for scored in (selfcon[selfcon["condition"] == "clean"], loco):
        assert (scored.set_index("path")[["label", "family", "content"]] == truth.loc[scored["path"]]).all().all()
    # and each row's score is its own image's: one image per family scored alone gives the row's number
    picked = test.groupby("family").head(1)
    alone = scoring.score(Path(imaginet_runs.run_dir("loco", "photos")) / "detector.pt", picked, device="cpu")
    assert np.allclose(alone["fake_probability"], loco.set_index("path").loc[picked["path"], "score"], atol=1e-5)
    net, saved = load_detector(Path(imaginet_runs.run_dir("train", "selfcon")) / imaginet_runs.DETECTOR)
    alone = scoring.score(net, picked, input_size=saved["input_size"], classes=saved["model_classes"], device="cpu",
                          image_transform=condition_transform("clean", params["imaginet"]["baseline"]
                                                              ["calibration_size"]))
    mine = selfcon[selfcon["condition"] == "clean"].set_index("path").loc[picked["path"]]
    assert np.allclose(alone["fake_probability"], mine["p_synthetic"], atol=1e-5)
    assert (alone["model_pred"].to_numpy() == mine["model_pred"].to_numpy()).all()
    clean = pd.concat([pd.read_parquet(Path(imaginet_runs.run_dir("train", m)) / imaginet_runs.SCORES)
                       for m in params["imaginet"]["methods"]]).query("condition == 'clean'")
    for method, rows_m in clean.groupby("method"):
        cells = metrics["table3"][method]
        for family in ("diffusion", "gan", "vae"):
            pair = rows_m[(rows_m["label"] == 0) | (rows_m["family"] == family)]
            y, p = pair["label"].to_numpy(), pair["p_synthetic"].to_numpy()
            assert cells[family]["acc"] == pytest.approx(balanced_accuracy_score(y, p >= 0.5))
            assert cells[family]["auc"] == pytest.approx(roc_auc_score(y, p))
        assert cells["Mean"]["auc"] == pytest.approx(np.mean([cells[f]["auc"] for f in ("diffusion", "gan", "vae")]))
    fakes = selfcon[(selfcon["condition"] == "clean") & (selfcon["label"] == 1)]
    for family, g in fakes.groupby("family"):
        assert metrics["table7"]["acc"][family] == pytest.approx((g["model_pred"] == family).mean())
    one_vs_rest = [roc_auc_score(fakes["family"] == f, fakes[f"p_{f}"]) for f in ("diffusion", "gan", "vae")]
    assert metrics["table7"]["macro_auc"] == pytest.approx(np.mean(one_vs_rest))
    held = loco[loco["content"] == "photos"]
    y, s = held["label"].to_numpy(), held["score"].to_numpy()
    assert metrics["figure3"]["photos"]["held_out_acc"] == pytest.approx(balanced_accuracy_score(y, s >= 0.5))
    assert metrics["figure3"]["photos"]["held_out_auc"] == pytest.approx(roc_auc_score(y, s))
    assert set(metrics["table6_ms_per_image"]) == {"npr", "selfcon (resnet18)", "grag2021 (resnet18)"}
    assert all(v > 0 for v in metrics["table6_ms_per_image"].values())
    for name in ("table3_origin.png", "figure2_map.png", "figure3_leave_one_content_out.png",
                 "figure4_model_id_perturbed.png"):
        assert (Path(imaginet_tables.PLOTS) / name).stat().st_size > 0
    assert "Table 3 (paper)" in result.tables
    # the README's ImagiNet tables are printed from these outputs, and a change's moves beside an earlier run's
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({**metrics, "table7": {**metrics["table7"], "macro_auc": 0.123}}))
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/readme_imaginet.py"), "--before", str(earlier)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    selfcon_mean = metrics["table3"]["selfcon"]["Mean"]["acc"]
    assert any(line.startswith("| selfcon") and "Mean" in line and f"{selfcon_mean:.3f}" in line
               for line in out.stdout.splitlines())
    moved = next(line for line in out.stdout.splitlines() if "table7/macro_auc" in line).split("|")
    assert [cell.strip() for cell in moved[2:4]] == ["0.123", f"{metrics['table7']['macro_auc']:.3f}"]


def test_a_method_network_round_trips_through_the_one_loader_and_old_or_foreign_files_are_clear_errors(tmp_path):
    from synthdet.detectors.selfcon import CrossEntropyNet, SelfConDetector
    from synthdet.fsutil import CheckpointError
    from synthdet.imaginet import baseline
    from synthdet.predict import predict_files
    from synthdet.training.checkpoint import load_detector

    rows = []
    for i in range(8):
        noise_image(200 + i, (44, 40)).save(tmp_path / f"{i}.png")
        rows.append({"path": str(tmp_path / f"{i}.png"), "label": i % 2,
                     "family": ("gan", "sd", "vq")[i % 3] if i % 2 else "real"})
    rows = pd.DataFrame(rows)
    cfg = baseline.BaselineConfig(backbone="resnet18", nodown=False, crop=32, calibration_size=48, batch_size=4,
                                  epochs=1, warmup_epochs=1, calibration_epochs=1, calibration_batch_size=4)
    baseline.train_method("selfcon", rows, rows, cfg, tmp_path / "selfcon", tmp_path / "checkpoints", "cpu")
    back, saved = load_detector(tmp_path / "selfcon/detector.pt")
    assert isinstance(back, SelfConDetector) and saved["model_classes"] == ["gan", "sd", "vq"]
    assert saved["input_size"] == 48 and saved["objective"]["baseline"]["backbone"] == "resnet18"
    weights = torch.load(tmp_path / "selfcon/detector.pt", weights_only=True)["model"]
    assert all(torch.equal(weights[k], v) for k, v in back.state_dict().items())
    # `synthdet predict` reads it like any detector
    predicted = predict_files([tmp_path / "0.png"], tmp_path / "selfcon/detector.pt", device="cpu", num_workers=0)
    assert predicted["status"].tolist() == ["ok"] and 0 < predicted["fake_probability"].iloc[0] < 1
    baseline.train_method("grag2021", rows, rows, cfg, tmp_path / "ce", tmp_path / "ce_checkpoints", "cpu")
    ce, ce_saved = load_detector(tmp_path / "ce/detector.pt")
    assert isinstance(ce, CrossEntropyNet) and ce_saved["model_classes"] == []
    # the format before the one checkpoint format: named, with the command that regenerates it
    torch.save({"method": "grag2021", "config": {}, "model_classes": [], "state_dict": ce.state_dict()},
               tmp_path / "network.pt")
    with pytest.raises(CheckpointError, match=r"network.pt: an ImagiNet method's network.pt.*"
                                              r"dvc repro -f 'imaginet_train@grag2021'"):
        load_detector(tmp_path / "network.pt")
    for name, content in (("other.pt", {"model": {}, "config": {"not": "ours"}, "format": 1}),
                          ("foreign.pt", {"weights": {}})):
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{name}: not a synthdet detector"):
            load_detector(tmp_path / name)
    with pytest.raises(ValueError, match=r"imaginet.baseline: unknown keys \['epoch'\]"):
        baseline.BaselineConfig.from_params({"epoch": 3}, seed=0)


# A rerun of `synthdet stage imaginet_train method=selfcon` (the stage's code, what its notebook
# calls) whose first run died right after writing the checkpoint of epoch 1, as a killed job would.
_STAGE = "import sys\nfrom synthdet.cli import main\nsys.exit(main(['stage', 'imaginet_train', 'method=selfcon']))\n"
_DIES_AFTER_EPOCH_1 = """
import os
from synthdet.training import checkpoint
save = checkpoint.save
def save_then_die(obj, path):
    save(obj, path)
    if path.name == "last.pt" and obj["epoch"] == 1:
        os._exit(9)
checkpoint.save = save_then_die
""" + _STAGE


def _selfcon_workspace(folder: Path) -> Path:
    """params.yaml (the repository's, smoke profile, a 3-epoch ResNet-18 SelfCon) and ImagiNet rows
    (paths relative to the workspace: two workspaces hold the same data, one fingerprint)."""
    rows = []
    for i, split in enumerate(["train"] * 16 + ["calibration"] * 8 + ["test"] * 8):
        label = i % 2
        path = folder / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img = noise_image(300 + i, (40, 36))
        (img.filter(ImageFilter.GaussianBlur(1 + i % 4 // 2)) if label else img).save(path)
        rows.append({"path": f"images/{i}.png", "label": label, "split": split, "content": "photos",  # as in the run
                     "family": ("gan", "sd")[i % 4 // 2] if label else "real", "generator": "g" if label else "real"})
    rows_file = folder / "artifacts/imaginet/data/rows.parquet"
    rows_file.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(rows_file)
    params = deep_update(_params(folder), {"device": "cpu", "train": {"resume_every_s": 0}, "imaginet": {
        "conditions": {"jpeg_quality": [50], "zoom": [0.5]},
        "baseline": {"crop": 32, "calibration_size": 32, "batch_size": 8, "epochs": 3, "warmup_epochs": 1,
                     "calibration_epochs": 2, "calibration_batch_size": 8, "backbone": "resnet18", "nodown": False}}})
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


def test_a_killed_selfcon_training_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path):
    import subprocess
    import sys

    def run(workspace: Path, code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], cwd=workspace, capture_output=True, text=True,
                              timeout=600)

    full, killed = _selfcon_workspace(tmp_path / "full"), _selfcon_workspace(tmp_path / "killed")
    assert run(full, _STAGE).returncode == 0
    checkpoints = Path("artifacts/checkpoints/imaginet/train/selfcon")
    died = run(killed, _DIES_AFTER_EPOCH_1)
    assert died.returncode == 9 and not (killed / "artifacts/imaginet/train/selfcon/detector.pt").exists()
    assert torch.load(killed / checkpoints / "last.pt", weights_only=True)["epoch"] == 1
    again = run(killed, _STAGE)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stdout and "at epoch 1" in again.stdout
    a, b = (torch.load(ws / "artifacts/imaginet/train/selfcon/detector.pt", weights_only=True) for ws in (full, killed))
    assert a["epoch"] == b["epoch"] == 3 and a["fingerprint"] == b["fingerprint"]
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [p.name for p in (killed / checkpoints).glob("*.pt")] == ["detector.pt"]  # the resume state is gone
    history = [a["result"]["history"], b["result"]["history"]]
    assert [h["train_loss"] for h in history[0]] == [h["train_loss"] for h in history[1]]
    scores = [pd.read_parquet(ws / "artifacts/imaginet/train/selfcon/scores.parquet") for ws in (full, killed)]
    pd.testing.assert_frame_equal(scores[0], scores[1])
