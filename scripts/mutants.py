"""A mutation spot-check: hand-picked mutants of the modules that hold the README's claims (metrics,
splits, the split-zip reader, the debiased protocol, the audit's probes, calibration; and the DDP
and ImagiNet behaviours issue 30 found untested), each run against that module's tests. A mutant
the tests let pass is a behaviour nothing checks.

Each mutant is one textual change to one line of a copy of ``src/`` (the checkout is never
touched), imported first through ``PYTHONPATH``; its tests run with ``-x`` and count as having
killed it when any fails. Mutants are chosen to change behaviour (no equivalent mutants such as
``<`` against ``<=`` on a continuous hash), so every survivor is a gap.

    python scripts/mutants.py                 # every module (about 15 minutes on 2 cores)
    python scripts/mutants.py --module splits --json out.json

The kill rates are recorded in tests/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    claim: str  # the behaviour the mutant breaks
    find: str  # must occur exactly once in the module
    replace: str


@dataclass(frozen=True)
class Module:
    path: str
    tests: tuple[str, ...]  # pytest arguments: files, then -k expressions where a file is long
    mutants: tuple[Mutant, ...]


MODULES = {
    "metrics": Module("src/synthdet/metrics.py", (
        "tests/test_degrade_metrics.py", "tests/test_predict.py", "tests/test_audit.py", "-k",
        "metrics or bootstrap or calibration or temperature or ece"), (
        Mutant("a score at the threshold is fake", "pred = (scores >= threshold)", "pred = (scores > threshold)"),
        Mutant("real accuracy is the recall of the reals", "pos_label=0, zero_division", "pos_label=1, zero_division"),
        Mutant("AUC ranks the scores, not the decisions", "roc_auc_score(labels, scores)) if both",
               "roc_auc_score(labels, pred)) if both"),
        Mutant("ECE bins the top label's confidence", "confidence = np.maximum(probs, 1 - probs)",
               "confidence = probs"),
        Mutant("ECE weights each bin by its share", "ece += inside.mean() * abs(", "ece += abs("),
        Mutant("the temperature divides the logit", "s = z / np.exp(log_t)", "s = z * np.exp(log_t)"),
        Mutant("scaling is kept only where it lowers the ECE", "keep = cv_scaled < before",
               "keep = cv_scaled > before"),
        Mutant("each fold is scaled by a temperature fitted without it", "/ fit_temperature(z[fit], y[fit])",
               "/ fit_temperature(z, y)"),
        Mutant("the bootstrap interval is two-sided", "alpha = (1 - level) / 2", "alpha = 1 - level"),
        Mutant("the bootstrap resamples with replacement", "replace=True).mean(axis=1)",
               "replace=False).mean(axis=1)"),
        Mutant("the sigmoid", "np.tanh(0.5 * np.asarray", "np.tanh(np.asarray"),
    )),
    "splits": Module("src/synthdet/data/splits.py", ("tests/test_manifest_and_splits.py", "tests/test_tables.py",
                                                     "-k", "split or leak or class or budget"), (
        Mutant("the seed decides the validation groups", 'f"{seed}:{name}:{group}"', 'f"{name}:{group}"'),
        Mutant("a group also in another split stays in train", "to_val = is_train & ~elsewhere &",
               "to_val = is_train &"),
        Mutant("ungrouped rows are their own group", 'groups = out["group"].fillna(out["path"])',
               'groups = out["group"].fillna("")'),
        Mutant("a hash in two split roles is a leak", "bad = set(splits[splits > 1].index)",
               "bad = set(splits[splits > 2].index)"),
        Mutant("a group in two split roles is a leak", 'for key in ("sha256", "group"):', 'for key in ("sha256",):'),
        Mutant("train and calibration may share images", '"calibration": "fit"', '"calibration": "calibration"'),
        Mutant("on_leak=drop drops the leaking rows", 'return df[~df["path"].isin(set(leaks["path"]))]',
               'return df[df["path"].isin(set(leaks["path"]))]'),
        Mutant("a class budget needs both labels", "(counts[0] >= per_class) & (counts[1] >= per_class)",
               "(counts[0] >= per_class)"),
        Mutant("a class budget's numbers are positive", "if n_classes < 1 or per_class < 1:", "if n_classes < 1:"),
        Mutant("a class budget draws distinct images",
               "len(group), per_class, replace=False))])", "len(group), per_class, replace=True))])"),
    )),
    "splitzip": Module("src/synthdet/genimage/splitzip.py", (
        "tests/test_genimage.py", "tests/test_hostile_inputs.py", "-k",
        "zip or archive or extract or entry or entries or inflation or parts or traversal or stored"), (
        Mutant("an archive given too few or too many parts is refused", "if disk_no + 1 != n_parts:",
               "if disk_no + 1 > n_parts:"),
        Mutant("encrypted entries are refused", "if entry.flags & 0x1:", "if entry.flags & 0x2:"),
        Mutant("a stored entry must not lie about its size",
               "if entry.method == 0 and entry.compressed_size != entry.file_size:", "if False:"),
        Mutant("inflation stops at the declared size", "if written > entry.file_size:",
               "if written > 2 * entry.file_size + 1_000_000:"),
        Mutant("every member's CRC is checked", "if crc != entry.crc:", "if False:"),
        Mutant("a member shorter than declared is refused", "if written != entry.file_size:",
               "if written > entry.file_size:"),
        Mutant("zip64 sizes are read from the extra field", "if usize == 0xFFFFFFFF:", "if usize == 0xFFFFFFFE:"),
        Mutant("two entries for one path are refused", "if key in targets:", "if False:"),
        Mutant("a file where a folder is needed is refused", "if clash is not None:", "if False:"),
        Mutant("a kept file must match its log record or its CRC",
               "(not verify_existing and done.get(entry.name) == record)", "(not verify_existing)"),
    )),
    "debias": Module("src/synthdet/transforms/debias.py", ("tests/test_audit.py", "-k", "debias"), (
        Mutant("the JPEG rule applies to reals only", 'keep &= (rows["label"] == 1) | ((rows["format"]',
               'keep &= (rows["label"] == 0) | ((rows["format"]'),
        Mutant("reals of exactly the quality are kept", "(quality == cfg.real_jpeg_quality)",
               "(quality >= cfg.real_jpeg_quality)"),
        Mutant("both sides must be in the window", "width.between(low, high) & height.between(low, high)",
               "width.between(low, high)"),
        Mutant("each class is balanced", 'n = int(group["label"].value_counts().reindex([0, 1], fill_value=0).min())',
               'n = int(group["label"].value_counts().reindex([0, 1], fill_value=0).max())'),
        Mutant("fakes are JPEG-compressed, reals not", "if label == 1 and cfg.fake_jpeg_quality is not None:",
               "if label == 0 and cfg.fake_jpeg_quality is not None:"),
        Mutant("the crop is centred", "left, top = (img.width - side) // 2, (img.height - side) // 2",
               "left, top = 0, 0"),
        Mutant("a window is [low, high] with low <= high", "0 < int(window[0]) <= int(window[1])",
               "0 < int(window[0])"),
    )),
    "audit probes": Module("src/synthdet/analysis/audit.py", ("tests/test_audit.py", "-k", "not debias"), (
        Mutant("the probe's folds keep a source's crops together",
               "splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)",
               "splitter = __import__('sklearn.model_selection').model_selection.StratifiedKFold("
               "n_splits=folds, shuffle=True, random_state=seed)"),
        Mutant("no score below the minimum images per label", "np.bincount(y).min() < min_images",
               "np.bincount(y).max() < min_images"),
        Mutant("either direction of a statistic counts", "auc = max(auc, 1 - auc)", "auc = auc"),
        Mutant("sharpness is the Laplacian's variance", "sharpness.laplacian_variance(g),", "g.var(),"),
        Mutant("the JPEG quality is a metadata feature",
               '"jpeg_quality": pd.to_numeric(manifest["jpeg_quality"], errors="coerce").fillna(-1)',
               '"jpeg_quality": pd.to_numeric(manifest["jpeg_quality"], errors="coerce").fillna(-1) * 0'),
        Mutant("the file format is a metadata feature", 'manifest[["format", "mode", "subsampling"]]',
               'manifest[["mode", "subsampling"]]'),
        Mutant("the pixel probe reads at most max_images per subset and label",
               '.groupby(["subset", "label"], sort=False).head(max_images)',
               '.groupby(["subset"], sort=False).head(max_images)'),
        Mutant("the probe's labels are the subset's", '"low-level": probe_auc(stats.loc[s.index], s["label"],',
               '"low-level": probe_auc(stats.loc[s.index], s["label"].sample(frac=1.0, random_state=0).to_numpy(),'),
    )),
    "calibration": Module("src/synthdet/training/scoring.py", (
        "tests/test_predict.py", "tests/test_scoring.py", "tests/test_detectors_train.py", "-k",
        "calibrat or temperature or score or predict"), (
        Mutant("no temperature on fewer than the minimum images", "if n >= MIN_CALIBRATION_IMAGES and",
               "if n >= 0 and"),
        Mutant("unscored images are left out of the fit", "keep = np.isfinite(logits)",
               "keep = np.ones(len(logits), dtype=bool)"),
        Mutant("the fake probability divides the logit by the temperature",
               'sigmoid(table["logit"].to_numpy() / temperature)', 'sigmoid(table["logit"].to_numpy() * temperature)'),
        Mutant("the fitted temperature is the one used", "chosen = select_temperature(logits[keep], labels[keep],",
               "chosen = select_temperature(logits[keep], 1 - labels[keep],"),
    )),
    # the behaviours the issue-30 tests were written for, broken the way the issue feared
    "ddp": Module("src/synthdet/training/loop.py", ("tests/test_ddp.py", "-k", "global_batches"), (
        Mutant("each rank trains on its own shard",
               "DistributedSampler(train_ds, seed=cfg.seed, shuffle=True) if world > 1",
               "DistributedSampler(train_ds, num_replicas=1, rank=0, seed=cfg.seed, shuffle=True) if world > 1"),
        Mutant("the ranks' gradients are averaged before each step",
               "isinstance(model, nn.parallel.DistributedDataParallel) and not last",
               "isinstance(model, nn.parallel.DistributedDataParallel)"),
    )),
    "recorded hashes": Module("src/synthdet/datasets/embedded/generators/dcgan.py", (
        "tests/test_reproducible.py", "-k", "rebuilt"), (
        Mutant("the benchmark's bytes are the recorded ones (a generator's setting changed)",
               "opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))",
               "opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.99))"),
    )),
    "imaginet runs": Module("src/synthdet/stages/imaginet_runs.py", (
        "tests/test_imaginet_tracks.py", "-k", "genimage_layout"), (
        Mutant("each score row is its own image's", 'scored.drop(columns="path").rename(',
               'scored.drop(columns="path").iloc[::-1].reset_index(drop=True).rename('),
        Mutant("the leave-one-out score is the fake probability", 'assign(score=scored["fake_probability"]',
               'assign(score=1 - scored["fake_probability"]'),
    )),
    "imaginet tables": Module("src/synthdet/stages/imaginet_tables.py", (
        "tests/test_imaginet_tracks.py", "-k", "genimage_layout"), (
        Mutant("Figure 3's held-out accuracy is the mean of real and synthetic", '"held_out_acc": r.acc',
               '"held_out_acc": r.real_acc'),
        Mutant("Table 3 reads the clean test images", 'clean = scores[scores["condition"] == "clean"]',
               'clean = scores'),
    )),
}


def _pytest(src: Path, module: Module, timeout: float) -> tuple[bool, float, str]:
    """Run the module's tests against the copy ``src``: (all passed, seconds, last output lines)."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-n", "0", *module.tests]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - t0, "timed out (counted as killed)"
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-3:])
    if done.returncode == 5 or (done.returncode == 0 and " passed" not in tail):  # all skipped
        raise SystemExit(f"{module.path}: its tests ran nothing ({' '.join(module.tests)}):\n{tail}")
    return done.returncode == 0, time.perf_counter() - t0, tail


