"""Training steps of one detector with and without ``torch.compile`` (``train.compile``): how long
the first compiled step takes (the compilation) and the steps per second after it.

Usage: python benchmarks/compile_step.py [--model resnet50] [--size 64] [--batch 32] [--steps 10]
Each variant runs in its own process, one after the other (never two at once), on random tensors:
the cost of the training loop's forward and backward, not of the data path.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from synthdet.machine import machine_facts

CHILD = """
import json, sys, time
import torch
from synthdet.detectors import create_detector
from synthdet.training.loop import accumulate_gradients
from synthdet.training.runtime import compiled, device_autocast
model_name, size, batch, steps, spec = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
spec = {"false": False, "true": True}.get(spec, spec)
torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
model = create_detector(model_name, img_size=size).to(device, memory_format=torch.channels_last).train()
forward = compiled(model, spec)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
scaler = torch.amp.GradScaler("cuda", enabled=False)
loss_fn = torch.nn.BCEWithLogitsLoss()
x = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
y = torch.randint(0, 2, (batch,), device=device).float()

def step():
    opt.zero_grad(set_to_none=True)
    accumulate_gradients(forward, model, loss_fn, x, y, 1, scaler, lambda: device_autocast(device))
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()

t0 = time.perf_counter(); step(); first = time.perf_counter() - t0
step()
t0 = time.perf_counter()
for _ in range(steps):
    step()
per_s = steps / (time.perf_counter() - t0)
print(json.dumps({"first_step_s": round(first, 1), "images_per_s": round(per_s * batch, 1), "device": str(device)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    rows = {}
    for spec in ("false", "true"):
        out = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.size), str(args.batch),
                              str(args.steps), spec], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"train.compile={spec} failed:\n{out.stderr[-2000:]}")
        rows[f"compile={spec}"] = json.loads(out.stdout.strip().splitlines()[-1])
    eager, comp = rows["compile=false"]["images_per_s"], rows["compile=true"]["images_per_s"]
    print(json.dumps({"machine": machine_facts(), "model": args.model, "size": args.size, "batch": args.batch,
                      "variants": rows, "speedup_after_compilation": round(comp / eager, 2)}, indent=1))


if __name__ == "__main__":
    main()
