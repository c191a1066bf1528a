"""Figures for the notebooks (seaborn) and image grids; no metric is computed here."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from PIL import Image  # noqa: E402

from synthdet.data.imageio import fit_to_input, load_rgb  # noqa: E402


def in_order(values: pd.Index | list, order: list | None) -> list:
    """``values`` with those named in ``order`` first (in that order), then the rest as they were."""
    values = list(values)
    if not order:
        return values
    return [v for v in order if v in values] + [v for v in values if v not in order]


def heatmap(table: pd.DataFrame, index: str, columns: str, value: str, title: str,
            path: Path | None = None, fmt: str = ".2f", row_order: list[str] | None = None,
            col_order: list[str] | None = None) -> plt.Figure:
    """``value`` as rows ``index`` x columns ``columns``; orders put the named rows / columns
    first (in that order), the others after them."""
    pivot = table.pivot(index=index, columns=columns, values=value)
    pivot = pivot.reindex(index=in_order(pivot.index, row_order), columns=in_order(pivot.columns, col_order))
    fig, ax = plt.subplots(figsize=(1.1 * pivot.shape[1] + 3, 0.5 * pivot.shape[0] + 2))
    sns.heatmap(pivot, annot=True, fmt=fmt, vmin=0, vmax=1, cmap="viridis", ax=ax, cbar_kws={"label": value})
    ax.set_title(title)
    return save_figure(fig, path)


def training_curves(history: pd.DataFrame, path: Path | None = None) -> plt.Figure:
    cols = [c for c in ("train_loss", "val_acc", "val_auc") if c in history]
    long = history.melt(id_vars="epoch", value_vars=cols, var_name="metric")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.lineplot(long, x="epoch", y="value", hue="metric", marker="o", ax=ax)
    return save_figure(fig, path)


def lines(table: pd.DataFrame, x: str, values: list[str], title: str, path: Path | None = None,
          label: str | None = "class_budget") -> plt.Figure:
    """``values`` against ``x`` (log scale), one line each; points annotated with ``label``."""
    long = table.melt(id_vars=[c for c in (x, label) if c], value_vars=values, var_name="metric")
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    sns.lineplot(long.sort_values(x), x=x, y="value", hue="metric", marker="o", errorbar=None, ax=ax)
    if label:
        for r in long.itertuples(index=False):
            ax.annotate(str(getattr(r, label)), (getattr(r, x), r.value), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set(xscale="log", ylim=(0.4, 1.02), ylabel="accuracy", title=title)
    return save_figure(fig, path)


def bars(table: pd.DataFrame, x: str, y: str, hue: str, title: str, path: Path | None = None,
         ylim: tuple[float, float] | None = None, reference: float | None = None) -> plt.Figure:
    """``y`` per ``x`` as grouped bars (one colour per ``hue``), a dashed line at ``reference``."""
    fig, ax = plt.subplots(figsize=(1.0 * table[x].nunique() + 3, 3.8))
    sns.barplot(table, x=x, y=y, hue=hue, ax=ax)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
    ax.set(title=title, ylim=ylim)
    ax.tick_params(axis="x", rotation=30)
    return save_figure(fig, path)


def message(text: str, path: Path | None = None) -> plt.Figure:
    """A figure that only says ``text``: a declared plot with nothing to draw in this run."""
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return save_figure(fig, path)


def sample_grid(paths: list[str], cols: int = 8, size: int = 64) -> Image.Image:
    """Tile images, each seen as a detector sees it at ``size`` px, into one picture."""
    imgs = [fit_to_input(load_rgb(p), size) for p in paths]
    rows = max(1, -(-len(imgs) // cols))
    grid = Image.new("RGB", (cols * size, rows * size))
    for i, im in enumerate(imgs):
        grid.paste(im, ((i % cols) * size, (i // cols) * size))
    return grid


def save_figure(fig: plt.Figure, path: Path | None) -> plt.Figure:
    """Lay out, write ``path``, and release the figure from pyplot: the caller keeps a figure that
    still draws (``Result.show`` renders it), and a stage with many plots holds none open."""
    fig.tight_layout()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig
