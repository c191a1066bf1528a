"""Where and how a network runs: device, DataLoader workers, DDP, autocast, memory layout and
``torch.compile``. One process (the DVC stage) or ``torchrun --nproc_per_node=N -m synthdet.cli
stage train``: ``WORLD_SIZE`` in the environment switches on DistributedDataParallel."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def resolve_device(spec: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: the GPU of this rank when CUDA is there, else the CPU; anything else as torch reads
    it. A name torch does not know, or CUDA where there is none, is a ValueError saying so (before
    any work, not a traceback from deep inside the first tensor move)."""
    if str(spec) == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {spec!r}: not a device name (auto, cpu, cuda or cuda:<n>)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r}: torch sees no CUDA GPU on this machine (use auto or cpu)")
    return device


def resolve_workers(spec: int | str, device: torch.device) -> int:
    """``auto``: no worker processes on the CPU (decoding in workers takes cores from the model's
    own threads: slower on small machines, see benchmarks/table_run.py); on CUDA up to 8 per
    process from the cores this process's share (one fewer, for the training loop itself)."""
    if spec == "auto":
        if device.type != "cuda":
            return 0
        share = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return max(1, min(8, share - 1))
    if isinstance(spec, bool) or not isinstance(spec, int | str) or not str(spec).isdigit():
        raise ValueError(f"num_workers: expected 'auto' or a whole number >= 0, got {spec!r}")
    return int(spec)


def workers_param(spec: int | str) -> int | str:
    """A params value for ``num_workers``, checked (``auto`` stays until the device is known)."""
    return spec if spec == "auto" else resolve_workers(spec, torch.device("cpu"))


def dist_info() -> tuple[int, int, int]:
    """(world size, rank, local rank), starting the process group when ``WORLD_SIZE`` > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def memory_layout(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def device_autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bf16 on CUDA (fp16 on GPUs without bf16); a no-op on the CPU."""
    on = enabled and device.type == "cuda"
    dtype = torch.bfloat16 if on and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=on)


def compiled(model: nn.Module, spec: bool | str) -> nn.Module:
    """``model``, or ``torch.compile(model)`` when ``train.compile`` asks for it (``True``: the
    default inductor backend; a string: that backend). Compiling costs a minute or more per process
    and gained nothing on this project's 2-core CPU (``benchmarks/compile_step.py``): for long GPU
    runs, not the embedded benchmark."""
    if spec is False or spec is None:
        return model
    return torch.compile(model) if spec is True else torch.compile(model, backend=str(spec))


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def gather_rng_states(world: int) -> list[torch.Tensor]:
    """Every rank's torch RNG state, in rank order: under DDP each rank draws its own augmentations,
    so a resumed run restores each rank's state, not rank 0's for all."""
    state = torch.get_rng_state()
    if world == 1:
        return [state]
    states: list = [None] * world
    dist.all_gather_object(states, state)
    return states
