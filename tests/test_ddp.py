"""DistributedDataParallel through the real entry point: ``torchrun --nproc_per_node=2 -m
synthdet.cli stage train`` (gloo on the CPU), as the README's "Scale" section runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

from synthdet.data.manifest import COLUMNS
from tests.conftest import noise_image

ROOT = Path(__file__).resolve().parents[1]


def _pythonpath() -> str:
    """The repository root (for ``tests``) after whatever PYTHONPATH this process has: a process it
    starts imports the same ``synthdet`` as it does (scripts/mutants.py puts a mutated copy first)."""
    return os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)
N_TRAIN, N_VAL, EPOCHS = 24, 8, 3

# What torchrun starts on each rank: the CLI's own main, after two test hooks: every training
# item a rank loads is logged to seen_rank<R>.txt, and with KILL_AFTER_EPOCH=N rank 0 dies (as a
# killed job would) right after writing the checkpoint of epoch N.
ENTRY = """
import os, sys
from synthdet.training import checkpoint
from synthdet.cli import main
from synthdet.data.dataset import ManifestDataset

rank = os.environ["RANK"]
log = open(f"seen_rank{rank}.txt", "a")
getitem = ManifestDataset.__getitem__
def logged(self, i):
    log.write(self.paths[i] + "\\n"); log.flush()
    return getitem(self, i)
ManifestDataset.__getitem__ = logged

if os.environ.get("RANK_FOLDERS"):  # each rank in its own copy of the workspace: what it writes is its own
    os.chdir(f"rank{rank}")
    log = open(f"seen_rank{rank}.txt", "a")
kill_after = int(os.environ.get("KILL_AFTER_EPOCH", "0"))
save = checkpoint.save
def save_then_die(obj, path):
    save(obj, path)
    if path.name == "last.pt" and obj["epoch"] == kill_after:
        os._exit(9)
