"""Wall time and peak memory of each DVC stage of `make repro` on this machine.

Usage: python benchmarks/stage_times.py [--force] > benchmarks/results/stage_times_<machine>.json
Each stage runs as `dvc repro -s <stage>` in its own process; peak memory is the largest
resident set of that process tree (ru_maxrss of the waited-for children, in MiB).
``--from-reports CLONE``: the notebook stages' times of a run already made there (``make repro``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from synthdet.machine import machine_facts


def cpu_model() -> str:
    """The processor's name (timings differ across machines of one size: record it with them)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def all_stages() -> list[str]:
    """Every stage of dvc.yaml in pipeline order (matrix stages expanded, e.g. xgen@ldm-0)."""
    out = subprocess.run(["dvc", "stage", "list", "--name-only"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def run_stage(stage: str, force: bool) -> dict:
    code = (
        "import resource, subprocess, sys;"
        f"r = subprocess.run(['dvc', 'repro', '-s', '{stage}'] + (['--force'] if {force} else []));"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{proc.stderr[-2000:]}")
    peak_kib = int(proc.stderr.strip().splitlines()[-1])
    return {"stage": stage, "seconds": round(seconds, 1), "peak_rss_mib": round(peak_kib / 1024)}


def from_reports(root: Path) -> list[dict]:
    """The notebook stages' times of a run that already happened (``make repro``: one ``dvc repro``),
    from papermill's own start and end times in the executed notebooks under ``root/reports``;
    in the order they ran. Without the per-stage ``dvc`` start-up this script's own runs pay."""
    rows = []
    for path in sorted(root.glob("reports/**/*.ipynb")):
        meta = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
        if meta.get("start_time") and meta.get("duration") is not None:
            rows.append({"report": path.relative_to(root).as_posix(), "start": meta["start_time"],
                         "end": meta["end_time"], "seconds": round(float(meta["duration"]), 1)})
    return sorted(rows, key=lambda r: r["start"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--force", action="store_true", help="rerun stages that are up to date")
    parser.add_argument("--from-reports", metavar="CLONE", type=Path,
                        help="read the times of a finished run from CLONE's executed notebooks instead")
    parser.add_argument("stages", nargs="*", help="default: every stage of dvc.yaml, in order")
    args = parser.parse_args()
    if args.from_reports:
        rows = from_reports(args.from_reports)
        print(json.dumps({"machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
                                      "platform": platform.platform(), "python": platform.python_version(),
                                      "cpu_flags": machine_facts()["cpu_flags"]},
                          "first_start": rows[0]["start"] if rows else None,
                          "last_end": max((r["end"] for r in rows), default=None),
                          "notebook_seconds": round(sum(r["seconds"] for r in rows), 1), "stages": rows}, indent=2))
        return
    rows = []
    for stage in args.stages or all_stages():
        rows.append(run_stage(stage, args.force))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "platform": platform.platform(),
                    "python": platform.python_version(), "cpu_flags": machine_facts()["cpu_flags"]},
        "stages": rows,
        "total_seconds": round(sum(r["seconds"] for r in rows), 1),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
