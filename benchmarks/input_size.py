"""The pretrained detectors' input size, measured both ways: the embedded benchmark's native 64 px
against upsampled to the ImageNet size the weights were trained at (224 px), for the frozen-feature
probe (whole cross-generator matrix) and the fine-tuned EfficientNet-Lite0 (trained on
``tables.detector_subset``). Prints, per setting, the seconds and goal 4's numbers (accuracy and AUC
of a detector trained on ``tables.detector_subset`` over the other generator subsets; the probe's
off-diagonal mean), the numbers the default in params.yaml is chosen by.

Usage, in a workspace where `dvc repro degrade` has run (it writes the probe's and the fine-tuned
run's outputs where the pipeline would, so rerun those stages after it):
    python benchmarks/input_size.py [--probe-sizes 64 224] [--finetune-sizes 64 224] > results.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import pandas as pd

from synthdet.genimage import tables as T
from synthdet.machine import machine_facts
from synthdet.stages import paths, probe, runs
from synthdet.stages.base import load_params

SIZES = (64, 224)


def goal(scores: pd.DataFrame, params: dict) -> dict:
    t = params["tables"]
    carry = T.transfer(scores, t["detector_subset"], list(t["subsets"]), n_bootstrap=0)
    row = carry.iloc[0]
    return {k: (None if pd.isna(row[k]) else round(float(row[k]), 4))
            for k in ("own_acc", "own_auc", "others_acc", "others_auc", "off_diagonal_acc", "off_diagonal_auc")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probe-sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--finetune-sizes", type=int, nargs="*", default=list(SIZES))
    args = parser.parse_args()
    base = load_params()
    rows = []
    for size in args.probe_sizes:
        params = copy.deepcopy(base)
        params["probe"]["input_size"] = size
        backbone = params["probe"]["backbones"][0]
        t0 = time.perf_counter()
        probe.run(params, "features", backbone)
        features = time.perf_counter() - t0
        probe.run(params, "probe", backbone)
        heads = time.perf_counter() - t0 - features
        scores = pd.read_parquet(f"{paths.RUNS}/{paths.run_name('probe', backbone, paths.EACH, params['seed'])}"
                                 "/scores.parquet")
        rows.append({"detector": paths.probe_model(backbone), "input_size": size, "feature_seconds": round(features, 1),
                     "probe_seconds": round(heads, 1), **goal(scores, params)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    for size in args.finetune_sizes:
        params = copy.deepcopy(base)
        model = "effnet_lite0"
        params["tables"]["train_overrides"] = {model: {**params["tables"]["train_overrides"].get(model, {}),
                                                       "input_size": size}}
        t0 = time.perf_counter()
        runs.run(params, "zoo", params["tables"]["seeds"][0], model=model)
        seconds = time.perf_counter() - t0
        scores = pd.read_parquet(f"{paths.RUNS}/{paths.run_name('zoo', model, params['tables']['detector_subset'], 0)}"
                                 "/scores.parquet")
        rows.append({"detector": f"{model} from {params['tables']['train_overrides'][model].get('pretrained')}",
                     "input_size": size, "run_seconds": round(seconds, 1), **goal(scores, params)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    json.dump({"machine": machine_facts(), "rows": rows}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