checkpoint.save = save_then_die
sys.exit(main(["stage", "train"]))
"""


def _workspace(path: Path, model: str = "resnet18", model_kwargs: dict | None = None, **train: object) -> Path:
    """params.yaml (the repository's, with a small model and no workers; ``train`` overrides its
    train settings) and a split manifest."""
    (path / "images").mkdir(parents=True)
    rows = []
    for i in range(N_TRAIN + N_VAL):
        label = i % 2
        a = np.asarray(noise_image(i, (32, 32))).copy()
        if label:
            a[::2, ::2] = 255  # fakes: a checkerboard, learnable in a few steps
        p = path / "images" / f"img{i:02d}.png"
        Image.fromarray(a).save(p)
        row = dict.fromkeys(COLUMNS, "")
        row.update(path=str(p), label=label, subset="s", split="train" if i < N_TRAIN else "val", sha256=f"{i:064x}",
                   status="ok", width=32, height=32, jpeg_quality=None)
        rows.append(row)
    (path / "artifacts/split").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(path / "artifacts/split/splits.parquet", index=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(model=model, model_kwargs=model_kwargs or {}, train_subset="s", device="cpu")
    params["train"].update(input_size=32, epochs=EPOCHS, batch_size=4, num_workers=0, warmup_epochs=0.5,
                           resume_every_s=0)  # the resume state after every epoch: killed after the first
    params["train"].update(train)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    (path / "entry.py").write_text(ENTRY)
    return path


def _torchrun(ws: Path, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "entry.py"]
    return subprocess.run(cmd, cwd=ws, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": _pythonpath(), **env})


def _seen(ws: Path, rank: int) -> list[str]:
    train = {str(ws / "images" / f"img{i:02d}.png") for i in range(N_TRAIN)}
    return [p for p in (ws / f"seen_rank{rank}.txt").read_text().split() if p in train]


def test_two_process_ddp_trains_disjoint_shards_writes_once_and_resumes(tmp_path):
    full = _workspace(tmp_path / "full")
    done = _torchrun(full)
    assert done.returncode == 0, done.stderr[-3000:]
    # each epoch the two ranks load disjoint halves of the training set, together all of it
    per_rank = N_TRAIN // 2
    for epoch in range(EPOCHS):
        shards = [set(_seen(full, r)[epoch * per_rank:(epoch + 1) * per_rank]) for r in (0, 1)]
        assert len(shards[0]) == len(shards[1]) == per_rank and not shards[0] & shards[1]
        assert len(shards[0] | shards[1]) == N_TRAIN
    # one detector, one metrics file, one history: rank 0 writes, rank 1 writes nothing
    metrics = json.loads((full / "metrics/train.json").read_text())
    assert metrics["epoch"] == EPOCHS and metrics["unreadable_images"] == 0
    assert sorted(p.name for p in (full / "artifacts/train").iterdir()) == ["checkpoints", "detector.pt"]
    # finished: no resume state left; the checkpoint folder links the detector (one file on disk)
    assert [p.name for p in (full / "artifacts/train/checkpoints").iterdir()] == ["detector.pt"]
    assert len(pd.read_csv(full / "plots/train_history.csv")) == EPOCHS

    # killed after epoch 1, then started again: resumes at epoch 1 and ends with the same weights
    killed = _workspace(tmp_path / "killed")
    first = _torchrun(killed, KILL_AFTER_EPOCH="1")
    assert first.returncode != 0 and not (killed / "artifacts/train/detector.pt").exists()
    assert torch.load(killed / "artifacts/train/checkpoints/last.pt", weights_only=True)["epoch"] == 1
    again = _torchrun(killed)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout + again.stderr and "at epoch 1" in again.stdout + again.stderr
    history = [pd.read_csv(ws / "plots/train_history.csv") for ws in (full, killed)]
    assert history[0]["train_loss"].tolist() == history[1]["train_loss"].tolist()
    a, b = (torch.load(ws / "artifacts/train/detector.pt", weights_only=True) for ws in (full, killed))
    assert a["epoch"] == b["epoch"]
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"resumed DDP run ends with other weights: {different[:5]}"


def test_under_ddp_rank_0_alone_writes_outputs(tmp_path):
    """Each rank runs in its own copy of the workspace (params and manifest; the images are shared
    by absolute path), so a file written by rank 1 cannot hide among rank 0's."""
    import shutil

    ws = _workspace(tmp_path / "ws")
    for rank in (0, 1):
        for name in ("params.yaml", "artifacts/split/splits.parquet"):
            (ws / f"rank{rank}" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ws / name, ws / f"rank{rank}" / name)
    done = _torchrun(ws, RANK_FOLDERS="1")
    assert done.returncode == 0, done.stderr[-3000:]

    def written(rank: int) -> set[str]:
        folder = ws / f"rank{rank}"
        inputs = {"params.yaml", "artifacts/split/splits.parquet", f"seen_rank{rank}.txt"}
        return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - inputs

    assert written(1) == set(), f"rank 1 wrote {sorted(written(1))}"
    assert {"artifacts/train/detector.pt", "metrics/train.json", "plots/train_history.csv"} <= written(0)
    assert (ws / "rank1/seen_rank1.txt").read_text()  # rank 1 did train: it loaded its share of the images


