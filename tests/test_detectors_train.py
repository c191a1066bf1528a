import pandas as pd
import pytest
import torch

from synthdet.detectors import create_detector, list_detectors
from synthdet.fsutil import CheckpointError
from synthdet.training.checkpoint import load_detector
from synthdet.training.config import TrainConfig, data_key
from synthdet.training.loop import accumulate_gradients, train_detector
from synthdet.training.scoring import score
from tests.conftest import noise_image

ZOO = ["resnet50", "deit_s", "swin_t", "resnet50_nodown", "cnnspot", "spec", "f3net", "gramnet", "npr"]


@pytest.mark.parametrize("name", ZOO)
def test_registered_detectors_forward_backward(name):
    """Every trainable tensor is in the graph (a detached branch, F3Net's frequency streams or
    GramNet's Gram blocks, would have no gradient) and every convolution and linear layer learns.
    Checked at the second step: ResNets start with the last BN of each block at zero, which
    blocks the gradient into the block until the first update."""
    assert name in list_detectors()
    torch.manual_seed(0)
    model = create_detector(name, img_size=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0.0, 1.0, 0.0, 1.0])
    for _ in range(2):
        opt.zero_grad()
        out = model(x)
        assert out.shape == (4,)
        torch.nn.functional.binary_cross_entropy_with_logits(out, y).backward()
        opt.step()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"{name}: no gradient reaches {missing[:5]}"
    layers = [f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))]
    still = [n for n in layers if params[n].requires_grad and params[n].grad.abs().sum() == 0]
    assert layers and not still, f"{name}: layers that do not learn: {still[:5]}"


def test_resnet50_nodown_keeps_full_resolution_into_the_first_stage():
    """No stride in the stem and no max-pool: layer1 sees the input at full resolution (16x the
    positions of the standard ResNet-50's 1/4 resolution)."""
    shapes = {}
    for name in ("resnet50", "resnet50_nodown"):
        model = create_detector(name, img_size=32).eval()
        model.model.layer1.register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, tuple(o.shape[-2:])))
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
    assert shapes == {"resnet50": (8, 8), "resnet50_nodown": (32, 32)}


def test_detector_specific_pieces():
    import numpy as np
    from PIL import Image

    from synthdet.detectors.f3net import FAD, LFS, dct_matrix
    from synthdet.detectors.npr import npr_residual
    from synthdet.detectors.spec import log_spectrum

    d = dct_matrix(8)
    assert torch.allclose(d @ d.T, torch.eye(8), atol=1e-5)  # orthonormal DCT
    x = torch.randn(2, 3, 16, 16)
    fad = FAD(16)
    with torch.no_grad():
        fad.learnable.zero_()  # base masks only: the "all" band reconstructs the image exactly
    assert torch.allclose(fad(x)[:, 9:12], x, atol=1e-4)
    # LFS: per window, the energy in 6 DCT bands, low to high; a flat image has energy only in the
    # lowest band (the DC term), and a checkerboard's sits in the highest
    assert LFS()(x).shape == (2, 6, 5, 5)
    flat = LFS()(torch.full((1, 3, 16, 16), 0.5))
    assert (flat[:, 0] > -1).all() and (flat[:, 1:] < -5).all()  # log10: 1e-6 where a band is empty
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float().expand(1, 3, 16, 16)
    bands = LFS()(checker).mean(dim=(2, 3))[0]
    assert bands.argmax() == 5 and (bands[5] > bands[1:5]).all()
    # NPR: an image upsampled by nearest neighbour has zero residual; noise does not
    up = torch.nn.functional.interpolate(torch.randn(1, 3, 8, 8), scale_factor=2.0, mode="nearest")
    assert npr_residual(up).abs().max() == 0 and npr_residual(x).abs().max() > 0
    # Spec: a periodic pattern concentrates its spectrum in a few peaks, at its frequency
    assert log_spectrum(x).shape == x.shape
    wave = torch.cos(2 * torch.pi * 4 * torch.arange(16) / 16).expand(1, 3, 16, 16)  # 4 cycles across
    spectrum = log_spectrum(wave)[0, 0]
    peaks = {tuple(int(i) for i in row) for row in torch.nonzero(spectrum == spectrum.max())}
    assert peaks == {(8, 4), (8, 12)}  # centred (fftshift): +-4 cycles from the centre column 8
    assert spectrum.max() - spectrum.median() > 5  # standard deviations above the rest
    # CNNSpot carries its blur + JPEG augmentation
    aug = create_detector("cnnspot", img_size=64).data_config.train_augment
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    import random
    random.seed(0)
    changed = [np.abs(np.asarray(aug(img), float) - np.asarray(img, float)).mean() > 0 for _ in range(20)]
    assert 5 < sum(changed) < 20  # each of blur / JPEG applies with probability 0.5


