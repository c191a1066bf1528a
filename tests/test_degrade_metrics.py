import numpy as np
import pytest
from PIL import Image

from synthdet.metrics import binary_metrics, bootstrap_ci, metrics_table
from synthdet.transforms.degrade import gaussian_blur, jpeg, low_resolution, scaled_conditions
from tests.conftest import noise_image


def _hf_energy(img: Image.Image) -> float:
    a = np.asarray(img.convert("L"), dtype=np.float64)
    return float(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())


def test_degradations_keep_size_and_remove_detail_in_order():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    e0 = _hf_energy(img)
    for weak, strong in ((low_resolution(img, 32), low_resolution(img, 18)),
                         (gaussian_blur(img, 0.86), gaussian_blur(img, 1.43))):
        assert weak.size == strong.size == img.size
        assert e0 > _hf_energy(weak) > _hf_energy(strong)
    d65 = np.abs(np.asarray(jpeg(img, 65), float) - np.asarray(img, float)).mean()
    d30 = np.abs(np.asarray(jpeg(img, 30), float) - np.asarray(img, float)).mean()
    assert 0 < d65 < d30


def test_conditions_scale_from_the_paper_reference():
    conds = {c.name: c for c in scaled_conditions(64, 224, [112, 64], [65, 30], [3, 5])}
    assert list(conds) == ["clean", "lowres_112", "lowres_64", "jpeg_q65", "jpeg_q30", "blur_sigma3", "blur_sigma5"]
    assert conds["lowres_112"].effective == 32 and conds["lowres_64"].effective == 18
    assert conds["jpeg_q30"].effective == 30
    assert conds["blur_sigma3"].effective == pytest.approx(3 * 64 / 224, abs=1e-3)
    same = scaled_conditions(224, 224, [112], [65], [3])
    assert [c.effective for c in same] == [0, 112, 65, 3]
    img = noise_image(1, (64, 64))
    assert conds["clean"].apply(img) is img


def test_binary_metrics_match_a_hand_count():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.6, 0.2, 0.9, 0.4, 0.8, 0.7])
    m = binary_metrics(labels, scores, n_bootstrap=500, seed=0)
    assert m["acc"] == pytest.approx(5 / 7)
    assert m["real_acc"] == pytest.approx(2 / 3) and m["fake_acc"] == pytest.approx(3 / 4)
    # pairs (fake, real) ranked correctly: 11 of 12
    assert m["auc"] == pytest.approx(11 / 12)
    assert m["acc_ci_low"] <= m["acc"] <= m["acc_ci_high"]


def test_one_class_gives_nan_auc_and_bootstrap_is_seeded():
    m = binary_metrics(np.ones(5), np.full(5, 0.9), n_bootstrap=0)
    assert np.isnan(m["auc"]) and m["acc"] == 1.0 and np.isnan(m["real_acc"])
    correct = np.r_[np.ones(70), np.zeros(30)]
    assert bootstrap_ci(correct, 200, 1) == bootstrap_ci(correct, 200, 1)
    lo, hi = bootstrap_ci(correct, 2000, 0)
    assert 0.6 < lo < 0.7 < hi < 0.8


def test_a_score_at_the_threshold_is_fake_in_every_metrics_decision():
    """One rule for every decision (GenImage's: fake when p >= 0.5): the tables' accuracy, ImagiNet's
    balanced accuracy and the ECE's correctness count a score of exactly 0.5 as a fake."""
    from synthdet.imaginet.tracks import balanced_accuracy
    from synthdet.metrics import expected_calibration_error

    labels, at = np.array([0, 1]), np.array([0.5, 0.5])
    m = binary_metrics(labels, at, n_bootstrap=0)
    assert (m["real_acc"], m["fake_acc"], m["acc"]) == (0.0, 1.0, 0.5)
    assert binary_metrics(labels, at, threshold=0.6, n_bootstrap=0)["real_acc"] == 1.0
    assert balanced_accuracy(labels, at) == 0.5 and balanced_accuracy(np.array([1, 1, 0]), np.array([.5, .5, .4])) == 1
    # every image at p = 0.5 has confidence 0.5: the fakes are correct, the reals are not
    assert expected_calibration_error(np.array([1, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert expected_calibration_error(np.array([0, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert expected_calibration_error(np.array([1, 0]), np.array([0.5, 0.4])) == pytest.approx(0.5 * 0.5 + 0.5 * 0.4)


def test_the_bootstrap_interval_is_two_sided_at_its_level():
    """A 95% interval of a 70% accuracy over 100 images is about +-1.96 standard errors wide (a
    one-sided 5% on each end would be +-1.64)."""
    correct = np.r_[np.ones(70), np.zeros(30)]
    se = np.sqrt(0.7 * 0.3 / 100)
    lo, hi = bootstrap_ci(correct, 4000, 0)
    assert hi - lo == pytest.approx(2 * 1.96 * se, abs=0.012)
    lo90, hi90 = bootstrap_ci(correct, 4000, 0, level=0.90)
    assert hi90 - lo90 == pytest.approx(2 * 1.645 * se, abs=0.012) and lo < lo90 < hi90 < hi


def test_each_fold_is_calibrated_by_a_temperature_fitted_without_it():
    """The cross-validated ECE of temperature scaling scales each held-out fold by the temperature of
    the other folds (repeated over seeded shuffles), never by one fitted on the images it scores."""
    from sklearn.model_selection import StratifiedKFold

    from synthdet.metrics import expected_calibration_error, fit_temperature, select_temperature, sigmoid

    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, 60)
    labels = (rng.random(60) < sigmoid(logits / 2)).astype(int)

    def cross_validated(leak: bool) -> float:
        eces = []
        for repeat in range(10):
            scaled = np.empty_like(logits)
            folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=repeat).split(logits.reshape(-1, 1), labels)
            for fit, held_out in folds:
                t = fit_temperature(logits, labels) if leak else fit_temperature(logits[fit], labels[fit])
                scaled[held_out] = sigmoid(logits[held_out] / t)
            eces.append(expected_calibration_error(labels, scaled))
        return float(np.mean(eces))

    held_out, leaked = cross_validated(False), cross_validated(True)
    assert abs(held_out - leaked) > 1e-3  # the data tell the two apart
    assert select_temperature(logits, labels, folds=5, repeats=10, seed=0)["ece_scaled"] == pytest.approx(held_out)


def test_metrics_table_groups():
    import pandas as pd
    df = pd.DataFrame({"subset": ["a"] * 4 + ["b"] * 4, "label": [0, 1] * 4, "score": [0.1, 0.9] * 2 + [0.9, 0.1] * 2})
    t = metrics_table(df, ["subset"], n_bootstrap=10)
    assert t.set_index("subset")["acc"].to_dict() == {"a": 1.0, "b": 0.0}
