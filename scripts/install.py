"""Install the pinned requirements into this venv (``make setup``): with uv where it installs,
with pip otherwise.

uv resolves and links the same pinned set in about 20 s where pip takes about 2.5 min on a 2-core
machine (torch and its CUDA wheels are 6 GB; benchmarks/results/README.md), which is most of
``make setup`` and so of every fresh-clone ``make repro`` and CI run. uv does not read pip's
configuration, so the indexes, find-links and constraints pip is configured with (``pip config
list``: files and ``PIP_*`` variables) are handed to it as its own variables, and it picks the best
version over all of them as pip does. Any uv failure falls back to pip, which finishes the job;
``SYNTHDET_INSTALLER=pip`` skips uv.

Then the venv's bytecode is compiled (``compileall`` over site-packages), as pip does for what it
installs: uv does not (its ``--compile-bytecode`` covers only the packages one call installs, so an
existing venv would stay uncompiled), and where ``PYTHONDONTWRITEBYTECODE`` is set nothing ever
writes it, so every stage process (each notebook kernel, ``dvc`` call and generator worker) compiled
torch and the rest from source: 8.6 s of a 14.0 s start on a 2-core Intel Xeon
(``benchmarks/startup.py``). Files already compiled are skipped, so a rerun costs seconds.

Run with the venv's interpreter, stdlib only: ``.venv/bin/python scripts/install.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig

UV = "uv==0.13.9"
# pip option -> uv variable; pip's index-url is uv's default index
PIP_TO_UV = {"index-url": "UV_DEFAULT_INDEX", "extra-index-url": "UV_EXTRA_INDEX_URL",
             "find-links": "UV_FIND_LINKS", "constraint": "UV_CONSTRAINT"}
CERT_OPTION = "cert"
INSTALLER_VARIABLE = "SYNTHDET_INSTALLER"  # "pip": skip uv (to compare, or where uv misbehaves)


def uv_environment(pip_config: str) -> dict[str, str]:
    """uv's variables for what ``pip config list`` printed (lines ``scope.option='value'``; later
    lines and environment variables override earlier ones, as in pip), with pip's resolution rule."""
    found: dict[str, str] = {}
    env_scope: dict[str, str] = {}
    for line in pip_config.splitlines():
        key, sep, value = line.partition("=")
        if not sep or "." not in key:
            continue
        scope, option = key.rsplit(".", 1)
        value = value.strip().strip("'\"")
        (env_scope if scope == ":env:" else found)[option] = value
    found |= env_scope  # PIP_* variables win over files
    env = {PIP_TO_UV[k]: v for k, v in found.items() if k in PIP_TO_UV}
    if CERT_OPTION in found:
        env["SSL_CERT_FILE"] = found[CERT_OPTION]
    return env | {"UV_INDEX_STRATEGY": "unsafe-best-match"}


def run(command: list[str], env: dict[str, str] | None = None) -> bool:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, env=None if env is None else {**os.environ, **env}).returncode == 0


def install(requirements: list[str], no_deps: list[str], editable: str) -> None:
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    steps = [["-r", r] for r in requirements] + [["--no-deps", "-r", r] for r in no_deps] + \
            [["--no-deps", "-e", editable]]
    if os.environ.get(INSTALLER_VARIABLE, "uv") == "pip":
        print(f"{INSTALLER_VARIABLE}=pip: installing with pip", flush=True)
    elif run(pip + [UV]):
        config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
        env = uv_environment(config.stdout)
        uv = [sys.executable, "-m", "uv", "pip", "install", "-q", "--python", sys.executable]
        if all(run(uv + step, env) for step in steps):
            return
        print("uv could not install the requirements; installing them with pip", flush=True)
    else:
        print(f"{UV} could not be installed; installing with pip", flush=True)
    for step in steps:
        if not run(pip + step):
            sys.exit(f"pip install {' '.join(step)} failed")


def compile_bytecode() -> None:
    """Compile every module of the venv's site-packages that has no current bytecode yet. A few files
    that are not Python 3 (packages ship such examples) fail to compile: they are never imported."""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    print(f"+ compiling the bytecode of {', '.join(paths)}", flush=True)
    for path in paths:
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", path], stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-r", "--requirement", action="append", default=[], help="a requirements file")
    parser.add_argument("--no-deps-requirement", action="append", default=[],
                        help="a requirements file installed without dependencies")
    parser.add_argument("-e", "--editable", default=".", help="the project, installed editable (without deps)")
    args = parser.parse_args()
    install(args.requirement, args.no_deps_requirement, args.editable)
    compile_bytecode()


if __name__ == "__main__":
    main()
