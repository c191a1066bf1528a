"""The facts of the machine that decide float arithmetic (CPU, instruction sets, torch and its
math libraries), recorded beside every benchmark and reproducibility report, and the environment
pins that make CPU generation bit-identical across x86-64 machines
(see :mod:`synthdet.datasets.embedded.reproducible`)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

# x86-64-v3 (AVX2 + FMA) is the baseline pinned: every x86-64 CPU of the last decade has it.
PINNED_ENV = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",          # oneDNN's JIT kernels (convolutions): decides every subset
    "ONEDNN_DEFAULT_FPMATH_MODE": "STRICT",  # no implicit bf16/tf32 down-conversion on newer CPUs
    "ATEN_CPU_CAPABILITY": "avx2",         # ATen's vectorised kernels (batch norm, reductions)
    "MKL_CBWR": "AVX2",                    # MKL's conditional numerical reproducibility branch (linear layers)
    "OMP_NUM_THREADS": "1",                # one intra-op thread: no thread-count-dependent reductions
    "MKL_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
    "TQDM_DISABLE": "1",                   # workers run side by side; the parent shows progress
}


@contextlib.contextmanager
def pinned_environment(overrides: dict[str, str] | None = None) -> Iterator[None]:
    """``os.environ`` with ``PINNED_ENV`` (``overrides`` replacing some of it: the op trace tries
    other library paths) while worker processes are spawned, then as it was."""
    wanted = {**PINNED_ENV, **(overrides or {})}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Linux: this process is killed when ``parent_pid`` (the process that started it) dies, so a
    worker never outlives a killed stage (it would keep training a generator nobody waits for, on
    every core, for as long as it takes). Elsewhere: nothing (the worker ends with its task)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before the signal was armed
        os._exit(1)


def init_worker(parent_pid: int | None = None, overrides: dict[str, str] | None = None) -> None:
    """First call in every generation worker: dies with ``parent_pid``, one thread, deterministic
    kernels, pins (with ``overrides``, as ``pinned_environment`` set them) in effect."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    missing = {k: v for k, v in {**PINNED_ENV, **(overrides or {})}.items() if os.environ.get(k) != v}
    if missing:
        raise RuntimeError(f"generation worker started without the pinned environment {missing}; start it "
                           "inside machine.pinned_environment()")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def machine_facts() -> dict:
    """The facts that decide the float arithmetic, for a mismatch report."""
    flags: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                wanted = ("avx", "fma", "sse4", "amx", "f16c", "asimd", "sve")
                flags = sorted(f for f in line.split(":", 1)[1].split() if f.startswith(wanted))
                break
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    config = torch.__config__.show()
    versions = [line.strip() for line in config.splitlines() if "Math Kernel" in line or "MKL-DNN" in line
                or "oneDNN" in line]
    return {"cpu": cpu, "machine": platform.machine(), "cpu_flags": flags, "cores": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else os.cpu_count(), "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "libraries": versions,
            "pinned_env": PINNED_ENV}