def run(names: list[str], timeout: float) -> dict:
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="synthdet-mutants-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        probe = subprocess.run([sys.executable, "-c", "import synthdet; print(synthdet.__file__)"],
                               env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True)
        if not probe.stdout.startswith(str(src)):
            raise SystemExit(f"the copy is not what Python imports ({probe.stdout.strip()}): run from the venv")
        for name in names:
            module = MODULES[name]
            target = src / module.path.removeprefix("src/")
            original = target.read_text()
            passed, seconds, tail = _pytest(src, module, timeout)
            if not passed:
                raise SystemExit(f"{name}: its tests fail without any mutant:\n{tail}")
            rows = []
            for mutant in module.mutants:
                if original.count(mutant.find) != 1:
                    raise SystemExit(f"{name}: {mutant.find!r} occurs {original.count(mutant.find)} times in "
                                     f"{module.path}, not once: update the mutant")
                target.write_text(original.replace(mutant.find, mutant.replace))
                try:
                    survived, seconds, tail = _pytest(src, module, timeout)
                finally:
                    target.write_text(original)
                rows.append({"claim": mutant.claim, "killed": not survived, "seconds": round(seconds, 1)})
                print(f"{name:14s} {'killed  ' if not survived else 'SURVIVED'} {mutant.claim}", flush=True)
            killed = sum(r["killed"] for r in rows)
            results[name] = {"module": module.path, "mutants": len(rows), "killed": killed,
                             "kill_rate": round(killed / len(rows), 3), "results": rows}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", action="append", choices=sorted(MODULES), help="default: every module")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per test run (a hang counts as killed)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    results = run(args.module or list(MODULES), args.timeout)
    print("\n| module | mutants | killed | kill rate |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} (`{r['module']}`) | {r['mutants']} | {r['killed']} | {r['kill_rate']:.0%} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
