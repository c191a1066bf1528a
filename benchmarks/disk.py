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

PARTS = (".venv", ".dvc/cache", "artifacts", "data", "reports", ".git")  # then "other": the rest


def _files(root: Path):  # noqa: ANN202
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            yield path, st


def measure(clone: Path) -> dict:
    seen: set[tuple[int, int]] = set()
    sizes = {part: 0 for part in (*PARTS, "other")}
    weights = {"files": 0, "bytes": 0, "resume_state_files": 0, "linked_files": 0}
    checkpoints = 0
    for path, st in _files(clone):
        key = (st.st_dev, st.st_ino)
        rel = path.relative_to(clone).as_posix()
        if path.suffix == ".pt" and rel.startswith("artifacts/"):
            weights["files"] += 1
            weights["resume_state_files"] += path.name in ("last.pt", "best.pt")
            weights["linked_files"] += st.st_nlink > 1
            if key not in seen:
                weights["bytes"] += st.st_blocks * 512
        if key in seen:
            continue
        seen.add(key)
        part = next((p for p in PARTS if rel == p or rel.startswith(p + "/")), "other")
        sizes[part] += st.st_blocks * 512  # what the file takes on disk, as du counts it
        if rel.startswith("artifacts/") and "/checkpoints/" in f"/{rel}":
            checkpoints += st.st_blocks * 512
    gib = {part: round(b / 2**30, 2) for part, b in sizes.items()}
    commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    config = configparser.ConfigParser()
    config.read(clone / ".dvc/config")
    cache_type = config.get("cache", "type", fallback="").strip('"')
    return {"date": datetime.date.today().isoformat(), "commit": commit, "dvc_cache_type": cache_type or "copy",
            "gib": gib, "total_gib": round(sum(sizes.values()) / 2**30, 2),
            "checkpoint_folders_gib": round(checkpoints / 2**30, 2),
            "weight_files_in_artifacts": {**weights, "gib": round(weights["bytes"] / 2**30, 2)}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("clone", nargs="?", default=".", type=Path)
    print(json.dumps(measure(parser.parse_args().clone.resolve()), indent=2))


if __name__ == "__main__":
    main()
