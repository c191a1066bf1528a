"""Figures and tables for the notebooks (seaborn); no metric is computed here."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def heatmap(table: pd.DataFrame, index: str, columns: str, value: str, title: str,
            path: Path | None = None, fmt: str = ".2f") -> plt.Figure:
    pivot = table.pivot(index=index, columns=columns, values=value)
    fig, ax = plt.subplots(figsize=(1.1 * pivot.shape[1] + 3, 0.5 * pivot.shape[0] + 2))
    sns.heatmap(pivot, annot=True, fmt=fmt, vmin=0, vmax=1, cmap="viridis", ax=ax, cbar_kws={"label": value})
    ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def training_curves(history: pd.DataFrame, path: Path | None = None) -> plt.Figure:
    cols = [c for c in ("train_loss", "val_acc", "val_auc") if c in history]
    long = history.melt(id_vars="epoch", value_vars=cols, var_name="metric")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.lineplot(long, x="epoch", y="value", hue="metric", marker="o", ax=ax)
    fig.tight_layout()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig
