import numpy as np
import pandas as pd
import pytest

from synthdet import tables as T


def _scores(models=("resnet50",), subsets=("a", "b"), seeds=(0, 1), conditions=("clean",), n=40):
    """Scores where a detector is right on its own training subset and at chance elsewhere."""
    rng = np.random.default_rng(0)
    rows = []
    for model in models:
        for train in subsets:
            for seed in seeds:
                for test in subsets:
                    for cond in conditions:
                        labels = np.r_[np.zeros(n // 2), np.ones(n // 2)]
                        good = train == test and cond == "clean"
                        scores = labels * 0.8 + 0.1 if good else rng.random(n)
                        rows += [{"model": model, "train_subset": train, "seed": seed, "subset": test,
                                  "condition": cond, "label": int(y), "score": s}
                                 for y, s in zip(labels, scores, strict=True)]
    return pd.DataFrame(rows)


def test_cross_generator_matrix_separates_same_and_cross():
    xgen = T.cross_generator(_scores(), n_bootstrap=50)
    assert len(xgen) == 4 and set(xgen.n_seeds) == {2}
    same, cross = T.same_vs_cross(xgen)
    assert same == 1.0 and 0.2 < cross < 0.8
    diag = xgen[xgen.train_subset == xgen.subset]
    assert (diag.acc_std == 0).all() and (diag.acc_ci_low == 1.0).all()
    off = xgen[xgen.train_subset != xgen.subset]
    assert (off.acc_std > 0).all()  # two seeds with different random scores


def test_detector_and_degradation_tables_and_wide_shape():
    s = _scores(models=("resnet50", "npr"), conditions=("clean", "jpeg_q30"))
    det = T.detectors_on(s, "a", n_bootstrap=0)
    assert set(det.model) == {"resnet50", "npr"} and set(det.subset) == {"a", "b"}
    wide = T.wide(det, "model", "subset", order=["b", "a"])
    assert list(wide.columns) == ["b", "a", "Avg"]
    assert wide.loc["npr", "Avg"] == pytest.approx(wide.loc["npr", ["a", "b"]].mean())
    deg = T.degradations(s, "a", n_bootstrap=0)
    assert set(deg.condition) == {"clean", "jpeg_q30"}
    assert deg.set_index(["model", "condition"]).loc[("npr", "clean"), "acc"] == 1.0
