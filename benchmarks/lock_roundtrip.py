"""What DVC pays per stage to record it: ``dvc.lock`` parsed for update and written back
(``dvc.dvcfile.Lockfile.dump``: ruamel's round-trip loader and dumper, once after every stage), for
a lock as it is and for the same lock with each stage's source-file entries replaced by the one
code file the ``code`` stage writes (``src/synthdet/stages/code.py``).

Usage: python benchmarks/lock_roundtrip.py [dvc.lock] > benchmarks/results/lock_roundtrip_<machine>.json
(a lock of a finished run that still lists every source file, e.g. ``git show 4d18181:dvc.lock``).
Run it alone.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import yaml
from dvc.utils.serialize._yaml import parse_yaml_for_update
from ruamel.yaml import YAML

from synthdet.machine import machine_facts


def one_code_file(text: str) -> str:
    """The lock with every stage's ``src/`` entries replaced by one code-file entry."""
    doc = yaml.safe_load(text)
    for stage in doc["stages"].values():
        deps = stage.get("deps", [])
        kept = [d for d in deps if not d["path"].startswith("src/")]
        if len(kept) < len(deps):
            kept.append({"path": "artifacts/code/stage/module", "hash": "md5", "md5": "0" * 32, "size": 2000})
        stage["deps"] = kept
    return yaml.safe_dump(doc, sort_keys=False)


def roundtrip(text: str, repeats: int = 3) -> float:
    """Best of ``repeats``: seconds to parse the lock for update and dump it again."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        data = parse_yaml_for_update(text, "dvc.lock")
        YAML().dump(data, io.StringIO())
        best = min(best, time.perf_counter() - t0)
    return round(best, 3)


def main() -> None:
    text = Path(sys.argv[1] if len(sys.argv) > 1 else "dvc.lock").read_text()
    small = one_code_file(text)
    stages = len(yaml.safe_load(text)["stages"])
    before, after = roundtrip(text), roundtrip(small)
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_facts(),
                      "stages": stages, "bytes": {"every source file": len(text), "one code file": len(small)},
                      "roundtrip_s": {"every source file": before, "one code file": after},
                      "per_make_repro_s": {"every source file": round(before * stages, 1),
                                           "one code file": round(after * stages, 1)}}, indent=2))


if __name__ == "__main__":
    main()
