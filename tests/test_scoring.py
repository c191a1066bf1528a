"""The one scoring call (``synthdet.training.scoring.score``): what it returns for files and for
manifest rows, and that predict, evaluate, the audit and ImagiNet's tracks all score through it."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from synthdet.analysis import audit
from synthdet.detectors import create_detector
from synthdet.detectors.selfcon import SelfConDetector
from synthdet.metrics import sigmoid
from synthdet.predict import predict_files
from synthdet.stages import evaluate, imaginet_data, imaginet_runs, paths
from synthdet.training import checkpoint, scoring
from tests.conftest import noise_image


def _images(folder: Path, n: int = 6) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        path = folder / f"{i}.png"
        noise_image(100 + i, (28 + i, 30)).save(path)
        files.append(path)
    return files


@pytest.fixture
def detector(tmp_path: Path) -> Path:
    """A saved (untrained) ResNet-18 detector at 24 px with a calibration temperature of 2."""
    torch.manual_seed(0)
    net = create_detector("resnet18", img_size=24)
    path = tmp_path / "run" / "detector.pt"
    path.parent.mkdir()
    checkpoint.save({"model": net.state_dict(), "config": {"model": "resnet18", "input_size": 24},
                     "temperature": 2.0}, path)
    return path


def test_every_file_gets_its_own_row_and_the_calibrated_probability(tmp_path, detector):
    files = _images(tmp_path / "img")
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    (tmp_path / "img" / "notes.png").write_text("not an image")
    files[2:2] = [tmp_path / "img" / "empty.png", tmp_path / "img" / "notes.png"]
    table = scoring.score(detector, files, batch_size=3, device="cpu")
    assert table["path"].tolist() == [str(f) for f in files]
    assert table["status"].tolist() == ["ok", "ok", "empty", "not_image", "ok", "ok", "ok", "ok"]
    assert table.loc[table["status"] != "ok", ["logit", "fake_probability"]].isna().all().all()
    assert table.loc[table["status"] == "ok", "problem"].eq("").all()
    ok = table[table["status"] == "ok"]
    np.testing.assert_allclose(ok["fake_probability"], sigmoid(ok["logit"] / 2.0))
    assert set(table["model"]) == {"resnet18"}
    # the same network given as a module, without a temperature: the same logits, raw probabilities
    model, _ = checkpoint.load_detector(detector)
    raw = scoring.score(model, [f for f in files if f.stat().st_size > 20], input_size=24, device="cpu")
    np.testing.assert_allclose(raw["logit"], ok["logit"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raw["fake_probability"], sigmoid(raw["logit"]))
    # an unreadable file takes no neighbour's pixels: the image after it scores as it does alone
    alone = scoring.score(detector, [files[4]], device="cpu")
    assert alone["logit"].iloc[0] == pytest.approx(table["logit"].iloc[4], rel=1e-5)


def test_model_identification_and_features_come_from_one_pass(tmp_path):
    files = _images(tmp_path / "img", 4)
    torch.manual_seed(0)
    net = SelfConDetector(n_models=3, backbone="resnet18", nodown=False).eval()
    table, features = scoring.score(net, files, input_size=32, classes=["gan", "sd", "vq"], features=True,
                                    device="cpu")
    assert features.shape == (4, 512) and np.isfinite(features).all()
    probs = table[["p_gan", "p_sd", "p_vq"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
    assert table["model_pred"].tolist() == [["gan", "sd", "vq"][k] for k in probs.argmax(axis=1)]
    with torch.no_grad():  # the same numbers as the network's own heads on the features
        origin = net.origin_head(torch.from_numpy(features))
    np.testing.assert_allclose(table["logit"], (origin[:, 1] - origin[:, 0]).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="2 model classes named for a model head of 3"):
        scoring.score(net, files, input_size=32, classes=["gan", "sd"], device="cpu")


class _Spy:
    """Wraps ``scoring.score``: records the module that called it, then scores."""

    def __init__(self) -> None:
        self.callers: list[str] = []
        self.real = scoring.score

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        self.callers.append(sys._getframe(1).f_globals["__name__"])
        return self.real(*args, **kwargs)


def test_predict_evaluate_the_audit_and_imaginet_score_through_the_one_call(tmp_path, detector, monkeypatch):
    spy = _Spy()
    monkeypatch.setattr(scoring, "score", spy)
    files = _images(tmp_path / "img")
    labels = [0, 1] * 3
    rows = pd.DataFrame({"path": [str(f) for f in files], "label": labels, "subset": "a", "condition": "clean",
                         "split": "test", "format": ["JPEG", "PNG"] * 3, "jpeg_quality": [90, None] * 3,
                         "width": 30, "height": 30, "class": "c"})

    predicted = predict_files(files, detector, device="cpu", num_workers=0)
    assert spy.callers == ["synthdet.predict"]
    expected = predicted["fake_probability"].to_numpy()

    monkeypatch.chdir(tmp_path)
    Path(paths.DETECTOR).parent.mkdir(parents=True)
    Path(paths.DETECTOR).write_bytes(detector.read_bytes())
    Path(paths.DEGRADED).parent.mkdir(parents=True)
    rows.to_parquet(paths.DEGRADED)
    evaluate.run({"seed": 0, "device": "cpu", "evaluate": {"n_bootstrap": 0, "batch_size": 4, "num_workers": 0}})
    assert spy.callers[-1] == "synthdet.stages.evaluate"
    scores = pd.read_parquet(Path(paths.EVALUATE) / "scores.parquet")
    np.testing.assert_allclose(scores["score"], expected)  # evaluate and predict give a file one probability

    table, _ = audit.counterfactual_scores(detector, rows, 4, "cpu")
    # as stored (reals, fakes), then the JPEG counterfactual's fakes only: the reals it leaves keep their scores
    assert set(spy.callers[2:]) == {"synthdet.analysis.audit"} and len(spy.callers) == 2 + 2 + 1
    assert set(table["condition"]) == {"as_is", "fakes_jpeg_q90"}

    # ImagiNet's tracks: the selfcon run (one tiny epoch) scores every test condition through it
    imaginet_rows = rows.assign(family=["real", "gan"] * 3, generator=["real", "g1"] * 3, content="photos")
    Path(imaginet_data.ROWS).parent.mkdir(parents=True)
    pd.concat([imaginet_rows, imaginet_rows.assign(split="train"), imaginet_rows.assign(split="calibration")]
              ).to_parquet(imaginet_data.ROWS)
    params = {"seed": 0, "device": "cpu", "evaluate": {"batch_size": 4}, "train": {"resume_every_s": 60},
              "imaginet": {"baseline": {"crop": 32, "calibration_size": 32, "backbone": "resnet18", "nodown": False,
                                        "batch_size": 4, "epochs": 1, "calibration_epochs": 1,
                                        "calibration_batch_size": 4},
                           "conditions": {"jpeg_quality": [50], "zoom": [0.5]}}}
    before = len(spy.callers)
    imaginet_runs.train_method(params, "selfcon")
    assert spy.callers[before:] == ["synthdet.stages.imaginet_runs"] * 3  # clean, jpeg_q50, zoom_r0.5
    out = pd.read_parquet(Path(imaginet_runs.run_dir("train", "selfcon")) / imaginet_runs.SCORES)
    assert out.groupby("condition").size().to_dict() == {"clean": 6, "jpeg_q50": 3, "zoom_r0.5": 3}
    assert out["p_synthetic"].between(0, 1).all() and set(out["model_pred"]) == {"gan"}


def test_the_old_scoring_entry_points_are_gone():
    from synthdet.imaginet import baseline

    assert not any(hasattr(scoring, name) for name in ("predict", "embed", "score_table"))
    assert not hasattr(baseline, "predict_both")


def test_calibration_fits_only_on_scored_images_and_only_from_the_minimum(monkeypatch):
    """The temperature is fitted on the validation images that were scored (an unreadable one has
    no logit and stays out of the fit and its count), and not at all below the minimum number."""
    from synthdet.metrics import expected_calibration_error, select_temperature, sigmoid
    from synthdet.training import scoring
    from synthdet.training.config import TrainConfig

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, 200)
    labels = (rng.random(200) < sigmoid(logits / 3.0)).astype(int)  # overconfident: scaling helps
    with_unread = np.r_[logits, np.nan, np.nan]
    rows = pd.DataFrame({"path": [f"{k}.png" for k in range(202)], "label": np.r_[labels, 1, 0]})
    monkeypatch.setattr(scoring, "score", lambda model, val_rows, **kw: pd.DataFrame(
        {"logit": with_unread[: len(val_rows)]}))
    cfg = TrainConfig(model="resnet50", seed=0)
    got = scoring.calibrate(None, rows, cfg, "cpu", 0)
    want = select_temperature(logits, labels, scoring.CALIBRATION_FOLDS, seed=0)
    assert got["calibration_images"] == 200 and got["temperature"] == pytest.approx(want["temperature"], abs=1e-5)
    assert got["temperature"] > 2 and np.isfinite(got["ece_after"])
    few = rows.iloc[: scoring.MIN_CALIBRATION_IMAGES - 1]  # both labels, but too few images
    got = scoring.calibrate(None, few, cfg, "cpu", 0)
    raw = expected_calibration_error(labels[: len(few)], sigmoid(logits[: len(few)]))
    assert got == {"temperature": 1.0, "ece_before": round(raw, 6), "ece_after": round(raw, 6), "ece_scaled": None,
                   "calibration_images": len(few)}
