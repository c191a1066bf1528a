"""The manifest: one row per image, the only thing stages pass about images.

Columns (see ``COLUMNS``): where the file is, its label (0 real "nature" / 1 fake "ai"), which
subset/split/generator/family/content/class it belongs to, what the file is (size, format, mode,
JPEG quality and chroma subsampling, EXIF presence, sha256) and whether it is usable (``status`` "ok" or why not).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from synthdet.data.imageio import STATUS_OK, ImageDecodeError, inspect_image
from synthdet.data.indexcache import IndexCache, file_stat
from synthdet.fsutil import atomic_output, file_digest

COLUMNS = [
    "path", "label", "subset", "split", "generator", "family", "content", "class", "source", "group",
    "width", "height", "format", "mode", "jpeg_quality", "subsampling", "exif", "sha256", "status", "error",
]
FILE_COLUMNS = ("sha256", "width", "height", "format", "mode", "jpeg_quality", "subsampling", "exif", "status", "error")
# what an image file may be called (Pillow reads all of them; .jfif is JPEG, .avif Pillow's AVIF plugin)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".avif", ".bmp", ".tif", ".tiff", ".gif"}


class ManifestError(ValueError):
    """A manifest file that cannot be used as it is: the message names it and what is wrong."""


class LayoutError(ValueError):
    """A folder that does not have the expected ``<subset>/{train,val}/{ai,nature}`` layout."""


def describe_file(path: Path) -> dict:
    """Decode ``path`` fully and return the file columns of its manifest row."""
    row: dict = {**dict.fromkeys(FILE_COLUMNS), "status": STATUS_OK, "error": ""}
    try:
        row["sha256"] = file_digest(path) if path.stat().st_size else None
        info = inspect_image(path)
        row.update(width=info.width, height=info.height, format=info.format, mode=info.mode,
                   jpeg_quality=info.jpeg_quality, subsampling=info.subsampling, exif=info.exif)
    except ImageDecodeError as exc:
        row.update(status=exc.status, error=exc.problem)
    except FileNotFoundError:  # gone between listing and reading: missing, as the image reader says
        row.update(status="missing", error="file does not exist")
    except OSError as exc:
        row.update(status="unreadable", error=str(exc))
    return row


def describe_files(paths: Iterable[Path], desc: str = "index", workers: int | None = None,
                   cache: IndexCache | None = None) -> list[dict]:
    """:func:`describe_file` of every path, in order; with ``cache``, only the files that changed
    since they were recorded are decoded (the others' facts come from the cache)."""
    paths = list(paths)
    rows: list[dict | None] = ([cache.get(p, required=FILE_COLUMNS) for p in paths] if cache is not None
                               else [None] * len(paths))
    todo = [i for i, row in enumerate(rows) if row is None]
    stats = {i: file_stat(paths[i]) for i in todo} if cache is not None else {}  # before decoding
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        described = pool.map(describe_file, [paths[i] for i in todo])
        for i, row in zip(todo, tqdm(described, total=len(todo), desc=desc), strict=True):
            rows[i] = row
            if cache is not None:
                cache.put(paths[i], stats[i], row)
    if cache is not None:
        cache.flush()
    return rows  # type: ignore[return-value]


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Add missing columns, fix dtypes and column order, sort by path (stable across runs)."""
    df = df.copy()
    for col in COLUMNS:
        if col not in df:
            df[col] = None
    df = df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]
    df["label"] = df["label"].astype("int8")
    for col in ("width", "height", "jpeg_quality"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int32")
    df["exif"] = df["exif"].astype("boolean")
    return df.sort_values(["subset", "path"], kind="stable").reset_index(drop=True)


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    with atomic_output(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_manifest(path: Path) -> pd.DataFrame:
    if not Path(path).exists():
        raise FileNotFoundError(errno.ENOENT, "manifest not found (the stage that writes it has not run)", str(path))
    df = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in df]
    if missing:
        raise ManifestError(f"{path}: not a synthdet manifest (missing columns {missing})")
    problems = manifest_problems(df)
    if problems:
        raise ManifestError(f"{path}: broken manifest: {'; '.join(problems)}. Rebuild it (dvc repro -f <the stage "
                         "that writes it>) rather than editing it by hand")
    return df


def manifest_problems(df: pd.DataFrame) -> list[str]:
    """What makes a manifest unusable whatever reads it (a hand edit, a bad merge): labels other
    than 0 and 1, a missing path, one image listed twice in one subset and split."""
    problems = []
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = df[~labels.isin([0, 1])]
    if len(bad):
        problems.append(f"{len(bad)} rows with a label other than 0 (real) or 1 (fake), "
                        f"e.g. {bad['label'].iloc[0]} for {bad['path'].iloc[0]}")
    if df["path"].isna().any() or (df["path"].astype(str) == "").any():
        problems.append(f"{int(df['path'].isna().sum() + (df['path'].astype(str) == '').sum())} rows without a path")
    key = [c for c in ("path", "subset", "split") if c in df]  # one file may serve two splits (calibration)
    twice = df.loc[df.duplicated(key, keep=False) & df["path"].notna(), "path"]
    if len(twice):
        problems.append(f"{twice.nunique()} images listed more than once in one subset and split, e.g. {twice.iloc[0]}")
    return problems


def usable(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == STATUS_OK]