def test_any_timm_name_and_errors(tmp_path):
    assert {"resnet50", "deit_s", "swin_t"} <= set(list_detectors())
    assert create_detector("resnet18", img_size=32)(torch.randn(2, 3, 32, 32)).shape == (2,)
    with pytest.raises(RuntimeError, match="no_such_model|Unknown model"):
        create_detector("no_such_model")
    with pytest.raises(CheckpointError, match="missing.pt: detector weights not found"):
        create_detector("resnet18", weights=str(tmp_path / "missing.pt"))


@pytest.fixture()
def tiny_rows(tmp_path):
    rows = []
    for i in range(24):
        label = i % 2
        img = noise_image(i, (32, 32))
        if label:  # fakes: a visible checkerboard, learnable in a few steps
            import numpy as np
            a = np.asarray(img).copy()
            a[::2, ::2] = 255
            from PIL import Image
            img = Image.fromarray(a)
        p = tmp_path / f"img{i}.png"
        img.save(p)
        rows.append({"path": str(p), "label": label})
    return pd.DataFrame(rows)


def _finished_keeps_only_its_weights(run):
    """A finished run: no resume state (last.pt, best.pt), and its checkpoint folder's detector.pt
    is the output's own file (a hard link: one copy on disk)."""
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["detector.pt"]
    assert (run / "checkpoints/detector.pt").samefile(run / "detector.pt")


def _cfg(**kw):
    base = dict(model="resnet18", input_size=32, epochs=2, batch_size=8, lr=1e-3, num_workers=0, seed=0)
    return TrainConfig(**{**base, **kw})


