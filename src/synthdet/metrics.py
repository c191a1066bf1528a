"""Metrics as pure functions of (labels, fake-probabilities); sklearn does the arithmetic."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, average_precision_score, recall_score, roc_auc_score


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5,
                   n_bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """Accuracy (overall, real, fake), AUC, AP and a 95% bootstrap CI of accuracy.

    Real accuracy is the recall of class 0, fake accuracy the recall of class 1, as in GenImage.
    AUC and AP are NaN when only one class is present.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    pred = (scores >= threshold).astype(int)
    both = len(np.unique(labels)) == 2
    out = {
        "n": int(len(labels)),
        "acc": float(accuracy_score(labels, pred)),
        "real_acc": float(recall_score(labels, pred, pos_label=0, zero_division=np.nan)),
        "fake_acc": float(recall_score(labels, pred, pos_label=1, zero_division=np.nan)),
        "auc": float(roc_auc_score(labels, scores)) if both else float("nan"),
        "ap": float(average_precision_score(labels, scores)) if both else float("nan"),
    }
    lo, hi = bootstrap_ci(labels == pred, n_bootstrap, seed)
    out.update(acc_ci_low=lo, acc_ci_high=hi)
    return out


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE (Guo et al. 2017): in equal-width bins of confidence max(p, 1 - p), the gap
    between accuracy and mean confidence, weighted by the share of images in the bin."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    if len(labels) == 0:
        return float("nan")
    confidence = np.maximum(probs, 1 - probs)
    correct = ((probs >= 0.5).astype(int) == labels).astype(float)
    bins = np.minimum(((confidence - 0.5) * 2 * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        inside = bins == b
        ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature scaling (Guo et al. 2017): the T minimising the negative log-likelihood of
    sigmoid(logit / T) on held-out images. One parameter, so accuracy, AUC and AP do not change."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    keep = np.isfinite(logits)
    z, y = logits[keep], labels[keep]
    if len(z) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    best = minimize_scalar(nll, bounds=tuple(np.log(bounds)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(best.x))


def select_temperature(logits: np.ndarray, labels: np.ndarray, folds: int = 5, repeats: int = 10,
                       seed: int = 0) -> dict[str, float]:
    """Temperature scaling kept only where it calibrates images it was not fitted on.

    The NLL-optimal temperature of a small validation split can make the expected calibration
    error worse (measured on the default run: T = 1.27 raised it from 0.079 to 0.098 on the split
    and from 0.031 to 0.046 on the test set): a few confident mistakes dominate the likelihood.
    So T is fitted on ``folds - 1`` folds and applied to the held-out one, ``repeats`` times over
    shuffled folds; the mean pooled held-out ECE with and without scaling decides. Returns the
    temperature to use (fitted on every image, or 1) and the ECEs: ``ece_after`` is that of the
    probabilities the detector will give, ``ece_scaled`` that of scaling, both cross-validated.
    """
    from sklearn.model_selection import StratifiedKFold

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    before = expected_calibration_error(y, sigmoid(z))
    scaled_eces = []
    for repeat in range(repeats):
        scaled = np.empty_like(z)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
        for fit, held_out in splitter.split(z.reshape(-1, 1), y):
            scaled[held_out] = sigmoid(z[held_out] / fit_temperature(z[fit], y[fit]))
        scaled_eces.append(expected_calibration_error(y, scaled))
    cv_scaled = float(np.mean(scaled_eces))
    keep = cv_scaled < before
    return {"temperature": fit_temperature(z, y) if keep else 1.0, "ece_before": before,
            "ece_after": cv_scaled if keep else before, "ece_scaled": cv_scaled}


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # no overflow for large |z|


def bootstrap_ci(correct: np.ndarray, n_bootstrap: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap of the mean of a 0/1 vector."""
    correct = np.asarray(correct, dtype=np.float64)
    if len(correct) == 0 or n_bootstrap <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(correct, size=(n_bootstrap, len(correct)), replace=True).mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def metrics_table(scores: pd.DataFrame, by: list[str], **kwargs) -> pd.DataFrame:
    """One row of :func:`binary_metrics` per group of ``by`` in a scores table."""
    rows = []
    for key, g in scores.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), **binary_metrics(g["label"], g["score"], **kwargs)})
    return pd.DataFrame(rows)
