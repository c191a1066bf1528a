"""A persistent per-file index cache: decoding 2.7M images takes hours, so a rerun of the
download stage decodes and hashes only the files that changed since the last one.

A file's facts (sha256, size, format, mode, JPEG quality, status; stored as JSON) are reused when its path, size,
modification time, change time and inode all match what was recorded; anything else (a rewritten,
replaced, re-extracted or touched file) is decoded again. The change time makes it conservative: a
`chmod` costs a re-decode, never a stale row. New rows are flushed in chunks as the index runs
(``part-*.parquet``), so an interrupted run resumes where it stopped; :meth:`IndexCache.save`
compacts them into ``index.parquet`` holding the files of the last run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pandas as pd

from synthdet.fsutil import atomic_output, make_owned_dir

log = logging.getLogger(__name__)
STAT_COLUMNS = ("size", "mtime_ns", "ctime_ns", "inode")
INDEX_FILE = "index.parquet"


def _row(path: str, stat: tuple[int, ...], facts: dict) -> dict:
    """One cache row; the facts as JSON, so None stays None (a Parquet column would make it NaN)."""
    return {"path": path, **dict(zip(STAT_COLUMNS, stat, strict=True)), "facts": json.dumps(facts, sort_keys=True)}


def file_stat(path: Path) -> tuple[int, int, int, int] | None:
    """(size, mtime_ns, ctime_ns, inode), or None for a file that cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class IndexCache:
    """Facts of files described before, keyed by path and checked against the file's stat."""

    def __init__(self, folder: Path, flush_every: int = 10_000) -> None:
        self.folder = Path(folder)
        self.flush_every = flush_every
        self._known: dict[str, tuple[tuple, dict]] = {}
        self._pending: list[dict] = []
        self._used: dict[str, dict] = {}
        self.hits = self.misses = 0
        make_owned_dir(self.folder)
        for file in [self.folder / INDEX_FILE, *sorted(self.folder.glob("part-*.parquet"))]:
            if file.exists():
                self._load(file)

    def _load(self, file: Path) -> None:
        try:
            table = pd.read_parquet(file)
            missing = {"path", "facts", *STAT_COLUMNS} - set(table.columns)
            if missing:
                raise ValueError(f"missing columns {sorted(missing)}")
        except (OSError, ValueError) as exc:  # pyarrow's errors are ValueErrors and OSErrors
            log.warning("%s: unreadable index cache (%s); its files are decoded again", file, exc)
            return
        for path, facts, *stat in zip(table["path"], table["facts"], *(table[k] for k in STAT_COLUMNS), strict=True):
            self._known[path] = (tuple(int(v) for v in stat), json.loads(facts))

    def get(self, path: Path, required: tuple[str, ...] = ()) -> dict | None:
        """The recorded facts of ``path`` when the file is unchanged and they hold every
        ``required`` key (an older version recorded fewer facts), else None."""
        key = Path(path).as_posix()
        entry = self._known.get(key)
        stat = file_stat(path)
        if entry is not None and stat is not None and entry[0] == stat and set(required) <= entry[1].keys():
            self.hits += 1
            self._used[key] = _row(key, stat, entry[1])
            return dict(entry[1])
        self.misses += 1
        return None

    def put(self, path: Path, stat: tuple[int, int, int, int] | None, facts: dict) -> None:
        """Record ``facts`` for ``path`` as it was when ``stat`` was taken before decoding it (a
        file changed while it was decoded then mismatches next time and is decoded again)."""
        if stat is None:
            return
        key = Path(path).as_posix()
        row = _row(key, stat, facts)
        self._known[key] = (stat, dict(facts))
        self._used[key] = row
        self._pending.append(row)
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        n = len(list(self.folder.glob("part-*.parquet")))
        with atomic_output(self.folder / f"part-{n:06d}.parquet") as tmp:
            pd.DataFrame(self._pending).to_parquet(tmp, index=False)
        self._pending = []

    def save(self) -> None:
        """Compact: ``index.parquet`` = the files looked up in this run; the chunk files go."""
        with atomic_output(self.folder / INDEX_FILE) as tmp:
            pd.DataFrame(list(self._used.values())).to_parquet(tmp, index=False)
        for part in self.folder.glob("part-*.parquet"):
            part.unlink()
        self._pending = []

    def stats(self) -> dict[str, int]:
        return {"cached": self.hits, "decoded": self.misses}


def listing_fingerprint(files: list[Path], base: Path) -> dict:
    """Names (relative to ``base``), sizes and modification times of ``files``, digested: what
    changes when a file is replaced, re-downloaded, added or deleted, read without opening one."""
    digest, count, total = hashlib.sha256(), 0, 0
    for path in sorted(files):
        stat = file_stat(path)
        size, mtime = (stat[0], stat[1]) if stat else (-1, -1)  # a missing file is a state too
        digest.update(f"{Path(path).relative_to(base).as_posix()}\0{size}\0{mtime}\n".encode())
        count, total = count + 1, total + max(size, 0)
    return {"files": count, "bytes": total, "digest": digest.hexdigest()}


def tree_files(root: Path) -> list[Path]:
    """Every file below ``root`` (hidden ones too: they are part of the tree), unsorted."""
    out = []
    for folder, _, names in os.walk(root):
        out += [Path(folder) / n for n in names]
    return out
