"""The download stage checks the generated benchmark against the hashes recorded with the repo."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from synthdet import cli, machine
from synthdet.datasets.embedded import reproducible
from synthdet.fsutil import DataSourceError
from synthdet.stages.download import check_reproducible

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _bench(root: Path) -> Path:
    for subset, files in {"dcgan": {"train/ai/a.png": b"A", "val/ai/b.png": b"B"},
                          "vae": {"train/ai/a.png": b"C"}}.items():
        for rel, data in files.items():
            (root / subset / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / subset / rel).write_bytes(data)
    return root


def test_subset_hash_sees_content_and_names(tmp_path):
    root = _bench(tmp_path)
    before = reproducible.subset_hash(root / "dcgan")
    (root / "dcgan" / "val/ai/b.png").write_bytes(b"b")
    changed = reproducible.subset_hash(root / "dcgan")
    (root / "dcgan" / "val/ai/b.png").rename(root / "dcgan" / "val/ai/c.png")
    renamed = reproducible.subset_hash(root / "dcgan")
    assert len({before, changed, renamed}) == 3


def test_a_differing_subset_is_named_with_the_machine_facts(tmp_path):
    root = _bench(tmp_path)
    key = reproducible.config_key(0, {"a": 1}, {"b": 2})
    observed = {s: reproducible.subset_hash(root / s) for s in ("dcgan", "vae")}
    same = check_reproducible(root, ["dcgan", "vae"], 0, {"a": 1}, {"b": 2}, expected={key: observed})
    assert same["status"] == "identical" and same["differing"] == []

    recorded = {key: {**observed, "vae": "0" * 64}}
    with pytest.warns(UserWarning, match=r"differs .* in subsets \['vae'\]") as caught:
        report = check_reproducible(root, ["dcgan", "vae"], 0, {"a": 1}, {"b": 2}, expected=recorded)
    message = str(caught[0].message)
    assert report["status"] == "differs" and report["differing"] == ["vae"]
    assert "ONEDNN_MAX_CPU_ISA" in message and "torch" in message and "table cell" in message
    assert report["machine"]["torch_cpu_capability"] and report["machine"]["cores"] >= 1
    with pytest.raises(DataSourceError, match=r"subsets \['vae'\]"):
        check_reproducible(root, ["dcgan", "vae"], 0, {"a": 1}, {"b": 2}, "error", expected=recorded)
    # other params (another seed) have no record: said, not flagged
    assert check_reproducible(root, ["dcgan", "vae"], 1, {"a": 1}, {"b": 2},
                              expected=recorded)["status"] == "unrecorded"


@pytest.mark.parametrize("profile", [None, "smoke"])
def test_the_default_and_smoke_configurations_have_recorded_hashes(profile):
    """`make repro` and `make smoke` must be checkable: their benchmarks have hashes in the repo (a
    change to the defaults or the generators needs `synthdet hashes --record` after a download run)."""
    from synthdet.cli import deep_update, load_profile

    params = deep_update(PARAMS, load_profile(profile, ROOT / "profiles")) if profile else PARAMS
    e = params["embedded"]
    key = reproducible.config_key(params["seed"], e["prepare"], e["benchmark"])
    recorded = reproducible.load_expected()
    assert key in recorded
    names = list(e["benchmark"]["subsets"]) + list(e["benchmark"]["content_tests"]["subsets"])
    assert sorted(recorded[key]) == sorted(names)


@pytest.mark.slow(minutes=2)
@pytest.mark.skipif(not (ROOT / "data/embedded").is_dir(), reason="needs the real embedded sources in data/ "
                    "(make data; make test runs it first)")
def test_the_smoke_benchmark_rebuilt_from_the_real_sources_has_its_recorded_hashes(tmp_path, monkeypatch):
    """The recorded-hash check on a real rebuild, not on whatever is there: the smoke profile's
    benchmark, built from the real sources through the source and download stages (every generator
    trained, both pretrained GANs sampled), equals the one recorded with the repository, subset by
    subset, or the record of its machine type. The README's record was made on AMD EPYC machines;
    an Intel Xeon builds other bytes (issue 39) and has its own record. A CPU of a vendor with no
    record for this configuration is said and skipped rather than failed."""
    params = cli.deep_update(PARAMS, cli.load_profile("smoke", ROOT / "profiles"))
    key = reproducible.config_key(params["seed"], params["embedded"]["prepare"], params["embedded"]["benchmark"])
    cpu = machine.machine_facts()["cpu"]
    vendor = next((v for v in ("AMD", "Intel") if v in cpu), cpu)
    records = {reproducible.recorded_on(): reproducible.load_expected()[key],
               **{m["machine"]: m["configs"][key] for m in reproducible.load_other_machines() if key in m["configs"]}}
    if not any(vendor in machine_type for machine_type in records):
        pytest.skip(f"no record of this configuration for a {vendor} CPU ({cpu}); recorded on: {list(records)}")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data").symlink_to(ROOT / "data", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for stage in ("source", "download"):
        assert cli.main(["stage", stage, "--params", "params.yaml"]) == 0, stage
    check = json.loads(Path("metrics/download.json").read_text())["reproducibility"]
    assert check["config_key"] == key and check["status"] == "identical", check["differing"]
    assert vendor in check["record"] and check["observed"] == records[check["record"]]


def test_a_build_equal_to_another_machine_types_record_is_identical_to_that_record(tmp_path, capsys, monkeypatch):
    """A second machine type that was measured (an Intel Xeon builds other bytes than the AMD machines
    of the README's record: issue 39) verifies as identical to the record made on it, and says that
    the README's record differs; a build equal to neither record still differs, and its warning names
    the likely cause for this CPU's vendor. ``synthdet hashes --record --machine`` writes such a record
    beside the README's, keeping it."""
    root = _bench(tmp_path / "bench")
    key = reproducible.config_key(0, {"a": 1}, {"b": 2})
    observed = {s: reproducible.subset_hash(root / s) for s in ("dcgan", "vae")}
    readme_record = {key: {**observed, "vae": "0" * 64}}
    intel = [{"machine": "a 2-core Intel Xeon", "configs": {key: observed}}]
    report = reproducible.verify(observed, key, readme_record, intel, "a 2-core AMD EPYC")
    assert report["status"] == "identical" and report["record"] == "a 2-core Intel Xeon"
    assert report["differing"] == ["vae"]  # from the README's record
    same = reproducible.verify(observed, key, {key: observed}, intel, "a 2-core AMD EPYC")
    assert same["status"] == "identical" and same["record"] == "a 2-core AMD EPYC" and same["differing"] == []
    neither = reproducible.verify({**observed, "dcgan": "1" * 64}, key, readme_record, intel)
    assert neither["status"] == "differs" and neither["differing"] == ["dcgan", "vae"]
    # the stage reads both records from expected_hashes.json and says which one it matched
    expected = tmp_path / "expected_hashes.json"
    expected.write_text(json.dumps({"recorded_on": "a 2-core AMD EPYC", "configs": readme_record,
                                    "other_machines": intel}))
    monkeypatch.setattr(reproducible.resources, "files", lambda package: tmp_path)
    assert check_reproducible(root, ["dcgan", "vae"], 0, {"a": 1}, {"b": 2})["status"] == "identical"
    out = capsys.readouterr().out
    assert "byte-identical to the record made on a 2-core Intel Xeon" in out and "differs in ['vae']" in out
    # the likely cause, by vendor
    intel_facts = {"cpu": "Intel(R) Xeon(R) Processor", "machine": "x86_64", "cpu_flags": ["avx2"]}
    assert "Intel CPU" in reproducible.likely_cause(intel_facts) and "issue 39" in reproducible.likely_cause(
        intel_facts)
    assert "architecture" in reproducible.likely_cause({"cpu": "", "machine": "aarch64", "cpu_flags": []})
    intel[0]["configs"] = {}
    expected.write_text(json.dumps({"recorded_on": "a 2-core AMD EPYC", "configs": readme_record,
                                    "other_machines": intel}))
    facts = {**machine.machine_facts(), **intel_facts}
    monkeypatch.setattr("synthdet.stages.download.machine_facts", lambda: facts)
    with pytest.warns(UserWarning, match=r"recorded with the repository \(on a 2-core AMD EPYC\)") as caught:
        check_reproducible(root, ["dcgan", "vae"], 0, {"a": 1}, {"b": 2})
    assert "Likely cause: an Intel CPU" in str(caught[0].message)
    # recording another machine type's hashes keeps the README's record
    metrics = tmp_path / "download.json"
    metrics.write_text(json.dumps({"reproducibility": {"config_key": key, "observed": observed}}))
    assert cli.main(["hashes", "--metrics", str(metrics), "--record", "--machine", "a 2-core Intel Xeon"]) == 0
    data = json.loads(expected.read_text())
    assert data["configs"] == readme_record and data["other_machines"][0]["configs"] == {key: observed}
    assert cli.main(["hashes", "--metrics", str(metrics)]) == 0
    assert "identical to the record made on a 2-core Intel Xeon" in capsys.readouterr().out
    assert cli.main(["hashes", "--metrics", str(metrics), "--machine", "x"]) == 2  # --machine without --record


def test_hashes_cli_reports_and_refuses_other_metrics(tmp_path, capsys):
    metrics = tmp_path / "download.json"
    e = PARAMS["embedded"]
    key = reproducible.config_key(PARAMS["seed"], e["prepare"], e["benchmark"])
    observed = {**reproducible.load_expected()[key], "vae": "1"}
    metrics.write_text(json.dumps({"reproducibility": {"status": "identical", "config_key": key, "differing": [],
                                                       "observed": observed}}))
    assert cli.main(["hashes", "--metrics", str(metrics)]) == 0  # re-checked against the record
    assert f"configuration {key}: differs against the recorded hashes (differing: vae)" in capsys.readouterr().out
    metrics.write_text(json.dumps({"images": 3}))
    assert cli.main(["hashes", "--metrics", str(metrics)]) == 2
    assert "no embedded-benchmark hashes" in capsys.readouterr().err


def test_generation_workers_refuse_to_run_unpinned(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    with pytest.raises(RuntimeError, match="without the pinned environment"):
        machine.init_worker()


def test_bad_reproducibility_params_fail_before_the_build():
    from synthdet.stages.download import Config

    for key, value in (("reproducibility", "strict"), ("generator_processes", -1), ("generator_processes", "2")):
        params = {**PARAMS, "embedded": {**PARAMS["embedded"], key: value}}
        with pytest.raises(ValueError, match=f"embedded.{key}"):
            Config.from_params(params)


WORKER_PARENT = '''
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from synthdet import machine

if __name__ == "__main__":
    arm = sys.argv[1] == "arm"
    with machine.pinned_environment(), ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"), initializer=machine.init_worker,
            initargs=(os.getpid(),) if arm else ()) as pool:
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 300)
        time.sleep(300)
'''


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its parent's reaper is missing


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc and prctl")
def test_generation_workers_die_with_the_stage_that_started_them(tmp_path):
    """The download stage's generator workers (spawned processes) are killed when their stage's
    process dies (SIGKILL, as when a kernel is killed): none keeps the cores busy. Without the
    parent-death signal the same worker outlives its parent."""
    script = tmp_path / "parent.py"
    script.write_text(WORKER_PARENT)
    survivors = {}
    for mode in ("arm", "unarmed"):
        parent = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True)
        worker = int(parent.stdout.readline())
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors[mode] = _alive(worker)
        if survivors[mode]:
            os.kill(worker, signal.SIGKILL)
    assert survivors == {"arm": False, "unarmed": True}


def test_the_op_trace_names_the_op_a_pin_moves_and_matches_this_machine_types_record(tmp_path, capsys):
    """The DCGAN's first training steps, op by op, under the download stage's pins: another oneDNN
    instruction set moves the generator's first (transposed) convolution, and the trace names it;
    on a machine type with a recorded trace, this machine's equals it entry for entry."""
    from synthdet.datasets.embedded import optrace

    mine = optrace.trace()
    assert len(mine["entries"]) > 200 and mine["env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    (tmp_path / "plain.json").write_text(json.dumps(mine))
    assert cli.main(["optrace", "--env", "ONEDNN_MAX_CPU_ISA=SSE41", "--compare", str(tmp_path / "plain.json"),
                     "--out", str(tmp_path / "sse41.json")]) == 0
    moved = json.loads((tmp_path / "sse41.json").read_text())
    assert moved["env"]["ONEDNN_MAX_CPU_ISA"] == "SSE41"
    diff = optrace.first_difference(moved["entries"], mine["entries"])
    assert diff is not None and diff["here"][:4] == [0, "forward", "G.main.0", "ConvTranspose2d"]
    line = next(t for t in capsys.readouterr().out.splitlines() if t.startswith(f"against {tmp_path / 'plain.json'}"))
    assert "first differs at training step 0: the output of G.main.0 (ConvTranspose2d" in line
    with pytest.raises(ValueError, match="own pins"):
        optrace.record(moved, "a machine under other pins")
    assert optrace.first_difference(mine["entries"], mine["entries"][:-1])["index"] == len(mine["entries"]) - 1
    # this machine type's record, when there is one (the file names the CPU it came from)
    records = optrace.load_records()
    compared = optrace.compare(mine, records)
    rows = [r for r, rec in zip(compared, records, strict=True)
            if rec["cpu"] == mine["cpu"] and rec["cpu_flags"] == mine["cpu_flags"]]
    if not rows:
        others = "; ".join(f"against {r['machine']}: {r['summary']}" for r in compared)
        pytest.skip(f"no op trace recorded for this CPU ({mine['cpu']}); {others or 'none recorded'}")
    assert all(r["difference"] is None for r in rows), rows
