"""One table run (train one detector on one subset, then score what an ``xgen`` run scores), timed
with each memory layout and DataLoader-worker setting, to choose the CPU defaults by measurement.

Usage, after ``dvc repro split degrade`` (it reads their outputs; nothing is written there):
    python benchmarks/table_run.py [--model resnet50] [--subset dcgan] > benchmarks/results/table_run_<machine>.json
Each variant runs in its own process, one after another (never two at once: on a small machine
they would slow each other down), with the repository's params.yaml and only the variant changed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from synthdet.machine import machine_facts

VARIANTS = {  # name -> (train.channels_last, train.num_workers = evaluate.num_workers)
    "contiguous, 2 workers (before)": (False, 2),
    "channels_last, 2 workers": (True, 2),
    "contiguous, no workers": (False, 0),
    "channels_last, no workers (default on CPU)": (True, 0),
}

CHILD = """
import json, sys, tempfile, time
from pathlib import Path
import pandas as pd
from synthdet.cli import read_yaml
from synthdet.stages import paths
from synthdet.training.loop import train_on_manifest
from synthdet.training import scoring
model, subset, channels_last, workers = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
train = {**read_yaml(Path("params.yaml"), "params")["train"], "channels_last": channels_last, "num_workers": workers}
with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    result = train_on_manifest(Path(paths.SPLITS), Path(tmp) / "run", Path(tmp) / "ckpt", model, subset, train, 0,
                               device="cpu")
    t1 = time.perf_counter()
    table = pd.read_parquet(paths.DEGRADED)
    table = table[(table["condition"] == "clean") | (table["subset"] == subset)]
    scores = scoring.score(Path(tmp) / "run/detector.pt", table, batch_size=128, num_workers=workers, device="cpu")
    t2 = time.perf_counter()
print(json.dumps({"train_s": round(t1 - t0, 1), "score_s": round(t2 - t1, 1), "scored_images": len(scores),
                  "train_images_per_s": [round(h["images_per_s"], 1) for h in result["history"]],
                  "val_auc": [round(h["val_auc"], 4) for h in result["history"]]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--subset", default="dcgan")
    args = parser.parse_args()
    rows = []
    for name, (channels_last, workers) in VARIANTS.items():
        out = subprocess.run([sys.executable, "-c", CHILD, args.model, args.subset, str(int(channels_last)),
                              str(workers)], capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stderr[-2000:]}")
        row = {"variant": name, **json.loads(out.stdout.strip().splitlines()[-1])}
        row["total_s"] = round(row["train_s"] + row["score_s"], 1)
        print(f"{name}: {row['total_s']} s", file=sys.stderr)
        rows.append(row)
    base = rows[0]["total_s"]
    for row in rows:
        row["speedup_vs_first"] = round(base / row["total_s"], 2)
    json.dump({"machine": machine_facts(), "model": args.model, "subset": args.subset, "variants": rows},
              sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
