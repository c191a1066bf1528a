"""The disk a clone uses, by part: the virtual environment, DVC's cache, the pipeline's outputs
(artifacts/ and the rest) and the checkpoints' share of artifacts/, with the weight files counted.

Usage: python benchmarks/disk.py [CLONE] > benchmarks/results/disk_<what>.json

A file with several hard links (an output linked to DVC's cache) is counted once, in the first
part that holds it in the order below; so the parts add up to what the clone takes on disk (``du``).
"""

from __future__ import annotations

import argparse
import configparser
import datetime
import json
import os
import subprocess
from pathlib import Path

PARTS = (".venv", "artifacts", "data", "reports", ".dvc/cache", ".git")  # then "other": the rest


def _files(root: Path):  # noqa: ANN202
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            yield path, st


def _part(rel: str) -> str:
    return next((p for p in PARTS if rel == p or rel.startswith(p + "/")), "other")


def measure(clone: Path) -> dict:
    """``alone``: each part as ``du -s <part>`` counts it (a file linked into DVC's cache counts in
    both); ``once``: each file counted once, in the first part of PARTS holding it (outputs before
    the cache), so that these add up to what the clone takes on disk."""
    seen: set[tuple[int, int]] = set()
    seen_in: dict[str, set[tuple[int, int]]] = {part: set() for part in (*PARTS, "other")}
    alone = dict.fromkeys(seen_in, 0)
    once = dict.fromkeys(seen_in, 0)
    weights = {"files": 0, "bytes": 0, "resume_state_files": 0, "linked_files": 0}
    weight_inodes: set[tuple[int, int]] = set()
    order = {part: i for i, part in enumerate((*PARTS, "other"))}
    files = sorted(_files(clone), key=lambda f: order[_part(f[0].relative_to(clone).as_posix())])
    for path, st in files:  # in the order of PARTS: a linked output counts as an output, not as cache
        key, size = (st.st_dev, st.st_ino), st.st_blocks * 512  # what the file takes on disk, as du counts it
        rel = path.relative_to(clone).as_posix()
        part = _part(rel)
        if key not in seen_in[part]:
            seen_in[part].add(key)
            alone[part] += size
        if key not in seen:
            seen.add(key)
            once[part] += size
        if path.suffix == ".pt" and part == "artifacts":
            weights["files"] += 1
            weights["resume_state_files"] += path.name in ("last.pt", "best.pt")
            weights["linked_files"] += st.st_nlink > 1
            if key not in weight_inodes:
                weight_inodes.add(key)
                weights["bytes"] += size
    commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    config = configparser.ConfigParser()
    config.read(clone / ".dvc/config")
    cache_type = config.get("cache", "type", fallback="").strip('"')
    gib = lambda sizes: {part: round(b / 2**30, 2) for part, b in sizes.items()}  # noqa: E731
    return {"date": datetime.date.today().isoformat(), "commit": commit, "dvc_cache_type": cache_type or "copy",
            "gib_alone": gib(alone), "gib_once": gib(once), "total_gib": round(sum(once.values()) / 2**30, 2),
            "weight_files_in_artifacts": {**weights, "gib": round(weights["bytes"] / 2**30, 2)}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("clone", nargs="?", default=".", type=Path)
    print(json.dumps(measure(parser.parse_args().clone.resolve()), indent=2))


if __name__ == "__main__":
    main()
