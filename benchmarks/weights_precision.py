"""Would storing a detector's weights in float16 (or bfloat16) change any number? Scores a run's
``detector.pt`` on the clean test images as saved (float32) and with every floating-point weight
rounded to the smaller type and back (what loading a half-precision file gives), then compares.

Usage: python benchmarks/weights_precision.py [artifacts/train/detector.pt] > benchmarks/results/<name>.json
Run in a workspace where the pipeline ran (it reads ``artifacts/degrade/degraded.parquet``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from synthdet.machine import machine_facts
from synthdet.metrics import metrics_table
from synthdet.stages import paths
from synthdet.training.checkpoint import load_detector
from synthdet.training.scoring import score


def rounded(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The model with every floating-point parameter and buffer stored as ``dtype`` and read back."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype).to(tensor.dtype))
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("detector", nargs="?", default=paths.DETECTOR, type=Path)
    args = parser.parse_args()
    rows = pd.read_parquet(paths.DEGRADED)
    rows = rows[rows["condition"] == "clean"].reset_index(drop=True)
    results, reference = {}, None
    for name, dtype in (("float32", None), ("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        model, cfg = load_detector(args.detector)
        if dtype is not None:
            model = rounded(model, dtype)
        scored = score(model, rows, input_size=cfg["input_size"], temperature=cfg["temperature"], desc=name)
        p = scored["fake_probability"].to_numpy()
        table = metrics_table(rows.assign(score=p), ["subset"], n_bootstrap=0).set_index("subset")
        if reference is None:
            reference = (p, table)
            results[name] = {"bytes_per_weight": 4}
            continue
        p0, t0 = reference
        diff = {m: int((table[m].round(3) != t0[m].round(3)).sum()) for m in ("acc", "auc", "ap")}
        results[name] = {"bytes_per_weight": 2, "max_abs_probability_change": float(np.nanmax(np.abs(p - p0))),
                         "decisions_flipped_at_0.5": int(((p >= 0.5) != (p0 >= 0.5)).sum()),
                         "subset_metrics_changed_at_3_decimals": diff,
                         "largest_acc_change": float((table["acc"] - t0["acc"]).abs().max()),
                         "largest_auc_change": float((table["auc"] - t0["auc"]).abs().max())}
    print(json.dumps({"detector": str(args.detector), "images": len(rows), "file_bytes": os.path.getsize(args.detector),
                      "machine": machine_facts(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
