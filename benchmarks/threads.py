"""Training throughput on this machine's cores: one process with every core as intra-op threads
(how `make repro` runs each stage today) against one single-thread process per core side by side
(how two independent stages could run at once). ResNet-50 training steps at the pipeline's 64 px,
batch 32, channels_last, random tensors.

Usage: python benchmarks/threads.py > benchmarks/results/threads_<machine>.json
Run it alone: another busy process on these cores makes every figure meaningless.

``--index``: only the first figure (one process, every core), about 20 s: the machine's speed at
that moment, recorded before and after a timed `make repro`. The same machine type has measured
29 to 47 images/s in different hours, so a run's minutes are comparable only with its index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from synthdet.machine import machine_facts

STEP = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from synthdet.detectors import create_detector
torch.manual_seed(0)
m = create_detector("resnet50", img_size=64).to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05)
x = torch.randn(32, 3, 64, 64).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 2, (32,)).float()
loss_fn = torch.nn.BCEWithLogitsLoss()
def step():
    opt.zero_grad(set_to_none=True)
    loss_fn(m(x).reshape(-1), y).backward()
    opt.step()
for _ in range(3):
    step()
t = time.perf_counter()
for _ in range(int(sys.argv[2])):
    step()
print(32 * int(sys.argv[2]) / (time.perf_counter() - t))
"""


def run(threads: int, processes: int, steps: int) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-c", STEP, str(threads), str(steps)], stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(processes)]
    return [round(float(p.communicate()[0].strip().splitlines()[-1]), 1) for p in procs]


def main() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    t0 = time.time()
    if sys.argv[1:] == ["--index"]:
        print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0)), "cores": cores,
                          "speed_index_images_per_s": run(cores, 1, 12)[0]}))
        return
    together = run(cores, 1, 12)
    apart = run(1, cores, 8)
    alone_one_thread = run(1, 1, 8)
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)), "cores": cores,
                      "machine": machine_facts(), "images_per_s": {
                          f"1 process x {cores} threads": together[0],
                          f"{cores} processes x 1 thread, side by side (sum)": round(sum(apart), 1),
                          f"{cores} processes x 1 thread, each": apart,
                          "1 process x 1 thread, alone": alone_one_thread[0]},
                      "ratio_side_by_side_over_threads": round(sum(apart) / together[0], 2)}, indent=2))


if __name__ == "__main__":
    main()
