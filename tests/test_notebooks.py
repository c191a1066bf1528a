import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_source_notebooks_are_committed_clean_and_papermill_ready():
    assert len(NOTEBOOKS) >= 5
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", path
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{path} has outputs"
        assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in code) == 1, path
        assert "sys.path" not in "".join("".join(c["source"]) for c in code), path
        ids = [c.get("id") for c in nb["cells"]]  # nbformat 4.5 requires them (papermill warns, later fails)
        assert all(ids) and len(set(ids)) == len(ids), path
        nbformat.validate(nbformat.reads(path.read_text(), as_version=4))


def test_every_dvc_stage_runs_its_notebook_and_declares_params():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages)[:3] == ["code", "source", "download"]
    assert {"download", "split", "train", "degrade", "evaluate"} <= set(stages)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in stages.items():
        if name == "source":  # a check without a notebook: it runs on every `dvc repro`
            assert stage["cmd"] == "synthdet stage source" and stage["always_changed"] is True
            continue
        if name == "code":  # hashes only, nothing to show: a command, rerun when any source file changes
            assert stage["cmd"] == "synthdet stage code" and stage["deps"] == ["src/synthdet"]
            continue
        assert stage["cmd"].startswith("synthdet notebook notebooks/"), name  # papermill, via synthdet.notebook
        nb = stage["cmd"].split()[2]
        assert (ROOT / nb).exists() and nb in stage["deps"], name
        for key in stage["params"]:
            node = params
            for part in key.split("."):
                node = node[part]  # KeyError: a declared param that params.yaml lacks


def test_profiles_override_only_existing_params():
    from synthdet.cli import load_profile, set_flags

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for path in sorted((ROOT / "profiles").glob("*.yaml")):
        flags = set_flags(load_profile(path.stem, ROOT / "profiles"))
        assert flags and flags[0] == "-S"
        for flag in flags[1::2]:
            node = params
            for part in flag.split("=")[0].split("."):
                assert part in node, f"{path.name}: {flag} sets a key params.yaml does not have"
                node = node[part]


def _notebook(path, *cells):
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    params = nbformat.v4.new_code_cell("x = 1\nname = 'a'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, path)
    return path


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _started_pids(path: Path, timeout: float) -> list[int]:
    """The pids a notebook wrote to ``path`` once it started its kernel and child."""
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return list(map(int, path.read_text().split()))


def _assert_gone_within(seconds: float, *pids: int) -> None:
    deadline = time.monotonic() + seconds
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, pids)), [p for p in pids if _alive(p)]


def test_synthdet_notebook_runs_over_ipc_reports_a_failure_in_one_line_and_stops_on_ctrl_c(tmp_path):
    """What every stage's cmd runs: papermill with the parameters papermill's `-p` gives (numbers as
    numbers), the kernel on local sockets (no TCP warning); a failing cell is one line naming the
    error and the executed notebook that holds the traceback, exit 1; Ctrl-C (SIGINT to the process
    group, as a terminal sends it) ends the kernel and a process it started within seconds, exit 130."""
    cmd = [sys.executable, "-m", "synthdet.cli", "notebook"]
    ok = _notebook(tmp_path / "ok.ipynb", "print(repr(x), repr(name))")
    done = subprocess.run([*cmd, str(ok), str(tmp_path / "out/ok.ipynb"), "-p", "x", "5", "-p", "name", "ldm"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "TCP" not in done.stderr, done.stderr
    assert "5 'ldm'" in (tmp_path / "out/ok.ipynb").read_text()

    bad = _notebook(tmp_path / "bad.ipynb", "raise FileNotFoundError('artifacts/x.parquet: not found')")
    failed = subprocess.run([*cmd, str(bad), "out/bad.ipynb"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    last = [line for line in failed.stderr.splitlines() if line.startswith(("synthdet", "  (the whole"))]
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert last == [f"synthdet notebook: {bad} failed in cell 2: FileNotFoundError: artifacts/x.parquet: not found",
                    "  (the whole traceback is in out/bad.ipynb)"]
    assert "Traceback" in (tmp_path / "out/bad.ipynb").read_text()

    slow = _notebook(tmp_path / "slow.ipynb", "import os, subprocess, time\n"
                     "child = subprocess.Popen(['sleep', '300'])\n"
                     "open('pids', 'w').write(f'{os.getpid()} {child.pid}')\ntime.sleep(300)")
    run = subprocess.Popen([*cmd, str(slow), "out/slow.ipynb"], cwd=tmp_path, start_new_session=True,
                           stderr=subprocess.PIPE, text=True)
    kernel, child = _started_pids(tmp_path / "pids", 60)
    start = time.monotonic()
    os.killpg(run.pid, signal.SIGINT)
    assert run.wait(timeout=20) == 130 and time.monotonic() - start < 10
    assert "SIGINT: stopped the kernel and its processes" in run.stderr.read()
    _assert_gone_within(5, kernel, child)


def test_ctrl_c_stops_a_real_dvc_repro_within_seconds_and_the_next_repro_runs_the_stage(tmp_path):
    """SIGINT to the process group of `dvc repro` (what a terminal's Ctrl-C does) while a stage's
    notebook runs, through the stage command every stage has (`synthdet notebook`): DVC stops within
    seconds, the kernel and the process it started are gone, nothing is recorded as done, and the
    next `dvc repro` runs the stage to its end."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    _notebook(tmp_path / "stage.ipynb", "import os, pathlib, subprocess, time\n"
              "if pathlib.Path('block').exists():\n"
              "    child = subprocess.Popen(['sleep', '300'])\n"
              "    open('pids', 'w').write(f'{os.getpid()} {child.pid}')\n"
              "    time.sleep(300)\n"
              "pathlib.Path('out').mkdir(exist_ok=True)\npathlib.Path('out/result.txt').write_text('done')")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"slow": {
        "cmd": f"{sys.executable} -m synthdet.cli notebook stage.ipynb reports/stage.ipynb",
        "deps": ["stage.ipynb"], "outs": ["out", "reports/stage.ipynb"]}}}))
    (tmp_path / "block").touch()
    repro = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=tmp_path, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    kernel, child = _started_pids(tmp_path / "pids", 120)
    start = time.monotonic()
    os.killpg(repro.pid, signal.SIGINT)
    assert repro.wait(timeout=30) != 0 and time.monotonic() - start < 15, repro.stdout.read()
    _assert_gone_within(5, kernel, child)
    assert not (tmp_path / "dvc.lock").exists() and not (tmp_path / "out/result.txt").exists()
    (tmp_path / "block").unlink()
    again = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=tmp_path, capture_output=True, text=True,
                           env=env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (tmp_path / "out/result.txt").read_text() == "done" and "slow" in (tmp_path / "dvc.lock").read_text()
