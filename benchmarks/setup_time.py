"""How long ``make setup`` takes in a fresh clone, with uv (the default) and with pip
(``SYNTHDET_INSTALLER=pip``), each with a cold package cache: the first minutes of every fresh-clone
``make repro`` and CI run.

Usage: python benchmarks/setup_time.py [--installers uv pip] > benchmarks/results/setup_<machine>.json
Run it alone (it installs 6 GB per installer); each clone is removed after it is measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from synthdet.machine import machine_facts

ROOT = Path(__file__).resolve().parents[1]


def measure(installer: str, scratch: Path) -> dict:
    clone = scratch / f"clone_{installer}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "SYNTHDET_INSTALLER": installer, "UV_CACHE_DIR": str(scratch / "uv_cache"),
           "PIP_NO_CACHE_DIR": "1", "PATH": os.environ["PATH"]}
    env.pop("VIRTUAL_ENV", None)
    t0 = time.perf_counter()
    proc = subprocess.run(["make", "setup"], cwd=clone, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"make setup with {installer} failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    used = "pip" if "installing with pip" in proc.stdout or installer == "pip" else "uv"
    venv_bytes = sum(f.stat().st_size for f in (clone / ".venv").rglob("*") if f.is_file() and not f.is_symlink())
    shutil.rmtree(clone)
    shutil.rmtree(scratch / "uv_cache", ignore_errors=True)
    return {"installer": installer, "used": used, "seconds": round(seconds, 1),
            "venv_gib": round(venv_bytes / 2**30, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--installers", nargs="+", default=["uv", "pip"], choices=["uv", "pip"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="setup_time_") as scratch:
        rows = [measure(installer, Path(scratch)) for installer in args.installers]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    print(json.dumps({"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                      "commit": commit.stdout.strip(), "machine": machine_facts(), "make_setup": rows}, indent=2))


if __name__ == "__main__":
    main()