def test_training_is_deterministic_and_resumes(tiny_rows, tmp_path):
    train, val = tiny_rows.iloc[:16], tiny_rows.iloc[16:]
    full = train_detector(train, val, _cfg(), tmp_path / "a")
    again = train_detector(train, val, _cfg(), tmp_path / "b")
    assert [h["train_loss"] for h in full["history"]] == [h["train_loss"] for h in again["history"]]
    # the same run saves the same bytes (no timing is stored with the weights): one DVC hash
    assert (tmp_path / "a/detector.pt").read_bytes() == (tmp_path / "b/detector.pt").read_bytes()
    train_detector(train, val, _cfg(epochs=1), tmp_path / "c")
    ckpt = torch.load(tmp_path / "c/detector.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and len(ckpt["result"]["history"]) == 1
    _finished_keeps_only_its_weights(tmp_path / "c")
    # a different configuration never reuses this run: had it, it would have nothing left to do
    # and would return the old history unchanged
    other = train_detector(train, val, _cfg(epochs=1, lr=5e-4), tmp_path / "c")
    assert other["history"][0]["train_loss"] != ckpt["result"]["history"][0]["train_loss"]


class _Killed(Exception):
    pass


def _dies_after_saving(monkeypatch, epoch: int, saved: list | None = None) -> None:
    """checkpoint.save, then an interruption right after ``last.pt`` of ``epoch`` is on disk;
    ``saved`` collects the name and epoch of every file written."""
    from synthdet.training import checkpoint

    save = checkpoint.save

    def save_then_die(obj, path):
        save(obj, path)
        if saved is not None:
            saved.append((path.name, obj.get("epoch")))
        if path.name == "last.pt" and obj["epoch"] == epoch:
            raise _Killed

    monkeypatch.setattr(checkpoint, "save", save_then_die)


def test_resume_continues_where_it_stopped(tiny_rows, tmp_path, capsys, monkeypatch):
    train, val = tiny_rows.iloc[:16], tiny_rows.iloc[16:]
    full = train_detector(train, val, _cfg(epochs=3), tmp_path / "full")
    cfg = _cfg(epochs=3, resume_every_s=0)  # the resume state after every epoch; the same run (fingerprint)
    with monkeypatch.context() as m:
        _dies_after_saving(m, epoch=1)
        with pytest.raises(_Killed):
            train_detector(train, val, cfg, tmp_path / "part")
    assert torch.load(tmp_path / "part/checkpoints/last.pt", weights_only=True)["epoch"] == 1
    resumed = train_detector(train, val, cfg, tmp_path / "part")
    assert "resuming from" in capsys.readouterr().out
    assert len(resumed["history"]) == 3
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]
    a, b = (torch.load(tmp_path / run / "detector.pt", weights_only=True)["model"] for run in ("full", "part"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    _finished_keeps_only_its_weights(tmp_path / "part")


def test_the_resume_state_is_written_once_enough_training_is_unsaved_and_never_after_the_last_epoch(
        tiny_rows, tmp_path, monkeypatch):
    """train.resume_every_s: 0 writes last.pt after every epoch but the last (detector.pt follows
    at once), and best.pt only when the best epoch is not last.pt's own; an interval longer than
    the run writes nothing but detector.pt. Neither changes the weights: one fingerprint."""
    train, val = tiny_rows.iloc[:16], tiny_rows.iloc[16:]
    written = {}
    for every in (0, 3600):
        saved: list = []
        with monkeypatch.context() as m:
            _dies_after_saving(m, epoch=-1, saved=saved)  # records, never dies
            result = train_detector(train, val, _cfg(epochs=4, resume_every_s=every), tmp_path / f"every{every}")
        written[every] = saved
        best = result["best_epoch"]
    assert [e for name, e in written[0] if name == "last.pt"] == [1, 2, 3]
    assert written[3600] == [("detector.pt", best)]
    a, b = (torch.load(tmp_path / f"every{e}/detector.pt", weights_only=True) for e in (0, 3600))
    assert a["fingerprint"] == b["fingerprint"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    aucs = [h["val_auc"] for h in result["history"]]
    for (name, epoch), (then, k) in zip(written[0], written[0][1:], strict=False):
        if name == "best.pt":  # the best epoch so far (ties: the later), saved when last.pt of k does not hold it
            assert then == "last.pt" and epoch < k
            assert epoch == max(i for i, x in enumerate(aucs[:k]) if x == max(aucs[:k])) + 1


def test_a_finished_identical_run_is_reused_not_trained_again(tiny_rows, tmp_path, capsys):
    train, val = tiny_rows.iloc[:16], tiny_rows.iloc[16:]
    first = train_detector(train, val, _cfg(), tmp_path / "first")
    capsys.readouterr()
    done = [tmp_path / "missing/detector.pt", tmp_path / "first/detector.pt"]
    reused = train_detector(train, val, _cfg(), tmp_path / "second", reuse=done)
    assert "its weights are reused" in capsys.readouterr().out
    # one file on disk for both runs' weights where the file system links (it does under pytest's tmp)
    assert (tmp_path / "second/detector.pt").samefile(tmp_path / "first/detector.pt")
    assert reused["history"] == [{k: v for k, v in h.items() if k != "images_per_s"} for h in first["history"]]
    weights = [torch.load(tmp_path / f"{run}/detector.pt", weights_only=True) for run in ("first", "second")]
    assert weights[0]["epoch"] == weights[1]["epoch"]
    assert all(torch.equal(weights[0]["model"][k], weights[1]["model"][k]) for k in weights[0]["model"])
    # another configuration (or an unfinished run of this one) is trained on its own
    other = train_detector(train, val, _cfg(lr=5e-4), tmp_path / "third", reuse=done)
    shorter = train_detector(train, val, _cfg(epochs=3), tmp_path / "fourth", reuse=done)
    assert "reused" not in capsys.readouterr().out
    assert other["history"][0]["train_loss"] != first["history"][0]["train_loss"]
    assert len(shorter["history"]) == 3


def test_gradient_accumulation_gives_the_whole_batch_gradient(tiny_rows, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1), torch.nn.Flatten(0))
    x, y = torch.randn(8, 3, 2, 2), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1], dtype=torch.float32)
    loss_fn, scaler = torch.nn.BCEWithLogitsLoss(), torch.amp.GradScaler("cuda", enabled=False)
    results = {}
    for parts in (1, 4, 3):  # 3: micro-batches of 3, 3 and 2 images, weighted by size
        model.zero_grad()
        loss = accumulate_gradients(model, model, loss_fn, x, y, parts, scaler,
                                    lambda: torch.autocast("cpu", enabled=False))
        results[parts] = (float(loss), [p.grad.clone() for p in model.parameters()])
    for parts in (4, 3):
        assert results[parts][0] == pytest.approx(results[1][0], abs=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[parts][1], results[1][1], strict=True))
    # through the training loop: another run (its own fingerprint), as many epochs
    train, val = tiny_rows.iloc[:16], tiny_rows.iloc[16:]
    assert _cfg(accumulate=2).fingerprint("k") != _cfg().fingerprint("k")
    assert len(train_detector(train, val, _cfg(accumulate=2), tmp_path / "acc")["history"]) == 2


