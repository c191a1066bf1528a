"""Compare two pipeline runs' ``metrics/*.json``, timings aside: prints every value that differs
(or exists on one side only) and exits 1 if any does. For a change that must move no number, e.g.
a code move: run ``make smoke`` before and after and compare the two ``.smoke/metrics`` folders.

    python benchmarks/compare_metrics.py BEFORE/metrics AFTER/metrics
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

# keys whose values are wall-clock measurements (they differ between any two runs)
TIMING_KEYS = {"seconds", "images_per_s", "wall_s", "minutes"}
TIMING_SUFFIXES = ("_ms", "_seconds", "ms_per_image")  # e.g. generator_seconds, table6_ms_per_image


def leaves(value: object, path: str = "") -> Iterator[tuple[str, object]]:
    """``(json path, value)`` for every scalar of a decoded JSON document, timings left out."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in TIMING_KEYS or key.endswith(TIMING_SUFFIXES):
                continue
            yield from leaves(inner, f"{path}/{key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from leaves(inner, f"{path}/{i}")
    else:
        yield path, value


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def differences(before: Path, after: Path) -> list[str]:
    """One line per differing value (or file present on one side only)."""
    out = []
    names = sorted({p.name for p in before.glob("*.json")} | {p.name for p in after.glob("*.json")})
    for name in names:
        a, b = before / name, after / name
        if not (a.is_file() and b.is_file()):
            out.append(f"{name}: only in {a.parent if a.is_file() else b.parent}")
            continue
        left, right = dict(leaves(json.loads(a.read_text()))), dict(leaves(json.loads(b.read_text())))
        for key in sorted(set(left) | set(right)):
            if key not in left or key not in right or not same(left[key], right[key]):
                out.append(f"{name}:{key}: {left.get(key, '<missing>')!r} -> {right.get(key, '<missing>')!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    for folder in (args.before, args.after):
        if not folder.is_dir() or not any(folder.glob("*.json")):
            print(f"{folder}: no metrics/*.json there", file=sys.stderr)
            return 2
    diff = differences(args.before, args.after)
    for line in diff:
        print(line)
    files = len({p.name for p in args.before.glob("*.json")})
    print(f"{len(diff)} difference(s) over {files} metrics files (timings aside)")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
