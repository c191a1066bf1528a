"""ImagiNet's tables and figures from scored test sets (pure functions of score tables; sklearn
does the arithmetic).

- Table 3 (:func:`origin_table`): per method and synthetic family, the reals against that
  family's fakes: balanced accuracy at 0.5, the best balanced accuracy over thresholds, and AUC;
  the Mean row averages the families.
- Table 7 (:func:`model_id_table`): model identification on the synthetic test images only:
  accuracy per true class, their mean, and the macro one-vs-rest AUC.
- Figure 4 (:func:`model_id_under`): that mean accuracy under each JPEG quality and zoom.
- Figure 3 (:func:`loco_table`): per excluded content type, accuracy (real, synthetic) and AUC on
  each content type's test images.
- Table 6 (:func:`inference_ms`): milliseconds per image of a network at a given size and batch.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score, roc_curve

MEAN = "Mean"


def balanced_accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    labels, pred = np.asarray(labels).astype(int), np.asarray(scores) >= threshold
    return float(((pred[labels == 1]).mean() + (~pred[labels == 0]).mean()) / 2)


def best_balanced_accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    """The highest balanced accuracy over every threshold: (TPR + 1 - FPR) / 2 at its best point."""
    fpr, tpr, _ = roc_curve(np.asarray(labels).astype(int), np.asarray(scores, dtype=float))
    return float(((tpr + 1 - fpr) / 2).max())


def origin_table(scores: pd.DataFrame, score: str = "p_synthetic") -> pd.DataFrame:
    """Table 3's cells, long: method, family, acc (balanced, at 0.5), best_acc, auc."""
    rows = []
    for method, g in scores.groupby("method", sort=False):
        reals = g[g["label"] == 0]
        for family in sorted(set(g.loc[g["label"] == 1, "family"])):
            fakes = g[(g["label"] == 1) & (g["family"] == family)]
            both = pd.concat([reals, fakes])
            y, s = both["label"].to_numpy(), both[score].to_numpy()
            rows.append({"method": method, "family": family, "acc": balanced_accuracy(y, s),
                         "best_acc": best_balanced_accuracy(y, s), "auc": float(roc_auc_score(y, s)),
                         "real": len(reals), "synthetic": len(fakes)})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    means = table.groupby("method", sort=False)[["acc", "best_acc", "auc"]].mean().reset_index().assign(family=MEAN)
    return pd.concat([table, means], ignore_index=True)


def model_id_table(scores: pd.DataFrame, classes: list[str], truth: str = "family") -> tuple[pd.DataFrame, float]:
    """Table 7: accuracy per true class (and their mean) of the synthetic images, and the macro
    one-vs-rest AUC of the class probabilities (``p_<class>`` columns)."""
    synthetic = scores[scores["label"] == 1]
    per_class = synthetic.groupby(truth)["model_pred"].apply(lambda s: float((s == s.name).mean()))
    table = per_class.rename("acc").reset_index().rename(columns={truth: "class"})
    table = pd.concat([table, pd.DataFrame([{"class": MEAN, "acc": float(per_class.mean())}])], ignore_index=True)
    probs = synthetic[[f"p_{c}" for c in classes]].to_numpy()
    present = [c for c in classes if (synthetic[truth] == c).any()]
    if len(present) < 2:
        return table, float("nan")
    if len(classes) == 2:
        auc = float(roc_auc_score((synthetic[truth] == classes[1]).astype(int), probs[:, 1]))
    else:
        auc = float(roc_auc_score(synthetic[truth], probs / probs.sum(axis=1, keepdims=True), multi_class="ovr",
                                  average="macro", labels=classes))
    return table, auc


def split_condition(condition: str) -> tuple[str, float]:
    """``jpeg_q50`` -> ("JPEG quality", 50); ``zoom_r0.5`` -> ("zoom r", 0.5); ``clean`` -> ("clean", nan)."""
    if condition.startswith("jpeg_q"):
        return "JPEG quality", float(condition[6:])
    if condition.startswith("zoom_r"):
        return "zoom r", float(condition[6:])
    return "clean", float("nan")


def model_id_under(scores: pd.DataFrame, truth: str = "family") -> pd.DataFrame:
    """Figure 4: the mean per-class model-identification accuracy under each condition, with
    the clean value as JPEG quality 100 and zoom r = 1 (the start of both curves)."""
    rows = []
    for condition, g in scores[scores["label"] == 1].groupby("condition", sort=False):
        acc = float(g.groupby(truth).apply(lambda s: (s["model_pred"] == s.name).mean(), include_groups=False).mean())
        kind, value = split_condition(str(condition))
        if kind == "clean":
            rows += [{"perturbation": "JPEG quality", "value": 100.0, "acc": acc, "condition": condition},
                     {"perturbation": "zoom r", "value": 1.0, "acc": acc, "condition": condition}]
        else:
            rows.append({"perturbation": kind, "value": value, "acc": acc, "condition": condition})
    return pd.DataFrame(rows)


def loco_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Figure 3: per model (``excluded`` content type) and test content type: real and synthetic
    accuracy at 0.5, their mean, and AUC."""
    rows = []
    for (excluded, content), g in scores.dropna(subset=["score"]).groupby(["excluded", "content"]):
        y, s = g["label"].to_numpy().astype(int), g["score"].to_numpy()
        pred = s >= 0.5
        both = len(set(y)) == 2
        rows.append({"excluded": excluded, "content": content, "held_out": excluded == content,
                     "real_acc": float((~pred[y == 0]).mean()) if (y == 0).any() else float("nan"),
                     "synthetic_acc": float(pred[y == 1].mean()) if (y == 1).any() else float("nan"),
                     "auc": float(roc_auc_score(y, s)) if both else float("nan"), "n": len(g)})
    table = pd.DataFrame(rows)
    if len(table):
        table["acc"] = table[["real_acc", "synthetic_acc"]].mean(axis=1)
    return table


@torch.no_grad()
def inference_ms(net: torch.nn.Module, size: int, batch_size: int, repeats: int, warmup: int = 1,
                 device: torch.device | str = "cpu") -> float:
    """Milliseconds per image of ``net`` at ``size`` x ``size`` with ``batch_size`` on ``device``
    (bf16 autocast on CUDA, as the pipeline scores): the median of ``repeats`` timed batches after
    ``warmup`` untimed ones."""
    device = torch.device(device)
    net = net.eval().to(device, memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, size, size, device=device).to(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for _ in range(warmup):
            net(x)
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            net(x)
            sync()
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000 / batch_size)
