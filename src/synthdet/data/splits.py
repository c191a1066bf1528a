"""Deterministic, seeded, grouped splits and the leakage check.

Crops of one original image share a ``group`` and always land in the same split; an image's
bytes (sha256) must never appear in two splits.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from synthdet.seeding import rng_for


class LeakageError(ValueError):
    """The same image (by content hash or by group) sits in two splits."""


def group_assignment(groups: pd.Series, fraction: float, seed: int, name: str = "holdout") -> pd.Series:
    """True for the rows whose group falls in the seeded ``fraction`` of groups.

    Each group's fate depends only on (seed, group name): adding or removing other groups never
    moves it, so splits stay stable as a dataset grows.
    """
    def score(group: str) -> float:
        h = hashlib.sha256(f"{seed}:{name}:{group}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    unique = pd.Series(groups.unique())
    chosen = set(unique[unique.map(score) < fraction])
    return groups.isin(chosen)


def assign_splits(df: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    """Carve a validation split out of ``train`` by group; ``test`` is left as the dataset gave it.
    A group that is also in another split (ImagiNet's calibration images) stays in train."""
    out = df.copy()
    groups = out["group"].fillna(out["path"]).astype(str)
    is_train = out["split"] == "train"
    elsewhere = groups.isin(set(groups[~is_train]))
    to_val = is_train & ~elsewhere & group_assignment(groups, val_fraction, seed, "val")
    out.loc[to_val, "split"] = "val"
    return out


# Splits that fit a model (ImagiNet's calibration set tunes the head on training data) may share
# images; an image in a fitting split and in val or test, or in val and test, is a leak.
SPLIT_ROLE = {"train": "fit", "calibration": "fit", "val": "val", "test": "test"}


def find_leaks(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose sha256 or group occurs in more than one split role (see ``SPLIT_ROLE``)."""
    leaks = []
    df = df.reset_index(drop=True)
    roles = df["split"].map(lambda s: SPLIT_ROLE.get(s, s))
    for key in ("sha256", "group"):
        col = df[key].dropna()
        splits = roles.loc[col.index].groupby(col).nunique()
        bad = set(splits[splits > 1].index)
        if bad:
            leaks.append(df[df[key].isin(bad)].assign(leak_key=key))
    return pd.concat(leaks) if leaks else df.iloc[0:0].assign(leak_key=pd.Series(dtype=str))


def check_no_leaks(df: pd.DataFrame, on_leak: str = "error") -> pd.DataFrame:
    """Apply the ``split.on_leak`` policy: ``error`` raises, ``drop`` removes the leaking rows."""
    leaks = find_leaks(df)
    if leaks.empty:
        return df
    example = leaks.iloc[0]
    message = (f"{leaks['path'].nunique()} images share their {example['leak_key']} across splits, "
               f"e.g. {example['path']} ({example['split']})")
    if on_leak == "error":
        raise LeakageError(message)
    if on_leak == "drop":
        return df[~df["path"].isin(set(leaks["path"]))]
    raise ValueError(f"split.on_leak must be 'error' or 'drop', not {on_leak!r}")


def split_counts(df: pd.DataFrame) -> pd.DataFrame:
    return df.pivot_table(index=["subset", "split"], columns="label", values="path", aggfunc="count",
                          fill_value=0).rename(columns={0: "real", 1: "fake"})



def parse_class_budget(spec: str) -> tuple[int, int]:
    """``"8x20"`` -> (8 classes, 20 images per class and label)."""
    try:
        n_classes, per_class = (int(v) for v in str(spec).lower().split("x"))
    except ValueError:
        raise ValueError(f"class budget {spec!r}: expected '<classes>x<images per class>', e.g. '8x20'") from None
    if n_classes < 1 or per_class < 1:
        raise ValueError(f"class budget {spec!r}: both numbers must be positive")
    return n_classes, per_class


def class_subset(rows: pd.DataFrame, n_classes: int, per_class: int, seed: int) -> pd.DataFrame:
    """GenImage's training-set ablations: ``n_classes`` classes drawn at random (seeded) among those
    with ``per_class`` images of each label, then ``per_class`` real and ``per_class`` fake images of
    each. Every fake carries the class it was generated for, so both sides cover the same classes."""
    counts = rows.groupby(["class", "label"]).size().unstack("label", fill_value=0)
    counts = counts.reindex(columns=[0, 1], fill_value=0)
    eligible = sorted(counts.index[(counts[0] >= per_class) & (counts[1] >= per_class)])
    if len(eligible) < n_classes:
        raise ValueError(f"only {len(eligible)} classes have {per_class} real and {per_class} fake training images "
                         f"(largest: {counts.min(axis=1).nlargest(3).to_dict()}); asked for {n_classes}")
    rng = rng_for(seed, "class_subset", str(n_classes), str(per_class))
    chosen = sorted(rng.choice(eligible, n_classes, replace=False))
    parts = []
    for (cls, label), group in rows[rows["class"].isin(chosen)].groupby(["class", "label"], sort=True):
        parts.append(group.iloc[np.sort(rng_for(seed, "class_subset", cls, str(label)).choice(
            len(group), per_class, replace=False))])
    return pd.concat(parts).sort_index()
