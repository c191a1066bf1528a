"""An op-level trace of the embedded DCGAN's training arithmetic: where two CPUs part ways, in seconds.

A machine that builds other benchmark bytes than the record (``reproducible.verify`` says
``differs``) would need a 10-minute build per experiment to learn why. This runs three training
steps of the download stage's own DCGAN (its generator and discriminator classes and recipe:
Adam(0.5, 0.999), non-saturating BCE) on a seeded synthetic batch, in a worker started with the
download stage's pinned environment, and records a short SHA-256 of every layer's output, every
gradient and every weight after each step. Compared with a trace recorded on another machine type,
the first entry that differs names the operation (and so the library: on the Intel Xeon measured,
oneDNN computes the generator's transposed convolutions, MKL the discriminator's 3-channel first
convolution, ATen the noise). The records live in ``op_traces.json`` beside this file, one per
machine type, with the machine facts they were made with.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from synthdet import machine
from synthdet.datasets.embedded.generators.common import init_dcgan_weights
from synthdet.datasets.embedded.generators.dcgan import DCGANDiscriminator, DCGANGenerator

TRACES_FILE = "op_traces.json"
STEPS = 3
BATCH = 32
SIZE = 64


def _short_hash(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def _run_steps(steps: int) -> list[list]:
    """Entries ``[step, kind, name, layer type, shape, hash]`` in the order they are computed."""
    entries: list[list] = []
    step = 0

    def hook(name: str):
        def record(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            entries.append([step, "forward", name, type(module).__name__, list(output.shape), _short_hash(output)])
        return record

    torch.manual_seed(0)
    gen, disc = DCGANGenerator(size=SIZE), DCGANDiscriminator(ndf=32, size=SIZE)
    init_dcgan_weights(gen)
    init_dcgan_weights(disc)
    for prefix, net in (("G", gen), ("D", disc)):
        for name, module in net.named_modules():
            if name and not list(module.children()):
                module.register_forward_hook(hook(f"{prefix}.{name}"))
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    data = torch.Generator().manual_seed(1)
    for step in range(steps):
        real = torch.rand(BATCH, 3, SIZE, SIZE, generator=data) * 2 - 1
        z = torch.randn(BATCH, gen.nz, 1, 1, generator=data)
        fake = gen(z)
        loss_d = bce(disc(real), torch.ones(BATCH)) + bce(disc(fake.detach()), torch.zeros(BATCH))
        opt_d.zero_grad()
        loss_d.backward()
        entries += [[step, "grad", f"D.{n}", "param", list(p.shape), _short_hash(p.grad)]
                    for n, p in disc.named_parameters()]
        opt_d.step()
        loss_g = bce(disc(fake), torch.ones(BATCH))
        opt_g.zero_grad()
        loss_g.backward()
        entries += [[step, "grad", f"G.{n}", "param", list(p.shape), _short_hash(p.grad)]
                    for n, p in gen.named_parameters()]
        opt_g.step()
        entries += [[step, "weight", f"{prefix}.{n}", "param", list(p.shape), _short_hash(p)]
                    for prefix, net in (("G", gen), ("D", disc)) for n, p in net.named_parameters()]
    return entries


def _worker(steps: int, no_onednn: bool) -> dict:
    if no_onednn:  # ATen's own convolutions instead of oneDNN's: shows which op oneDNN computes
        torch.backends.mkldnn.enabled = False
    facts = machine.machine_facts()
    env = {k: os.environ.get(k) for k in machine.PINNED_ENV}
    return {"cpu": facts["cpu"], "cpu_flags": facts["cpu_flags"], "torch": facts["torch"],
            "cpu_capability": facts["torch_cpu_capability"], "libraries": facts["libraries"], "env": env,
            "no_onednn": no_onednn, "entries": _run_steps(steps)}


def trace(steps: int = STEPS, env: dict[str, str] | None = None, no_onednn: bool = False) -> dict:
    """This machine's trace, computed in a spawned worker under the download stage's pins (``env``
    overrides some of them: to try another library path, e.g. ``MKL_CBWR=COMPATIBLE``)."""
    with machine.pinned_environment(env), ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"), initializer=machine.init_worker,
            initargs=(os.getpid(), env)) as pool:
        return pool.submit(_worker, steps, no_onednn).result()


def first_difference(mine: list[list], theirs: list[list]) -> dict | None:
    """The first entry where two traces part ways (``None``: identical), with the ones before it."""
    for i, (a, b) in enumerate(zip(mine, theirs, strict=False)):
        if list(a) != list(b):
            return {"index": i, "here": list(a), "there": list(b), "identical_before": i}
    if len(mine) != len(theirs):
        n = min(len(mine), len(theirs))
        return {"index": n, "here": mine[n] if n < len(mine) else None,
                "there": theirs[n] if n < len(theirs) else None, "identical_before": n}
    return None


def describe(difference: dict | None, n_entries: int) -> str:
    if difference is None:
        return f"identical in all {n_entries} entries"
    step, kind, name, layer, shape, _ = difference["here"] or difference["there"]
    what = {"forward": f"the output of {name} ({layer} {shape})", "grad": f"the gradient of {name} {shape}",
            "weight": f"{name} {shape} after the optimiser step"}[kind]
    return f"first differs at training step {step}: {what}, after {difference['identical_before']} identical entries"


def _records_path() -> Path:
    return Path(str(resources.files(__package__).joinpath(TRACES_FILE)))


def load_records() -> list[dict]:
    """The recorded traces: ``[{"machine": ..., "cpu": ..., "entries": [...], ...}]``."""
    path = _records_path()
    return json.loads(path.read_text())["records"] if path.is_file() else []


def compare(mine: dict, records: list[dict]) -> list[dict]:
    """This trace against each record: ``[{"machine", "cpu", "difference", "summary"}]``."""
    out = []
    for rec in records:
        diff = first_difference(mine["entries"], rec["entries"])
        out.append({"machine": rec["machine"], "cpu": rec["cpu"], "difference": diff,
                    "summary": describe(diff, len(mine["entries"]))})
    return out


def record(mine: dict, machine_name: str) -> Path:
    """Store ``mine`` as the trace of machine type ``machine_name`` (replacing its earlier one), in
    the package's ``op_traces.json`` (the repository's copy in an editable install)."""
    if any(mine["env"].get(k) != v for k, v in machine.PINNED_ENV.items()) or mine["no_onednn"]:
        raise ValueError("only a trace under the download stage's own pins is a record")
    path = _records_path()
    records = [r for r in load_records() if r["machine"] != machine_name]
    records.append({"machine": machine_name, **mine})
    path.write_text(json.dumps({"records": sorted(records, key=lambda r: r["machine"])}, separators=(",", ":"))
                    + "\n")
    return path