def test_a_compiled_training_run_saves_plain_detector_weights(tiny_rows, tmp_path):
    train, val = tiny_rows.iloc[:16], tiny_rows.iloc[16:]
    train_detector(train, val, _cfg(epochs=1, compile="eager"), tmp_path / "c")  # dynamo, no code generation
    saved = torch.load(tmp_path / "c/detector.pt", weights_only=True)
    assert not any("_orig_mod" in k for k in saved["model"])
    model, cfg = load_detector(tmp_path / "c/detector.pt")  # an uncompiled detector takes the weights
    assert cfg["compile"] == "eager" and score(model, val, input_size=cfg["input_size"])["logit"].notna().all()


def test_a_file_broken_after_indexing_does_not_stop_training(tiny_rows, tmp_path):
    rows = tiny_rows.copy()
    open(rows.path.iloc[3], "wb").close()  # became zero-byte
    result = train_detector(rows.iloc[:16], rows.iloc[16:], _cfg(epochs=1), tmp_path / "t")
    assert list(result["failures"]) == [rows.path.iloc[3]]
    model, cfg = load_detector(tmp_path / "t/detector.pt")
    scored = score(model, rows, input_size=cfg["input_size"])
    scores = scored["fake_probability"]
    assert pd.isna(scores[3]) and pd.notna(scores).sum() == len(rows) - 1
    assert scored["status"][3] == "empty" and (scored["status"] == "ok").sum() == len(rows) - 1


def test_a_rebuilt_dataset_with_the_same_file_names_is_not_resumed(tiny_rows, tmp_path, capsys):
    rows = tiny_rows.assign(sha256=[f"old{i}" for i in range(len(tiny_rows))])
    train, val = rows.iloc[:16], rows.iloc[16:]
    train_detector(train, val, _cfg(epochs=1), tmp_path / "run")
    capsys.readouterr()
    rebuilt = train.assign(sha256=[f"new{i}" for i in range(len(train))])  # same paths, new pixels
    assert data_key(rebuilt, val) != data_key(train, val)
    train_detector(rebuilt, val, _cfg(epochs=1), tmp_path / "run")
    assert "resuming" not in capsys.readouterr().out


_CHILD = """
import sys, pandas as pd
from pathlib import Path
from synthdet.training.config import TrainConfig
from synthdet.training.loop import train_detector
rows = pd.read_csv(sys.argv[1])
cfg = TrainConfig(model="resnet18", input_size=32, epochs=6, batch_size=4, lr=1e-3, num_workers=0, seed=0,
                  resume_every_s=0)
train_detector(rows.iloc[:16], rows.iloc[16:], cfg, Path(sys.argv[2]), device="cpu")
"""


