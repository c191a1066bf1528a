"""`synthdet predict` on anyone's files, and the calibration its probabilities carry."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from synthdet import cli
from synthdet.metrics import expected_calibration_error, fit_temperature
from synthdet.predict import predict_files
from synthdet.training.config import TrainConfig
from synthdet.training.loop import train_detector
from tests.conftest import noise_image


def _image(i: int, fake: bool) -> Image.Image:
    a = np.asarray(noise_image(i, (40, 32))).copy()
    if fake:
        a[::2, ::2] = 255  # a checkerboard, learnable in a few steps
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    rows = []
    for i in range(100):
        p = root / f"train{i}.png"
        _image(i, bool(i % 2)).save(p)
        rows.append({"path": str(p), "label": i % 2})
    rows = pd.DataFrame(rows)
    cfg = TrainConfig(model="resnet18", input_size=32, epochs=3, batch_size=8, num_workers=0, seed=0)
    result = train_detector(rows.iloc[:40], rows.iloc[40:], cfg, root / "run", device="cpu")  # 60 calibrate
    return root / "run/detector.pt", result


def test_calibration_is_fitted_on_validation_and_stored(detector):
    path, result = detector
    saved = torch.load(path, weights_only=True)
    cal = result["calibration"]
    assert cal["calibration_images"] == 60 and saved["temperature"] == cal["temperature"] != 1.0
    assert cal["ece_after"] < cal["ece_before"]


def test_the_stored_temperature_does_not_worsen_calibration_on_images_it_never_saw(detector, tmp_path):
    """ECE after <= ECE before on held-out images: the temperature is kept only when it lowers the
    cross-validated ECE of the validation split (metrics.select_temperature)."""
    path, result = detector
    cal = result["calibration"]
    assert cal["ece_after"] <= cal["ece_before"]
    files = []
    for i in range(300, 400):
        files.append(tmp_path / f"{i}.png")
        _image(i, bool(i % 2)).save(files[-1])
    probs = predict_files(files, path, device="cpu")["fake_probability"].to_numpy(dtype=float)
    temperature = torch.load(path, weights_only=True)["temperature"]
    logits = np.log(probs / (1 - probs)) * temperature  # back to the raw logits
    labels = np.arange(300, 400) % 2
    before = expected_calibration_error(labels, 1 / (1 + np.exp(-logits)))
    after = expected_calibration_error(labels, probs)
    assert after <= before


def test_temperature_scaling_recovers_a_known_temperature_and_lowers_ece():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-logits / 3.0))).astype(int)  # true temperature 3
    t = fit_temperature(logits, labels)
    assert abs(t - 3.0) < 0.15
    before = expected_calibration_error(labels, 1 / (1 + np.exp(-logits)))
    after = expected_calibration_error(labels, 1 / (1 + np.exp(-logits / t)))
    assert after < 0.02 < before
    # ECE by hand: confidences 0.9, 0.9 (one right, one wrong) and 0.6 (right): bins 12 and 3 of 15
    assert expected_calibration_error(np.array([1, 0, 0]), np.array([0.9, 0.9, 0.4])) == pytest.approx(
        2 / 3 * abs(0.5 - 0.9) + 1 / 3 * abs(1.0 - 0.6))


def test_predict_scores_a_folder_with_good_corrupt_and_non_image_files(detector, tmp_path, capsys):
    path, _ = detector
    folder = tmp_path / "mine"
    (folder / "nested").mkdir(parents=True)
    for i in range(6):
        _image(100 + i, fake=bool(i % 2)).save(folder / f"{i}_{'fake' if i % 2 else 'real'}.png")
    _image(200, fake=True).convert("RGB").save(folder / "nested/photo.jpg", quality=95)
    good = (folder / "0_real.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / ".hidden.png").write_bytes(good)
    out = tmp_path / "predictions.csv"
    assert cli.main(["predict", str(folder), "--detector", str(path), "--device", "cpu", "--out", str(out)]) == 0
    assert f"{out}: 10 files" in capsys.readouterr().out
    table = pd.read_csv(out, keep_default_na=False).set_index("path")
    status = {p.split("/mine/")[1]: s for p, s in table["status"].items()}
    assert status == {**{f"{i}_{'fake' if i % 2 else 'real'}.png": "ok" for i in range(6)}, "nested/photo.jpg": "ok",
                      "truncated.png": "corrupt", "notes.txt": "not_image", "empty.png": "empty"}
    scored = table[table["status"] == "ok"]
    probs = scored["fake_probability"].astype(float)
    assert probs.between(0, 1).all()
    assert (scored["prediction"] == np.where(probs >= 0.5, "fake", "real")).all()
    assert (table.loc[table["status"] != "ok", ["fake_probability", "prediction"]] == "").all().all()
    assert table.loc[str(folder / "truncated.png"), "problem"].startswith("truncated or corrupt")
    # the probability is the model's, calibrated with the stored temperature
    from synthdet.data.dataset import make_transform
    from synthdet.training.checkpoint import load_detector

    model, cfg = load_detector(path)
    x = make_transform(32, train=False)(Image.open(folder / "1_fake.png").convert("RGB"))[None]
    with torch.no_grad():
        expected = torch.sigmoid(model(x) / cfg["temperature"]).item()
    assert float(table.loc[str(folder / "1_fake.png"), "fake_probability"]) == pytest.approx(expected, abs=1e-5)
    # the same as a function, for notebooks, on single files
    one = predict_files([folder / "1_fake.png"], path, device="cpu")
    assert one["fake_probability"].iloc[0] == pytest.approx(expected, abs=1e-5)


def test_predict_names_what_is_missing(detector, tmp_path, capsys):
    path, _ = detector
    assert cli.main(["predict", str(tmp_path / "nowhere"), "--detector", str(path)]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path), "--detector", str(tmp_path / "none.pt")]) == 2
    assert "none.pt: no detector there" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path), "--detector", str(path), "--threshold", "1.5"]) == 2