def test_two_ranks_train_the_weights_one_process_trains_on_the_same_global_batches(tmp_path):
    """DDP is the single-process run spread over ranks: two ranks with batches of 12 against one
    process with batches of 24, over the same 24 images (each step's batch is the whole training set,
    so both see the same images per step whatever the order). DDP must average the ranks' gradients
    (SGD, unlike Adam, moves twice as far on a summed gradient), shard the images and step the
    schedule alike, so the weights agree to float rounding. A LayerNorm network (BatchNorm's
    statistics are per rank by design) without flips (each rank draws its own)."""
    settings = dict(model="vit_tiny_patch16_224", model_kwargs={"patch_size": 8, "depth": 1}, optimizer="sgd",
                    lr=0.05, hflip=False, weights_dtype="float32")
    ddp = _workspace(tmp_path / "ddp", batch_size=N_TRAIN // 2, **settings)
    done = _torchrun(ddp)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(_seen(ddp, 0)) == len(_seen(ddp, 1)) == EPOCHS * N_TRAIN // 2  # each rank half the images
    one = _workspace(tmp_path / "one", batch_size=N_TRAIN, **settings)
    alone = subprocess.run([sys.executable, "-c", "import sys; from synthdet.cli import main; "
                            "sys.exit(main(['stage', 'train']))"], cwd=one, capture_output=True, text=True,
                           timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": _pythonpath()})
    assert alone.returncode == 0, alone.stderr[-3000:]
    history = [pd.read_csv(ws / "plots/train_history.csv") for ws in (ddp, one)]
    assert len(history[0]) == len(history[1]) == EPOCHS
    assert np.allclose(history[0]["lr"], history[1]["lr"])  # the same schedule: as many steps per epoch
    assert history[1]["train_loss"].iloc[-1] < history[1]["train_loss"].iloc[0]  # it did learn something
    a, b = (torch.load(ws / "artifacts/train/detector.pt", weights_only=True) for ws in (ddp, one))
    assert a["epoch"] == b["epoch"]
    far = {k: float((a["model"][k].float() - b["model"][k].float()).abs().max()) for k in a["model"]
           if not torch.allclose(a["model"][k].float(), b["model"][k].float(), rtol=1e-4, atol=1e-5)}
    assert not far, f"DDP's weights are not the single process's: {dict(list(far.items())[:5])}"


def _accumulating_rank(rank: int, init_file: str, out: str) -> None:
    """One rank of a 2-process gloo group: a batch of 6 in 3 micro-batches through DDP, counting the
    gradient synchronisations with a communication hook."""
    import torch.distributed as dist

    from synthdet.training.loop import accumulate_gradients

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1), torch.nn.Flatten(0)))
    synced = []

    def counting_allreduce(state, bucket):  # noqa: ANN001, ANN202
        synced.append(bucket.index())
        work = dist.all_reduce(bucket.buffer() / 2, async_op=True)
        return work.get_future().then(lambda f: f.value()[0])

    model.register_comm_hook(None, counting_allreduce)
    x, y = _rank_batch(rank)
    accumulate_gradients(model, model, torch.nn.BCEWithLogitsLoss(), x, y, 3,
                         torch.amp.GradScaler("cuda", enabled=False), lambda: torch.autocast("cpu", enabled=False))
    torch.save({"grads": [p.grad for p in model.parameters()], "synced": synced}, out)
    dist.destroy_process_group()


def _rank_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(6, 3, 2, 2, generator=g), torch.randint(0, 2, (6,), generator=g).float()


def test_gradient_accumulation_under_ddp_syncs_once_and_gives_the_global_batch_gradient(tmp_path):
    """Micro-batches skip DDP's all-reduce (``no_sync``) but the last; the result is the gradient of
    the mean loss over both ranks' whole batches, as without accumulation."""
    import torch.multiprocessing as mp

    outs = [str(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_accumulating_rank, args=(r, str(tmp_path / "init"), outs[r])) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    got = [torch.load(o, weights_only=True) for o in outs]
    assert got[0]["synced"] == got[1]["synced"] == [0]  # one bucket, synchronised once, not per micro-batch
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1), torch.nn.Flatten(0))
    batches = [_rank_batch(r) for r in (0, 1)]
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    torch.nn.BCEWithLogitsLoss()(reference(x), y).backward()
    for rank in (0, 1):
        for mine, want in zip(got[rank]["grads"], reference.parameters(), strict=True):
            assert torch.allclose(mine, want.grad, atol=1e-6)
