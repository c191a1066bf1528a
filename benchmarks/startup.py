"""What one stage process pays to start: importing the stack a notebook kernel imports (synthdet's
stages, torch, torchvision, timm, sklearn, papermill), with the venv's bytecode and without it.

uv installs without compiling bytecode (pip compiles by default), and where
``PYTHONDONTWRITEBYTECODE`` is set nothing ever writes it: every process then compiles torch and the
rest from source. ``make setup`` compiles at install time (``scripts/install.py``); this measures
what that saves per process (a ``make repro`` starts about 40 notebook kernels, each ``dvc`` call and
generator worker is one more). "Without" points Python at an empty bytecode folder
(``PYTHONPYCACHEPREFIX``), which it cannot write to when ``PYTHONDONTWRITEBYTECODE`` is set.

Usage: python benchmarks/startup.py [--repeats 3] > benchmarks/results/startup_<machine>.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from synthdet.machine import machine_facts

IMPORTS = "import synthdet.stages.audit, synthdet.stages.train, timm, sklearn.ensemble, papermill"


def seconds(env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], env=env, check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as empty:
        base = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        runs = {"with_bytecode": [], "from_source": []}
        for _ in range(args.repeats):  # interleaved, so a drift in the machine's speed hits both
            runs["with_bytecode"].append(seconds(base))
            runs["from_source"].append(seconds({**base, "PYTHONPYCACHEPREFIX": empty}))
    median = {k: round(statistics.median(v), 2) for k, v in runs.items()}
    facts = machine_facts()
    saved = round(median["from_source"] - median["with_bytecode"], 2)
    print(json.dumps({"what": f"python -c '{IMPORTS}'", "median_s": median, "saved_per_process_s": saved,
                      "seconds": {k: [round(x, 2) for x in v] for k, v in runs.items()},
                      "machine": {"cpu": facts["cpu"], "cores": facts["cores"]},
                      "date": datetime.date.today().isoformat()}, indent=1))


if __name__ == "__main__":
    main()
