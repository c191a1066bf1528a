"""Run a stage's notebook: papermill in this process, with three things its command line lacks.

- **The kernel talks over local IPC sockets**, in a private temporary folder, not TCP: no open
  port, and no "running over TCP without encryption" warning in every stage's log.
- **A failing cell is one line**: the error's type and message, and where the executed notebook
  (which keeps the whole traceback) is, instead of papermill's and nbclient's traceback.
- **Ctrl-C (SIGINT) or SIGTERM stops it within seconds**: the kernel runs in a session of its own,
  where a terminal's Ctrl-C never reaches it, so this process kills the kernel's process group
  (the kernel and every process it started: loader, generator and perturbation workers) and exits
  with 130 (143 for SIGTERM). Every output is written atomically, so the next ``dvc repro`` starts
  the stage again from its last finished, persisted step.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import weakref

from jupyter_client.manager import AsyncKernelManager

_MANAGERS: weakref.WeakSet[LocalKernelManager] = weakref.WeakSet()


class LocalKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel listens on IPC sockets in its own temporary folder."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        folder = tempfile.mkdtemp(prefix="synthdet-kernel-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        self.transport, self.ip = "ipc", os.path.join(folder, "k")
        _MANAGERS.add(self)

    def kernel_pid(self) -> int | None:
        process = getattr(self.provisioner, "process", None)
        return getattr(process, "pid", None)


def stop_kernels(sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to the process group of every kernel this process started (a kernel leads its
    own session, so its group is its pid); returns those pids."""
    stopped = []
    for manager in list(_MANAGERS):
        pid = manager.kernel_pid()
        if pid is None:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
            stopped.append(pid)
    return stopped


def _interrupted(signum: int, _frame: object) -> None:
    stopped = stop_kernels()
    name = signal.Signals(signum).name
    print(f"\nsynthdet notebook: {name}: stopped{' the kernel and its processes' if stopped else ''}; "
          "finished outputs are kept and `dvc repro` goes on from them", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def resolve_value(value: str) -> object:
    """A ``-p`` value as papermill's command line reads it: True/False/None, a number, or text."""
    if value in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[value]
    for cast in (int, float):
        with contextlib.suppress(ValueError):
            return cast(value)
    return value


def run_notebook(notebook: str, output: str, parameters: dict[str, object]) -> int:
    """Execute ``notebook`` into ``output`` with ``parameters``; 0, or 1 after a one-line report."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupted)
    try:
        papermill.execute_notebook(notebook, output, parameters=parameters, kernel_name="python3", language="python",
                                   kernel_manager_class=LocalKernelManager)
    except PapermillExecutionError as exc:
        message = str(exc.evalue).strip().splitlines()[0] if str(exc.evalue).strip() else ""
        print(f"synthdet notebook: {notebook} failed in cell {exc.exec_count}: {exc.ename}: {message}\n"
              f"  (the whole traceback is in {output})", file=sys.stderr)
        return 1
    return 0