def test_a_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tiny_rows, tmp_path, capsys):
    """A real interruption: the process is killed (SIGKILL) right after its first checkpoint."""
    import os
    import subprocess
    import sys
    import time

    train, val = tiny_rows.iloc[:16], tiny_rows.iloc[16:]
    cfg = _cfg(epochs=6, batch_size=4, resume_every_s=0)  # as the child's
    full = train_detector(train, val, cfg, tmp_path / "full", device="cpu")
    tiny_rows.to_csv(tmp_path / "rows.csv", index=False)
    run = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "rows.csv"), str(run)],
                             env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoints/last.pt").exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    child.kill()
    child.wait()
    assert not (run / "detector.pt").exists(), "the run finished before it could be interrupted"
    capsys.readouterr()
    resumed = train_detector(train, val, cfg, run, device="cpu")
    out = capsys.readouterr().out
    assert "resuming from" in out and "at epoch 6" not in out
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]
    assert [h["val_auc"] for h in resumed["history"]] == [h["val_auc"] for h in full["history"]]
    a = torch.load(tmp_path / "full/detector.pt", weights_only=True)
    b = torch.load(run / "detector.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    _finished_keeps_only_its_weights(run)
    # run again with the output deleted (as DVC does before a rerun): the checkpoint folder's link
    # gives the finished run back, nothing trains
    (run / "detector.pt").unlink()
    again = train_detector(train, val, cfg, run, device="cpu")
    assert "checkpoints/detector.pt: this run (configuration, data and code) has finished" in capsys.readouterr().out
    _finished_keeps_only_its_weights(run)
    untimed = [{k: v for k, v in h.items() if k != "images_per_s"} for h in resumed["history"]]
    assert again["history"] == untimed and again["best_epoch"] == resumed["best_epoch"]
    assert torch.load(run / "detector.pt", weights_only=True)["fingerprint"] == b["fingerprint"]


def _best_weights(monkeypatch) -> list:
    """Collects the weights the loop keeps of each new best epoch (float32, before any rounding):
    the last one is the best epoch's."""
    from synthdet.training import checkpoint

    kept: list = []
    copy = checkpoint.cpu_copy

    def keep(state):
        kept.append(copy(state))
        return kept[-1]

    monkeypatch.setattr(checkpoint, "cpu_copy", keep)
    return kept


def test_detector_pt_is_the_best_validation_epoch(tiny_rows, tmp_path, monkeypatch):
    kept = _best_weights(monkeypatch)
    train, val = tiny_rows.iloc[:16], tiny_rows.iloc[16:]
    result = train_detector(train, val, _cfg(epochs=4, weights_dtype="float32"), tmp_path / "r")
    aucs = [h["val_auc"] for h in result["history"]]
    best = max(i for i, a in enumerate(aucs) if a == max(aucs)) + 1  # ties: the later epoch
    saved = torch.load(tmp_path / "r/detector.pt", weights_only=True)
    assert result["best_epoch"] == saved["epoch"] == best and saved["val_auc"] == max(aucs)
    model, cfg = load_detector(tmp_path / "r/detector.pt")
    assert all(torch.equal(v, kept[-1][k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, kept[0][k]) for k, v in model.state_dict().items()) or best == 1


def test_detector_pt_stores_half_precision_weights_and_is_calibrated_as_stored(tiny_rows, tmp_path, monkeypatch):
    """train.weights_dtype float16 (the default): the parameters are stored as float16 (half the
    file), BatchNorm's statistics as float32; the loaded network is the best epoch rounded to
    float16, and the calibration in detector.pt is what that network gives, not the float32 one."""
    from synthdet.training import scoring

    train, val = tiny_rows.iloc[:16], tiny_rows.iloc[16:]
    cfg = _cfg(epochs=2)
    assert cfg.weights_dtype == "float16"
    with monkeypatch.context() as m:
        kept = _best_weights(m)
        train_detector(train, val, cfg, tmp_path / "half")
    train_detector(train, val, _cfg(epochs=2, weights_dtype="float32"), tmp_path / "full")
    saved = torch.load(tmp_path / "half/detector.pt", weights_only=True)
    model, _ = load_detector(tmp_path / "half/detector.pt")
    params = {name for name, _ in model.named_parameters()}
    assert {saved["model"][k].dtype for k in params} == {torch.float16}
    assert {v.dtype for k, v in saved["model"].items() if k not in params and v.is_floating_point()} == {torch.float32}
    best = kept[-1]
    assert any(not torch.equal(best[k], best[k].half().float()) for k in params)  # the rounding is real
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k].half().float() if k in params else best[k]), k
    calibration = scoring.calibrate(model, val, cfg, torch.device("cpu"), 0)
    assert {k: saved[k] for k in calibration} == calibration
    full = torch.load(tmp_path / "full/detector.pt", weights_only=True)
    assert saved["fingerprint"] != full["fingerprint"]  # another run: never reused for the other
    size = {k: (tmp_path / k / "detector.pt").stat().st_size for k in ("half", "full")}
    assert size["half"] < 0.55 * size["full"]
    with pytest.raises(ValueError, match="weights_dtype 'bfloat16'"):
        _cfg(weights_dtype="bfloat16")


def test_unreadable_images_are_counted_across_dataloader_workers(tiny_rows, tmp_path):
    rows = tiny_rows.copy()
    open(rows.path.iloc[3], "wb").close()  # broke after indexing
    result = train_detector(rows.iloc[:16], rows.iloc[16:], _cfg(epochs=1, num_workers=2), tmp_path / "w")
    assert result["failures"] == {rows.path.iloc[3]: "zero-byte file"}


