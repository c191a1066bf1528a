"""ImagiNet's figures (seaborn); beside :mod:`synthdet.analysis.report`, which the GenImage stages use and
which this module extends without changing (every stage that plots depends on that file)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns

from synthdet.analysis.report import plt
from synthdet.analysis.report import save_figure as save  # one way to lay out, write and release a figure


def facet_lines(table: pd.DataFrame, x: str, y: str, facet: str, title: str, path: Path | None = None) -> plt.Figure:
    """``y`` against ``x``, one panel per ``facet`` value, each with its own x axis (Figure 4)."""
    kinds = list(dict.fromkeys(table[facet]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        part = table[table[facet] == kind].sort_values(x)
        sns.lineplot(part, x=x, y=y, marker="o", ax=ax)
        ax.set(title=kind, xlabel=kind, ylim=(0, 1.02), ylabel="accuracy")
        ax.invert_xaxis()  # both curves start at the clean image (q100, r = 1) on the left
    fig.suptitle(title)
    return save(fig, path)


def facet_bars(table: pd.DataFrame, x: str, y: str, hue: str, facet: str, title: str,
               path: Path | None = None) -> plt.Figure:
    """Grouped bars of ``y`` per ``x`` and ``hue``, one panel per ``facet`` value (Figure 3)."""
    kinds = list(dict.fromkeys(table[facet]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(1.1 * table[x].nunique() * len(kinds) + 4, 3.8), squeeze=False)
    for k, (ax, kind) in enumerate(zip(axes[0], kinds, strict=True)):
        sns.barplot(table[table[facet] == kind], x=x, y=y, hue=hue, ax=ax, legend=k == len(kinds) - 1)
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set(title=kind, ylim=(0, 1.02))
        ax.tick_params(axis="x", rotation=30)
    sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.0, 1.0), title=hue)
    fig.suptitle(title)
    return save(fig, path)


def scatter_panels(points: pd.DataFrame, colours: list[str], title: str, path: Path | None = None) -> plt.Figure:
    """The 2-D map (columns x, y) once per colouring in ``colours`` (Figure 2)."""
    fig, axes = plt.subplots(1, len(colours), figsize=(4.6 * len(colours), 4.2), squeeze=False)
    for ax, colour in zip(axes[0], colours, strict=True):
        sns.scatterplot(points, x="x", y="y", hue=colour, s=10, linewidth=0, ax=ax)
        ax.set(title=f"by {colour}", xticks=[], yticks=[], xlabel="", ylabel="")
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    fig.suptitle(title)
    return save(fig, path)
