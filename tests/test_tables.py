import numpy as np
import pandas as pd
import pytest

from synthdet.genimage import tables as T


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


def _ablation_scores(seeds=(0, 1), n=10):
    """resnet50 on "a" with a 2-class budget and on the full subset: right exactly on the classes
    it saw, at chance on other classes and on the other subsets ("b", content test "faces")."""
    rng = np.random.default_rng(1)
    rows = []
    budgets = {"2x5": ["c0", "c1"], "full": ["c0", "c1", "c2", "c3"]}
    for budget, seen in budgets.items():
        for seed in seeds:
            for test, classes in (("a", ["c0", "c1", "c2", "c3"]), ("b", ["c0"]), ("faces", ["face"])):
                for cls in classes:
                    labels = np.r_[np.zeros(n), np.ones(n)]
                    good = test == "a" and cls in seen
                    scores = labels * 0.8 + 0.1 if good else rng.random(2 * n)
                    rows += [{"model": "resnet50", "train_subset": "a", "seed": seed, "subset": test, "class": cls,
                              "condition": "clean", "label": int(y), "score": s, "class_budget": budget,
                              "train_classes": len(seen), "train_images": 5 * len(seen) if budget != "full" else 88,
                              "seen_class": cls in seen} for y, s in zip(labels, scores, strict=True)]
    return pd.DataFrame(rows)


def test_training_size_and_class_subset_tables():
    s = _ablation_scores()
    size = T.training_size(s, "a", ["a", "b"], n_bootstrap=0)
    assert size["class_budget"].tolist() == ["2x5", "full"]  # ordered by training images
    full = size.set_index("class_budget").loc["full"]
    assert full["acc_identical"] == 1.0 and 0.2 < full["acc_cross"] < 0.8 and full["images_per_class"] == 22.0
    assert 0.6 < size.set_index("class_budget").loc["2x5", "acc_identical"] < 0.9  # half the classes right
    sub = T.class_subsets(s, "a", n_bootstrap=0).set_index(["class_budget", "classes"])["acc"]
    assert sub[("2x5", "seen")] == 1.0 and sub[("2x5", "unseen")] < 0.8
    assert sub[("2x5", "unseen")] < sub[("2x5", "all")] < 1.0
    assert ("full", "unseen") not in sub.index  # the full run saw every class


def test_content_generalisation_uses_only_full_runs():
    cg = T.content_generalisation(_ablation_scores(), "a", ["faces"], n_bootstrap=0)
    assert set(cg.subset) == {"a", "faces"} and set(cg.n_seeds) == {2}
    assert cg.set_index("subset").loc["a", "acc"] == 1.0  # the 2x5 run (acc 0.75) is not averaged in


def test_conclusions_are_computed_from_the_numbers():
    """The notebook's closing sentences follow the tables: flip the data and the verdict flips."""
    from pathlib import Path

    from synthdet.stages.tables import read_paper

    paper = read_paper(Path(__file__).resolve().parents[1] / "paper")
    empty = pd.DataFrame()

    def sentences(scores: pd.DataFrame) -> list[str]:
        xgen = T.cross_generator(scores, n_bootstrap=0)
        det = T.detectors_on(scores, "a", n_bootstrap=0)
        deg = T.degradations(scores, "a", n_bootstrap=0)
        wide_deg = T.wide(deg[deg.condition != "clean"], "model", "condition")
        return T.conclusions(xgen, paper, det, wide_deg, empty, empty, empty, empty, ["a", "b"])

    specific = sentences(_scores(models=("resnet50", "npr"), conditions=("clean", "jpeg_q30")))
    assert "Agrees with GenImage: detectors do not transfer across generators." in specific
    assert any(s.startswith("Same-generator accuracy 1.000 vs cross-generator 0.") for s in specific)
    assert any(s.startswith("Hardest degradation on average: jpeg_q30") for s in specific)
    everywhere = _scores(models=("resnet50", "npr"), conditions=("clean", "jpeg_q30"))
    everywhere["score"] = everywhere["label"] * 0.8 + 0.1  # right on every subset: they transfer
    general = sentences(everywhere)
    assert "Does NOT show GenImage's same >> cross gap at this budget." in general
    assert any(s.startswith("Same-generator accuracy 1.000 vs cross-generator 1.000") for s in general)


def test_transfer_reads_own_other_and_off_diagonal_cells_in_accuracy_and_auc():
    full = _scores(models=("probe",), subsets=("a", "b", "c"), seeds=(0,))
    one = _scores(models=("npr",), subsets=("a", "b", "c"), seeds=(0,))
    one = one[one["train_subset"] == "a"]  # trained on one subset only
    # the probe ranks "a"'s fakes on "b" perfectly but above the 0.5 threshold for every image
    rank_only = (full["train_subset"] == "a") & (full["subset"] == "b")
    full.loc[rank_only, "score"] = 0.6 + 0.3 * full.loc[rank_only, "label"]
    out = T.transfer(pd.concat([full, one]), "a", ["a", "b", "c"], n_bootstrap=0).set_index("model")
    assert out.loc["probe", "own_acc"] == 1.0 and out.loc["npr", "own_acc"] == 1.0
    assert out.loc["probe", "trained_on"] == 3 and out.loc["npr", "trained_on"] == 1
    cells = T.cross_generator(full, "probe", n_bootstrap=0).set_index(["train_subset", "subset"])
    assert cells.loc[("a", "b"), "acc"] == 0.5 and cells.loc[("a", "b"), "auc"] == 1.0  # ranked, wrong threshold
    assert out.loc["probe", "others_acc"] == pytest.approx((0.5 + cells.loc[("a", "c"), "acc"]) / 2)
    assert out.loc["probe", "others_auc"] == pytest.approx((1.0 + cells.loc[("a", "c"), "auc"]) / 2)
    off = cells[[t != s for t, s in cells.index]]
    assert out.loc["probe", "off_diagonal_acc"] == pytest.approx(off["acc"].mean())
    assert np.isnan(out.loc["npr", "off_diagonal_acc"])  # no whole matrix for a detector trained once


def test_table1_on_the_matched_variant_reads_its_condition_and_says_what_survives():
    """The matched runs' scores hold two test sets: the variant's (condition ``sharpness_matched``) and
    the benchmark's clean images. Table 1 on the variant reads only the first, the "tested as stored"
    matrix only the second, and the summary sets both beside table 1 as stored."""
    # here the detector trained on the variant is right on the variant's own subset and at chance as stored
    right = _scores(seeds=(0,))
    variant = pd.concat([right.assign(condition="sharpness_matched"), right.assign(score=0.5)], ignore_index=True)
    on_variant = T.cross_generator(variant, condition="sharpness_matched", n_bootstrap=0)
    to_stored = T.cross_generator(variant, n_bootstrap=0)
    assert T.same_vs_cross(on_variant)[0] == 1.0 and T.same_vs_cross(to_stored) == (0.5, 0.5)
    stored = T.cross_generator(_scores(seeds=(0,)), n_bootstrap=0)
    summary = T.matched_survival(stored, on_variant, to_stored)
    assert list(summary) == ["stored", "variant", "variant_to_stored"]
    assert summary["stored"]["same_generator_acc"] == 1.0 and summary["variant_to_stored"] == {
        "same_generator_acc": 0.5, "cross_generator_acc": 0.5}
    assert set(T.matched_survival(None, on_variant, to_stored)) == {"variant", "variant_to_stored"}