def test_train_weights_are_the_starting_point(tiny_rows, tmp_path):
    torch.manual_seed(123)
    donor = create_detector("resnet18", img_size=32)
    torch.save({"model": donor.state_dict()}, tmp_path / "start.pt")  # the detector.pt layout
    loaded = create_detector("resnet18", img_size=32, weights=str(tmp_path / "start.pt"))
    pairs = zip(donor.state_dict().values(), loaded.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    # through training: with a zero learning rate the trained weights are the checkpoint's
    train_detector(tiny_rows.iloc[:16], tiny_rows.iloc[16:], _cfg(epochs=1, lr=0.0, weight_decay=0.0,
                                                                  weights=str(tmp_path / "start.pt"),
                                                                  weights_dtype="float32"), tmp_path / "t")
    trained, _ = load_detector(tmp_path / "t/detector.pt")
    assert all(torch.equal(p, q) for p, q in zip(donor.parameters(), trained.parameters(), strict=True))
    scratch = create_detector("resnet18", img_size=32)
    assert not all(torch.equal(p, q) for p, q in zip(donor.parameters(), scratch.parameters(), strict=True))
    # a checkpoint with ImageNet's 1000-class head: the backbone loads, the one-logit head stays new
    imagenet = {k: torch.zeros(1000, *v.shape[1:]) if k.startswith("model.fc.") else v
                for k, v in donor.state_dict().items()}
    torch.save(imagenet, tmp_path / "imagenet.pt")
    backbone = create_detector("resnet18", img_size=32, weights=str(tmp_path / "imagenet.pt"))
    assert torch.equal(backbone.model.conv1.weight, donor.model.conv1.weight) and backbone.model.fc.out_features == 1
    torch.save({"model": create_detector("resnet50", img_size=32).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: weights do not fit resnet18"):
        create_detector("resnet18", img_size=32, weights=str(tmp_path / "other.pt"))


def _distinct(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm model's state dict with every float tensor random, so each can be recognised."""
    g = torch.Generator().manual_seed(7)
    return {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def _found(state: dict[str, torch.Tensor], detector: torch.nn.Module) -> set[str]:
    """The keys of ``state`` whose tensor is in ``detector`` (under any name: detectors rearrange)."""
    have = {(tuple(v.shape), float(v.double().sum())) for v in detector.state_dict().values() if v.is_floating_point()}
    return {k for k, v in state.items() if v.is_floating_point() and (tuple(v.shape), float(v.double().sum())) in have}


def test_pretrained_backbones_load_from_local_timm_torchvision_and_safetensors_files(tmp_path):
    """``train.pretrained: <file>`` reaches every backbone-based detector, heads re-initialised."""
    import timm
    import torchvision
    from safetensors.torch import save_file

    resnet = _distinct(timm.create_model("resnet50"))
    torch.save(resnet, tmp_path / "resnet50_timm.pth")
    head = {"fc.weight", "fc.bias"}
    body = set(resnet) - head
    for name in ("resnet50", "cnnspot", "spec", "gramnet", "resnet50_nodown"):
        detector = create_detector(name, img_size=32, pretrained=str(tmp_path / "resnet50_timm.pth"))
        assert _found(resnet, detector) == {k for k in body if resnet[k].is_floating_point()}, name
    kept = {k for k in body if k.startswith(("conv1", "bn1", "layer1.", "layer2.")) and resnet[k].is_floating_point()}
    npr = create_detector("npr", img_size=32, pretrained=str(tmp_path / "resnet50_timm.pth"))
    assert _found(resnet, npr) == kept  # NPR keeps the stem and the first two stages
    # torchvision's ResNet-50 naming, inside a DDP-style {"state_dict": {"module.<key>": ...}} file
    tv = _distinct(torchvision.models.resnet50())
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.items()}}, tmp_path / "resnet50_tv.pth")
    detector = create_detector("resnet50", img_size=32, pretrained=str(tmp_path / "resnet50_tv.pth"))
    assert torch.equal(detector.model.layer4[2].conv3.weight, tv["layer4.2.conv3.weight"])
    assert detector.model.fc.out_features == 1
    # F3Net: one Xception file for both streams, their input convolutions adapted to 12 and 6 channels
    xception = _distinct(timm.create_model("legacy_xception"))
    save_file({k: v.contiguous() for k, v in xception.items()}, str(tmp_path / "xception.safetensors"))
    f3 = create_detector("f3net", img_size=32, pretrained=str(tmp_path / "xception.safetensors"))
    assert torch.equal(f3.fad_net.block12.skip.weight, xception["block12.skip.weight"])
    assert torch.equal(f3.lfs_net.conv2.weight, xception["conv2.weight"])
    assert f3.fad_net.conv1.weight.shape[1] == 12 and f3.lfs_net.conv1.weight.shape[1] == 6
    # DeiT-S at 64 px: the position embedding is resampled from 14x14 to 4x4 patches
    deit = _distinct(timm.create_model("deit_small_patch16_224"))
    torch.save(deit, tmp_path / "deit.pth")
    d = create_detector("deit_s", img_size=64, pretrained=str(tmp_path / "deit.pth"))
    assert torch.equal(d.model.blocks[11].mlp.fc2.weight, deit["blocks.11.mlp.fc2.weight"])
    assert d.model.pos_embed.shape[1] == 1 + 16


def test_pretrained_weights_are_where_training_starts(tiny_rows, tmp_path):
    import timm

    state = _distinct(timm.create_model("resnet18"))
    torch.save(state, tmp_path / "resnet18.pth")
    cfg = _cfg(epochs=1, lr=0.0, weight_decay=0.0, pretrained=str(tmp_path / "resnet18.pth"), weights_dtype="float32")
    train_detector(tiny_rows.iloc[:16], tiny_rows.iloc[16:], cfg, tmp_path / "t")
    trained, saved_cfg = load_detector(tmp_path / "t/detector.pt")
    assert saved_cfg["pretrained"] == str(tmp_path / "resnet18.pth")
    params = dict(trained.model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in state.items() if k in params and not k.startswith("fc."))
    # another file under the same path is another run: its checkpoint is not resumed
    before = cfg.fingerprint("data")
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "resnet18.pth")
    assert cfg.fingerprint("data") != before


def test_pretrained_errors_name_the_file_the_keys_or_the_way_out(tmp_path, monkeypatch):
    import timm

    from synthdet.detectors.backbones import PretrainedWeightsError

    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(PretrainedWeightsError, match=r"resnet18.pth: not resnet50 weights .*missing \['layer1.0.bn3"):
        create_detector("resnet50", img_size=32, pretrained=str(tmp_path / "resnet18.pth"))
    with pytest.raises(PretrainedWeightsError, match="nope.pth: no such file"):
        create_detector("resnet50", img_size=32, pretrained=str(tmp_path / "nope.pth"))
    torch.save({"epoch": 3, "config": {"lr": 1.0}}, tmp_path / "empty.pth")
    with pytest.raises(PretrainedWeightsError, match="empty.pth: no tensors in it"):
        create_detector("resnet50", img_size=32, pretrained=str(tmp_path / "empty.pth"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsError, match=r"true needs timm's 'resnet50' weights .*HF_HUB_OFFLINE=1.*"
                                                     r"set train.pretrained to that file"):
        create_detector("cnnspot", img_size=32, pretrained=True)


def test_device_and_worker_settings_resolve_by_the_machine(monkeypatch):
    """``device: auto`` is CUDA only when torch sees a GPU; ``num_workers: auto`` is none on the CPU
    and, on CUDA, up to 8 from this process's share of the cores."""
    from synthdet.training.runtime import resolve_device, resolve_workers, workers_param

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda:1")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_workers("auto", torch.device("cpu")) == 0 and resolve_workers(3, torch.device("cpu")) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 32)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resolve_workers("auto", torch.device("cuda:0")) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert resolve_workers("auto", torch.device("cuda:0")) == 3
    for bad in (-1, "two", 1.5, True):
        with pytest.raises(ValueError, match="num_workers: expected 'auto' or a whole number"):
            workers_param(bad)


def test_pixel_cache_gives_the_reference_pixels_and_the_same_training(tiny_rows, tmp_path):
    """The cached path hands the transform exactly the pixels the decoding path does, keeps a
    file that breaks out of training, and trains to the same weights."""
    from PIL import Image

    from synthdet.data.dataset import ManifestDataset, make_transform, view_transform
    from synthdet.data.pixelcache import PixelCache

    rows = tiny_rows.copy()
    big = tmp_path / "big.jpg"  # a full-size JPEG: the cache stores its 32 px view, not the file
    noise_image(99, (300, 200)).save(big, quality=92)
    rows.loc[0, "path"] = str(big)
    open(rows.path.iloc[3], "wb").close()  # zero-byte: unreadable in both paths
    cache = PixelCache(tmp_path / "cache", rows["path"].tolist(), [""] * len(rows), 32)
    cache.build()
    assert cache.complete and cache.problems == {3: "zero-byte file"}
    plain = ManifestDataset(rows, make_transform(32, train=False))
    cached = ManifestDataset(rows, view_transform(train=False), cache=cache)
    for i in range(len(rows)):
        a, b = plain[i], cached[i]
        assert torch.equal(a[0], b[0]) and a[1:] == b[1:], i
    assert plain[3][3] == cached[3][3] == f"{rows.path.iloc[3]}\tzero-byte file"
    # another size or other content under the same names is another cache
    assert PixelCache(tmp_path / "cache", rows["path"].tolist(), [""] * len(rows), 16).key != cache.key
    assert PixelCache(tmp_path / "cache", rows["path"].tolist(), ["x"] * len(rows), 32).key != cache.key
    # training with the cache: same losses and weights as without
    a = train_detector(rows.iloc[:16], rows.iloc[16:], _cfg(), tmp_path / "a")
    b = train_detector(rows.iloc[:16], rows.iloc[16:], _cfg(pixel_cache=str(tmp_path / "c2")), tmp_path / "b")
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert a["failures"] == b["failures"] == {rows.path.iloc[3]: "zero-byte file"}
    wa, wb = (torch.load(tmp_path / r / "detector.pt", weights_only=True)["model"] for r in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len(list((tmp_path / "c2").glob("*.npy"))) == 2 and Image.open(big).size == (300, 200)


def test_every_checkpoint_of_a_run_is_the_one_format_and_an_older_detector_says_how_to_regenerate(tiny_rows, tmp_path,
                                                                                                 monkeypatch):
    from synthdet.training import checkpoint

    monkeypatch.setattr(checkpoint, "release_resume_state", lambda folder: None)  # the resume state, as mid-run
    train, val = tiny_rows.iloc[:16], tiny_rows.iloc[16:]
    # best.pt is written only where the best epoch is not last.pt's own: validation AUCs that fall
    # after epoch 1 make it so
    from synthdet.training import loop

    aucs = iter([0.9, 0.5, 0.4])
    metrics = loop.binary_metrics
    monkeypatch.setattr(loop, "binary_metrics", lambda y, s, **kw: {**metrics(y, s, **kw), "auc": next(aucs)})
    train_detector(train, val, _cfg(epochs=3, resume_every_s=0), tmp_path / "r")
    files = [tmp_path / "r/checkpoints/last.pt", tmp_path / "r/checkpoints/best.pt", tmp_path / "r/detector.pt"]
    saved = [torch.load(f, weights_only=True) for f in files]
    assert saved[0]["epoch"] == 2 and saved[1]["epoch"] == saved[2]["epoch"] == 1
    assert {s["format"] for s in saved} == {checkpoint.FORMAT}
    assert len({s["fingerprint"] for s in saved}) == 1  # configuration, data, code and weights: one run
    older = {k: v for k, v in saved[2].items() if k != "format"}  # as synthdet wrote it before the format
    torch.save(older, tmp_path / "older.pt")
    with pytest.raises(CheckpointError, match=r"older.pt: a detector of checkpoint format 0, written by an older "
                                              r"synthdet .*dvc repro -f train"):
        load_detector(tmp_path / "older.pt")


def test_the_loop_refuses_a_network_trained_with_its_own_objective(tiny_rows, tmp_path):
    cfg = _cfg(model="imaginet_selfcon", model_kwargs={"backbone": "resnet18", "nodown": False, "n_models": 1})
    with pytest.raises(ValueError, match=r"imaginet_selfcon is trained with its own objective \(selfcon\)"):
        train_detector(tiny_rows, tiny_rows.iloc[:0], cfg, tmp_path / "s")


def test_an_edit_to_one_detector_changes_only_its_own_runs_fingerprints(monkeypatch):
    """A run's code fingerprint holds the loop's code and its own detector's, not every registered
    detector's: after an edit to F3Net's file the ResNet-50 and NPR runs keep their fingerprints
    (a rerun takes their finished weights), F3Net's runs train again; an edit to the loop moves all."""
    from pathlib import Path

    def fingerprints() -> dict[str, str]:
        return {m: TrainConfig(model=m, input_size=32).fingerprint("k") for m in ("resnet50", "f3net", "npr")}

    before = fingerprints()
    read = Path.read_bytes
    for edited, moved in (("f3net.py", {"f3net"}), ("loop.py", set(before))):
        monkeypatch.setattr(Path, "read_bytes", lambda self, edited=edited: read(self) + b"#"
                            if self.name == edited else read(self))
        after = fingerprints()
        assert {m for m in before if after[m] != before[m]} == moved, edited
