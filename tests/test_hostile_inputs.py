"""Attacks and careless inputs, each with a tiny fabricated file: the clear error, and nothing
written outside the folder the work was given."""

import io
import json
import os
import re
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from synthdet import cli
from synthdet.data.dataset import ManifestDataset, make_transform
from synthdet.data.imageio import ImageDecodeError, inspect_image, load_rgb
from synthdet.data.manifest import describe_file
from synthdet.fsutil import (
    OWNED_MARKER,
    CheckpointError,
    DataSourceError,
    UnsafePathError,
    file_digest,
    inside,
    make_owned_dir,
    remove_owned_dir,
)
from synthdet.genimage.archives import Part, ingest, verify_parts
from synthdet.genimage.splitzip import SplitZip, extract
from synthdet.imaginet.dataset import build_perturbed, read_annotations
from synthdet.training import checkpoint
from synthdet.training.checkpoint import load_detector
from synthdet.training.config import TrainConfig
from synthdet.training.loop import train_detector
from tests.conftest import noise_image


def snapshot(folder: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (outside ``skip``) with its size and mtime."""
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and not (skip and (p == skip or skip in p.parents)):
            st = p.stat()
            out[p.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


# ---------------------------------------------------------------- 1. code execution from a checkpoint

class _RunsCode:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, proof: Path) -> None:
        self.proof = proof

    def __reduce__(self):
        return (Path.write_text, (self.proof, "pwned"))


@pytest.mark.parametrize("name", ["last.pt", "detector.pt"])
def test_a_pickled_object_in_a_checkpoint_is_refused_and_never_runs(tmp_path, name):
    proof = tmp_path / "proof.txt"
    ckpt = tmp_path / "run" / ("checkpoints" if name == "last.pt" else "") / name
    ckpt.parent.mkdir(parents=True)
    torch.save({"model": {}, "config": {"model": "resnet18", "input_size": 32}, "fingerprint": _RunsCode(proof)},
               ckpt)
    with pytest.raises(CheckpointError, match=rf"{name}: refused to load this .*could run code"):
        if name == "detector.pt":
            load_detector(ckpt)
        else:
            rows = pd.DataFrame({"path": [str(tmp_path / "x.png")] * 2, "label": [0, 1], "sha256": ["a", "b"]})
            train_detector(rows, rows.iloc[:0], TrainConfig(model="resnet18", input_size=32, epochs=1,
                                                            num_workers=0), tmp_path / "run")
    assert not proof.exists()


def test_a_pickled_object_is_refused_through_every_weights_path_and_never_runs(tmp_path):
    """Not a grep: a hostile file through each path a user or a package hands weights in."""
    from synthdet.datasets.embedded.generators.pretrained import load_gan_face, load_omniart_eyes
    from synthdet.detectors import create_detector

    proof = tmp_path / "proof.txt"
    hostile = tmp_path / "weights.pt"
    torch.save({"model": {"fc.weight": torch.zeros(1, 2)}, "netG_state_dict": _RunsCode(proof)}, hostile)
    loads = {"train.weights (a whole detector)": lambda: create_detector("resnet18", img_size=32, weights=str(hostile)),
             "train.pretrained (a local backbone file)": lambda: create_detector("resnet18", img_size=32,
                                                                                 pretrained=str(hostile)),
             "gan_face generator": lambda: load_gan_face(str(hostile)),
             "omniart_eyes generator": lambda: load_omniart_eyes(str(hostile))}
    for what, load in loads.items():
        with pytest.raises(CheckpointError, match=r"weights.pt: refused to load this .*could run code"):
            load()
        assert not proof.exists(), what


def test_train_weights_that_are_not_a_state_dict_get_the_right_reason(tmp_path):
    """``train.weights`` naming a saved tensor, a text file or random bytes: a CheckpointError
    naming the file and what it is (not an AttributeError, and not "could run code", which is kept
    for pickled references to code)."""
    from synthdet.detectors import create_detector

    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    (tmp_path / "notes.pt").write_text("hello, not a checkpoint\n")
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 100, dtype=np.uint8).tobytes())
    torch.save({"model": {}}, tmp_path / "empty.pt")
    says = {"tensor.pt": r"not detector weights: a Tensor where a state dict of tensors is expected",
            "notes.pt": r"unreadable detector weights \(truncated, or not a file torch.save wrote",
            "noise.pt": r"unreadable detector weights \(not a file torch.save wrote, or damaged",
            "empty.pt": r"not detector weights: a dict where a state dict of tensors"}
    for name, message in says.items():
        with pytest.raises(CheckpointError, match=rf"{name}: {message}") as caught:
            create_detector("resnet18", img_size=32, weights=str(tmp_path / name))
        assert "could run code" not in str(caught.value)


def test_no_weights_only_false_anywhere_in_the_package():
    src = Path(__file__).resolve().parents[1] / "src"
    unsafe = "weights_only=" + "False"  # spelled in two parts so that `git grep` finds it nowhere
    offenders = [p for p in src.rglob("*.py") if unsafe in p.read_text().replace(" ", "")]
    assert offenders == []


def test_a_truncated_resume_checkpoint_names_the_file_and_the_fix(tmp_path):
    ckpt = tmp_path / "run/checkpoints/last.pt"
    ckpt.parent.mkdir(parents=True)
    buf = io.BytesIO()
    torch.save({"model": torch.nn.Linear(4, 4).state_dict()}, buf)
    ckpt.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    img = tmp_path / "x.png"
    noise_image(0, (32, 32)).save(img)
    rows = pd.DataFrame({"path": [str(img)] * 2, "label": [0, 1], "sha256": ["a", "a"]})
    with pytest.raises(CheckpointError, match=r"last.pt: unreadable resume checkpoint .*Delete it"):
        train_detector(rows, rows.iloc[:0], TrainConfig(model="resnet18", input_size=32, epochs=1, num_workers=0),
                       tmp_path / "run")


# ---------------------------------------------------------------- 2. writing outside the output folder

@pytest.mark.parametrize("bad", ["/etc/abs.png", "../../outside.png", "./a/../../outside.png", "C:/win.png"])
def test_imaginet_paths_that_leave_the_root_are_refused_at_parse_time(tmp_path, bad):
    ann = tmp_path / "ann.txt"
    ann.write_text(f"./ok.png,1,2,0,1\n{bad},1,2,0,1\n")
    with pytest.raises(DataSourceError, match=r"ann.txt:2: refused path"):
        read_annotations(ann)


def test_imaginet_perturbation_never_writes_outside_its_folder(tmp_path):
    work = tmp_path / "work"
    root, out = work / "root", work / "out"
    root.mkdir(parents=True)
    noise_image(0, (300, 300)).save(root / "a.png")
    before = snapshot(tmp_path, skip=work)
    crafted = pd.DataFrame([{"relpath": "../../escaped", "label": 1, "content": "faces", "family": "gan",
                             "generator": "stylegan_xl", "specific": 1}])
    with pytest.raises(UnsafePathError, match="perturbed test set: refused path '../../escaped.png'"):
        build_perturbed(crafted, root, out, seed=0)
    link = root / "link"
    link.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="outside"):
        inside(root, "link/escaped.png", "test")
    assert snapshot(tmp_path, skip=work) == before


def test_the_path_guard(tmp_path):
    assert inside(tmp_path, "./a/b.png", "t") == tmp_path / "a/b.png"
    for bad, why in [(".", "names the folder itself"), ("", "empty name"), ("a/\0b", "control character"),
                     ("a\\..\\b", "backslash"), ("x" * 256, "longer than 255 bytes"), ("/etc/x", "absolute")]:
        with pytest.raises(UnsafePathError, match=why):
            inside(tmp_path, bad, "t")
    assert inside(tmp_path, "x" * 250, "t").name == "x" * 250


# ---------------------------------------------------------------- 3. deleting folders the tool did not make

def _tiny_repo(path: Path) -> Path:
    path.mkdir()
    (path / "params.yaml").write_text("seed: 0\n")
    (path / "profiles").mkdir()
    (path / "profiles/smoke.yaml").write_text("seed: 1\n")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "t"]):
        subprocess.run(cmd, cwd=path, check=True, capture_output=True)
    return path


def test_smoke_dest_never_deletes_the_checkout_or_a_foreign_folder(tmp_path, monkeypatch, capsys):
    repo = _tiny_repo(tmp_path / "repo")
    monkeypatch.chdir(repo)
    before = snapshot(tmp_path)
    assert cli.main(["smoke", "--dest", "."]) == 2
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert cli.main(["smoke", "--dest", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert "did not create" in err and err.count("\n") == 2
    assert snapshot(tmp_path, skip=foreign) == before and (foreign / "notes.txt").read_text() == "keep me"
    assert (repo / ".git").is_dir()
    # a workspace the tool made is replaced on the next run
    ws = cli.make_workspace(tmp_path / "ws", {"seed": 3})
    (ws / "stale.txt").write_text("old")
    ws = cli.make_workspace(tmp_path / "ws", {"seed": 4})
    assert not (ws / "stale.txt").exists() and (ws / OWNED_MARKER).exists()
    assert "seed: 4" in (ws / "params.yaml").read_text()


def test_owned_folders(tmp_path):
    with pytest.raises(PermissionError, match="did not create"):
        remove_owned_dir(tmp_path)
    own = make_owned_dir(tmp_path / "a")
    with pytest.raises(PermissionError, match="is or contains"):
        remove_owned_dir(own, protect=(own / "inner",))
    remove_owned_dir(own)
    assert not own.exists()


# ---------------------------------------------------------------- 4. memory exhaustion from tiny files

def test_a_one_by_a_million_png_is_refused_before_any_resize(tmp_path):
    path = tmp_path / "line.png"
    Image.new("RGB", (1_000_000, 1)).save(path, optimize=True)
    assert path.stat().st_size < 5000
    for fn in (load_rgb, inspect_image):
        with pytest.raises(ImageDecodeError, match=r"line.png: 1000000x1: aspect ratio beyond 32:1") as info:
            fn(path)
        assert info.value.status == "extreme_aspect"
    ok = tmp_path / "ok.png"
    noise_image(1, (48, 48)).save(ok)
    ds = ManifestDataset(pd.DataFrame({"path": [str(path), str(ok)], "label": [1, 0]}), make_transform(64, False))
    x, y, i, skipped = ds[0]  # the hostile file is skipped, the epoch goes on
    assert x.shape == (3, 64, 64) and i == 1 and "aspect ratio" in ds.failures[str(path)]
    assert skipped.startswith(f"{path}\t") and "aspect ratio" in skipped


def _zip_with(path: Path, entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names: the test wants them
        with zipfile.ZipFile(path, "w", compression=method) as zf:
            for name, data in entries.items():  # a fixed timestamp: today's date bytes can hold a placeholder
                zf.writestr(zipfile.ZipInfo(name.split("#")[0], date_time=(1980, 1, 1, 0, 0, 0)), data,
                            compress_type=method)
    return path


def _patch(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert len(old) == len(new) and data.count(old) == 2  # local header and central directory
    path.write_bytes(data.replace(old, new))


def _declare_size(path: Path, size: int) -> None:
    """Rewrite the uncompressed size in the central directory (what the reader trusts)."""
    data = bytearray(path.read_bytes())
    i = data.find(b"PK\x01\x02")
    data[i + 24 : i + 28] = struct.pack("<I", size)
    path.write_bytes(bytes(data))


def test_inflation_is_bounded_by_the_declared_size(tmp_path):
    zeros = 200 * 1024 * 1024
    honest = _zip_with(tmp_path / "honest.zip", {"imagenet_glide/zeros.bin": bytes(zeros)})
    assert honest.stat().st_size < 1024 * 1024  # 1 MB that inflates to 200 MB
    tracemalloc.start()
    with SplitZip([honest]) as archive:
        extract(archive, tmp_path / "out")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (tmp_path / "out/imagenet_glide/zeros.bin").stat().st_size == zeros
    assert peak < 32 * 1024 * 1024, f"extraction held {peak / 2**20:.0f} MiB at once"
    liar = _zip_with(tmp_path / "liar.zip", {"imagenet_glide/small.bin": bytes(100_000)})
    _declare_size(liar, 10)
    with SplitZip([liar]) as archive, pytest.raises(
            DataSourceError, match=r"liar.zip: entry 'imagenet_glide/small.bin': inflates past its declared 10 bytes"):
        extract(archive, tmp_path / "out2")
    assert not [p for p in (tmp_path / "out2").rglob("*") if p.is_file() and not p.name.startswith(".extract-log")]


# ---------------------------------------------------------------- 5. corrupt images accepted as ok

def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _lying_jpegs(folder: Path) -> tuple[Path, Path]:
    """A JPEG cut to a quarter with its end marker put back, and a 16x16 one whose header claims
    9000x7000: Pillow decodes both to grey pictures without a word."""
    good = _jpeg(noise_image(0, (256, 256)), quality=90)
    cut = folder / "cut.jpg"
    cut.write_bytes(good[: len(good) // 4] + b"\xff\xd9")  # a quarter, end marker put back
    small = bytearray(_jpeg(noise_image(1, (16, 16))))
    sof = small.find(b"\xff\xc0")
    small[sof + 5 : sof + 9] = struct.pack(">HH", 7000, 9000)
    liar = folder / "liar.jpg"
    liar.write_bytes(bytes(small))
    return cut, liar


def _png_chunk_bombs(folder: Path) -> list[Path]:
    """300-byte-ish PNGs whose zTXt, iTXt or iCCP chunk inflates past Pillow's limit (to 300 MiB
    in the wild; past its 1 MiB per-chunk limit is enough to be refused)."""
    from PIL import PngImagePlugin

    paths = []
    for name in ("ztxt", "itxt", "iccp"):
        info, extra = PngImagePlugin.PngInfo(), {}
        if name == "iccp":
            extra["icc_profile"] = b"\0" * (4 << 20)
        else:
            (info.add_text if name == "ztxt" else info.add_itxt)("k", "a" * (4 << 20), zip=True)
        path = folder / f"{name}.png"
        noise_image(2, (32, 32)).save(path, pnginfo=info, **extra)
        assert path.stat().st_size < 64 << 10
        paths.append(path)
    return paths


def test_every_reader_decodes_strictly_and_png_chunk_bombs_are_corrupt(tmp_path):
    """One strict decoding path: what the index refuses, the image reader every stage uses refuses
    too, and so do `predict` and ImagiNet's perturbation (each file corrupt, named, the others
    scored or written): the two lying JPEGs, and PNGs whose text or colour-profile chunk inflates
    past Pillow's limit (was a ValueError past the reader, which ended indexing, epochs, predict).
    A training epoch over indexed rows skips only the JPEG re-check (``strict=False``)."""
    folder = tmp_path / "in"
    folder.mkdir()
    bad = [*_lying_jpegs(folder), *_png_chunk_bombs(folder)]
    noise_image(3, (48, 48)).save(folder / "fine.png")
    for path in bad:
        with pytest.raises(ImageDecodeError, match=re.escape(path.name)):
            load_rgb(path)
        assert describe_file(path)["status"] == "corrupt", path.name
    assert load_rgb(bad[1], strict=False).size == (9000, 7000)  # what Pillow alone gives: the index catches it
    from synthdet.predict import predict_files

    table = predict_files([folder], _detector_file(tmp_path / "detector.pt"), device="cpu", num_workers=0)
    status = dict(zip(table["path"].map(lambda p: Path(p).name), table["status"], strict=True))
    assert status == {"fine.png": "ok", **{p.name: "corrupt" for p in bad}}
    ann = pd.DataFrame([{"relpath": p.name, "label": 1, "content": "faces", "family": "gan",
                         "generator": "stylegan_xl", "specific": 1} for p in (*bad, folder / "fine.png")])
    perturbed = build_perturbed(ann, folder, tmp_path / "perturbed", seed=0)
    assert dict(zip(perturbed["relpath"], perturbed["status"], strict=True)) == status
    assert sorted(p.name for p in (tmp_path / "perturbed").rglob("*.png")) == ["fine.png.png"]


def test_truncated_jpeg_data_and_lying_headers_are_corrupt(tmp_path):
    cut, liar = _lying_jpegs(tmp_path)
    for path in (cut, liar):
        with pytest.raises(ImageDecodeError, match=rf"{path.name}: corrupt JPEG data .*premature end"):
            inspect_image(path)
        assert describe_file(path)["status"] == "corrupt"
    # what must stay accepted: plain, progressive, grayscale and CMYK JPEGs
    for name, img, kw in [("plain", noise_image(2), {}), ("prog", noise_image(3), {"progressive": True}),
                          ("gray", noise_image(4, mode="L"), {}), ("cmyk", noise_image(5, mode="CMYK"), {})]:
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(_jpeg(img, **kw))
        assert describe_file(path)["status"] == "ok", name


# ---------------------------------------------------------------- 6. extraction edge cases

def test_bad_entry_names_are_refused_before_anything_is_written(tmp_path):
    # zipfile cuts names at NUL and keeps "." out: write a placeholder, then patch the bytes
    cases = {"dot": (b"Q", b"."), "nul": (b"imagenet_glide/aQb.png", b"imagenet_glide/a\0b.png")}
    for label, (placeholder, real) in cases.items():
        z = _zip_with(tmp_path / f"{label}.zip", {"imagenet_glide/ok.png": b"fine", placeholder.decode(): b"x"})
        _patch(z, placeholder, real)
        out = tmp_path / f"out_{label}"
        with SplitZip([z]) as archive, pytest.raises(DataSourceError, match=rf"{label}.zip: entry: refused path"):
            extract(archive, out)
        assert not out.exists()
    dup = _zip_with(tmp_path / "dup.zip", {"imagenet_glide/a.png": b"1", "imagenet_glide/a.png#2": b"2"})
    with SplitZip([dup]) as archive, pytest.raises(DataSourceError, match="both extract to the same path"):
        extract(archive, tmp_path / "out_dup")


def test_a_dot_entry_and_a_file_where_a_folder_is_needed_are_named_by_ingest(tmp_path):
    """Through ``ingest``, as a user meets them: an entry named ``.``, a file entry at a path that
    other entries extract into (two ways: a plain file, and a symbolic link stored as an entry),
    each refused with the archive and the entries named, before anything is written."""
    (tmp_path / "src").mkdir()
    link = zipfile.ZipInfo("imagenet_glide/train", date_time=(1980, 1, 1, 0, 0, 0))
    link.external_attr = (0o120777 << 16)  # a symbolic link, as `zip --symlinks` stores it
    cases = {"dot": ({"imagenet_glide/ok.png": b"fine", "Q": b"x"}, None, "refused path"),
             "clash": ({"imagenet_glide/train/ai": b"a file", "imagenet_glide/train/ai/a.png": b"x"}, None,
                       "'imagenet_glide/train/ai' is a file where entry 'imagenet_glide/train/ai/a.png' needs"),
             "link": ({"imagenet_glide/train/ai/a.png": b"x"}, link, "'imagenet_glide/train' is a file where")}
    for label, (entries, extra, says) in cases.items():
        z = _zip_with(tmp_path / "src/imagenet_glide.zip", entries)
        if extra is not None:
            with zipfile.ZipFile(z, "a") as zf:
                zf.writestr(extra, "/etc")
        if label == "dot":
            _patch(z, b"Q", b".")
        out = tmp_path / f"out_{label}"
        with pytest.raises(DataSourceError, match=re.escape("imagenet_glide.zip") + ".*" + re.escape(says)):
            ingest(tmp_path / "src", out, ["imagenet_glide"], {"imagenet_glide.zip": file_digest(z, "md5")})
        assert not any(p.is_file() and not p.name.startswith(".") for p in out.rglob("*")), label
        z.unlink()


def test_long_names_extract_and_corrupt_deflate_names_the_entry(tmp_path):
    long = "imagenet_glide/" + "n" * 250 + ".png"
    z = _zip_with(tmp_path / "long.zip", {long: b"ok" * 100})
    with SplitZip([z]) as archive:
        assert extract(archive, tmp_path / "out")["extracted"] == 1
    assert (tmp_path / "out" / long).read_bytes() == b"ok" * 100
    bad = _zip_with(tmp_path / "bad.zip", {"imagenet_glide/d.bin": bytes(range(256)) * 50})
    data = bytearray(bad.read_bytes())
    data[30 + len("imagenet_glide/d.bin")] = 0xFF  # first deflate block: type 3 is invalid
    bad.write_bytes(bytes(data))
    with SplitZip([bad]) as archive, pytest.raises(
            DataSourceError, match=r"bad.zip: entry 'imagenet_glide/d.bin': corrupt deflate data"):
        extract(archive, tmp_path / "out_bad")


def test_resume_rechecks_a_same_size_corrupted_file(tmp_path):
    payload = bytes(range(256)) * 40
    z = _zip_with(tmp_path / "a.zip", {"imagenet_glide/a.bin": payload})
    out = tmp_path / "out"
    with SplitZip([z]) as archive:
        extract(archive, out)
        victim = out / "imagenet_glide/a.bin"
        victim.write_bytes(b"\0" * len(payload))  # same size, other bytes, later mtime
        os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
        assert extract(archive, out) == {"extracted": 1, "skipped": 0}
        assert victim.read_bytes() == payload
        assert extract(archive, out) == {"extracted": 0, "skipped": 1}
        stat = victim.stat()
        victim.write_bytes(b"\1" * len(payload))  # bit rot keeps the mtime
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert extract(archive, out, verify_existing=True) == {"extracted": 1, "skipped": 0}
        assert victim.read_bytes() == payload


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero and FIFOs")
def test_a_part_that_is_a_device_or_a_fifo_is_refused_not_read_forever(tmp_path):
    """A GenImage part that is a link to /dev/zero (endless) or a FIFO (waits for a writer forever)
    is refused at once with its path named (was hashed until killed)."""
    import signal

    def overdue(*_):
        raise TimeoutError("still reading after 20 s")

    before = signal.signal(signal.SIGALRM, overdue)
    try:
        for kind in ("link", "fifo"):
            src = tmp_path / kind
            src.mkdir()
            part = src / "imagenet_glide.zip"
            part.symlink_to("/dev/zero") if kind == "link" else os.mkfifo(part)
            signal.alarm(20)
            with pytest.raises(DataSourceError, match=r"imagenet_glide.zip: not a regular file"):
                ingest(src, tmp_path / f"out_{kind}", ["imagenet_glide"], {"imagenet_glide.zip": "0" * 32})
            signal.alarm(0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_names_the_file_and_keeps_what_was_finished(tmp_path):
    """A write that runs out of space (a real ENOSPC: /dev/full) is a DiskFullError naming the file
    being written, its partial copy removed and the files written before it kept (was a raw
    "No space left on device" naming no file)."""
    from synthdet.fsutil import DiskFullError, atomic_output, atomic_write_bytes

    atomic_write_bytes(tmp_path / "out/done.bin", b"finished")
    with pytest.raises(DiskFullError, match=r"out/big.bin: no space left on its disk while writing it .*MiB free"):
        with atomic_output(tmp_path / "out/big.bin") as tmp, open("/dev/full", "wb") as full:
            tmp.write_bytes(b"partial")
            full.write(b"x" * 4096)
            full.flush()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["done.bin"]


def test_a_truncated_md5_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    (tmp_path / "src").mkdir()
    z = _zip_with(tmp_path / "src/imagenet_glide.zip", {"imagenet_glide/train/ai/a.png": b"x"})
    cache = tmp_path / "out/.md5_cache.json"
    cache.parent.mkdir()
    cache.write_text('{"imagenet_glide.zip:12')  # cut mid-write by an older version
    sums = {"imagenet_glide.zip": file_digest(z, "md5")}
    verify_parts([Part(z, "imagenet_glide.zip", 10**6)], sums, cache)
    assert "unreadable cache" in caplog.text and "rebuilding" in caplog.text
    assert list(json.loads(cache.read_text()).values()) == [sums["imagenet_glide.zip"]]
    assert ingest(tmp_path / "src", tmp_path / "out", ["imagenet_glide"], sums)["imagenet_glide"]["extracted"] == 1


# ---------------------------------------------------------------- 7. parsers and the command line

def test_annotation_parser_edge_cases(tmp_path):
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeff./a.png,1,2,0,1\n./b.png,0,0,4,8\n".encode())
    assert read_annotations(bom).relpath.tolist() == ["a.png", "b.png"]
    for name, body, why in [
        ("dashes.txt", "./a.png,--0,2,0,1\n", r"dashes.txt:1: expected path,origin"),
        ("super.txt", "./a.png,1,\u00b2,0,1\n", r"super.txt:1: expected path,origin"),
        ("dup.txt", "./a.png,1,2,0,1\n./b.png,0,0,4,8\na.png,1,2,0,1\n",
         r"dup.txt:3: a.png is already listed on line 1"),
    ]:
        (tmp_path / name).write_text(body)
        with pytest.raises(DataSourceError, match=why):
            read_annotations(tmp_path / name)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"./a.png,1,2,0,1\n./caf\xe9.png,0,0,4,8\n")
    with pytest.raises(DataSourceError, match=r"latin.txt:2: not UTF-8"):
        read_annotations(latin)


def _cli(tmp_path, monkeypatch, capsys, *argv):
    monkeypatch.chdir(tmp_path)
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_cli_user_mistakes_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles/broken.yaml").write_text("train: {epochs: 3\n")
    (tmp_path / "broken_params.yaml").write_text("model: [resnet50\n")
    (tmp_path / "partial_params.yaml").write_text("model: resnet50\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/evaluate.json").write_text('{"clean": {"ldm": {"acc": 0.9')
    (tmp_path / "data.dvc").write_text("outs: []\n")
    cases = [
        (["profile", "broken"], r"profiles/broken.yaml \(line \d+\): not valid YAML"),
        (["profile", "nope"], r"profiles/nope.yaml: no such profile"),
        (["stage", "train", "--params", "broken_params.yaml"], r"broken_params.yaml \(line \d+\): not valid YAML"),
        (["stage", "train", "--params", "partial_params.yaml"], r"partial_params.yaml: missing key 'seed'"),
        (["stage", "no_such_stage"], r"no stage 'no_such_stage'"),
        (["summary"], r"metrics/evaluate.json: broken metrics file .*run `dvc repro`"),
        (["fetch", "no_such_source"], r"unknown embedded source\(s\) \['no_such_source'\]"),
        (["data", "--dvc-file", "missing.dvc"], r"missing.dvc: not found"),
    ]
    for argv, message in cases:
        code, err = _cli(tmp_path, monkeypatch, capsys, *argv)
        assert code == 2, argv
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert re.search(message, err), (argv, err)
    assert not (tmp_path / ".cache").exists()  # nothing was downloaded before the check


def test_stages_without_their_inputs_and_bad_predict_arguments_are_one_line(tmp_path, monkeypatch, capsys):
    """`synthdet stage split|train|evaluate` before the stages that write their inputs, and
    `predict` with a batch size of 0, CUDA on a machine without it, a device torch cannot read or
    a folder as the output: one line naming the file or argument and what to do, exit 2, nothing
    written (were 16-34-line tracebacks)."""
    (tmp_path / "params.yaml").write_text((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    detector = _detector_file(tmp_path / "detector.pt")
    noise_image(0, (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "a_folder").mkdir()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    predict = ["predict", "a.png", "--detector", str(detector)]
    cases = [
        (["stage", "split"], r"stage split: artifacts/download/manifest.parquet: manifest not found .*dvc repro split"),
        (["stage", "train"], r"stage train: artifacts/split/splits.parquet: manifest not found"),
        (["stage", "evaluate"], r"stage evaluate: artifacts/degrade/degraded.parquet: not found; `dvc repro evaluate`"),
        ([*predict, "--batch-size", "0"], r"--batch-size 0: give a whole number of at least 1"),
        ([*predict, "--device", "cuda"], r"--device 'cuda': torch sees no CUDA GPU on this machine"),
        ([*predict, "--device", "gpu0"], r"--device 'gpu0': not a device name"),
        ([*predict, "--out", "a_folder"], r"--out a_folder: a folder; give the CSV file to write"),
    ]
    for argv, message in cases:
        code, err = _cli(tmp_path, monkeypatch, capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert re.search(message, err), (argv, err)
    assert not (tmp_path / "predictions.csv").exists() and not list((tmp_path / "a_folder").iterdir())


@pytest.mark.parametrize(("edit", "says"), [
    (lambda df: df.assign(label=df["label"].where(df.index != 3, 2)), r"1 rows with a label other than 0 .*e\.g\. 2 "),
    (lambda df: df.assign(label=df["label"].astype(float).where(df.index != 0)), r"1 rows with .*e\.g\. nan for"),
    (lambda df: pd.concat([df, df.iloc[[5]]]), r"1 images listed more than once in one subset and split"),
])
def test_a_hand_edited_manifest_is_refused_before_the_split(tmp_path, monkeypatch, capsys, edit, says):
    """A manifest with a label 2, a NaN label or a row twice stops the split stage with one line
    naming the file, what is wrong and how to rebuild it (it used to split and train)."""
    from synthdet.data.manifest import COLUMNS

    (tmp_path / "params.yaml").write_text((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    rows = pd.DataFrame({c: [None] * 8 for c in COLUMNS}).assign(
        path=[f"/data/{i}.png" for i in range(8)], label=[0, 1] * 4, subset="ldm", split="train", status="ok")
    (tmp_path / "artifacts/download").mkdir(parents=True)
    edit(rows).to_parquet(tmp_path / "artifacts/download/manifest.parquet")
    code, err = _cli(tmp_path, monkeypatch, capsys, "stage", "split")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(r"artifacts/download/manifest.parquet: broken manifest: " + says, err), err
    assert "dvc repro -f" in err and not (tmp_path / "artifacts/split").exists()


def test_dvc_outside_the_venv_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(cli.UserError, match="dvc not found .*make setup"):
        cli.dvc_executable()


def test_generated_array_is_not_an_image_but_a_clear_error(tmp_path):
    """A non-image with an image suffix, a zero-byte file: named, never a raw error."""
    (tmp_path / "fake.png").write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert describe_file(tmp_path / "fake.png")["status"] == "not_image"
    assert describe_file(tmp_path / "empty.jpg")["status"] == "empty"
    with pytest.raises(ImageDecodeError, match="fake.png: not an image"):
        load_rgb(tmp_path / "fake.png")


def test_stored_entries_that_lie_about_their_size(tmp_path):
    z = _zip_with(tmp_path / "s.zip", {"imagenet_glide/s.bin": b"A" * 1000}, method=zipfile.ZIP_STORED)
    _declare_size(z, 10)
    with SplitZip([z]) as archive, pytest.raises(DataSourceError, match="compressed size 1000 != size 10"):
        extract(archive, tmp_path / "out")


def test_atomic_writes_give_files_the_mode_the_umask_gives(tmp_path):
    """Every derived file is written through a temporary file (mkstemp: mode 0600); the result must
    have the mode an ordinary write gives under the user's umask (0644 under 022), not 0600."""
    import os
    import stat

    from synthdet.fsutil import atomic_write_bytes
    from synthdet.training import checkpoint

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        checkpoint.save({"model": {}}, tmp_path / "b.pt")
        (tmp_path / "plain.bin").write_bytes(b"x")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "private.bin", b"x")
    finally:
        os.umask(old)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert mode == {"a.bin": 0o644, "b.pt": 0o644, "plain.bin": 0o644, "private.bin": 0o600}


@pytest.mark.parametrize(("key", "value", "says"), [
    ("epochs", "five", r"train.epochs 'five': expected a whole number of at least 1"),
    ("epochs", -1, r"train.epochs -1: expected a whole number of at least 1"),
    ("batch_size", 0, r"train.batch_size 0: expected a whole number of at least 1"),
    ("lr", "fast", r"train.lr 'fast': expected a number, 0 or more"),
    ("input_size", 0, r"train.input_size 0: expected a whole number of at least 8"),
    ("amp", "no", r"train.amp 'no': expected true or false"),
    ("num_workers", -2, r"train.num_workers -2: expected auto or a whole number"),
    ("epoch", 3, r"train: unknown key 'epoch'"),
])
def test_bad_train_settings_are_refused_before_a_stage_reads_an_image(tmp_path, monkeypatch, capsys, key, value, says):
    """Every stage that trains builds its config from the checked settings: a wrong type or range
    stops it at once with the key and what it expects (``amp: "no"`` is not taken as true), and
    ``synthdet stage`` says so in one line, exit 2."""
    from synthdet.stages import audit as audit_stage
    from synthdet.stages import imaginet_runs, runs, train

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["train"][key] = value
    builds = [lambda: train.Config.from_params(params), lambda: audit_stage.Config.from_params(params),
              lambda: runs.Config.from_params(params, "xgen", model="resnet50", subset="ldm", seed=0)]
    if key != "epochs":  # ImagiNet's leave-one-out runs take theirs from imaginet.loco.epochs
        builds.append(lambda: imaginet_runs.LocoConfig.from_params(params, "faces"))
    else:
        loco = {**params, "train": {**params["train"], key: 4}, "imaginet": {**params["imaginet"], "loco": {
            **params["imaginet"]["loco"], "epochs": value}}}
        builds.append(lambda: imaginet_runs.LocoConfig.from_params(loco, "faces"))
    for build in builds:
        with pytest.raises(ValueError, match=says):
            build()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code, err = _cli(tmp_path, monkeypatch, capsys, "stage", "train", "--params", "params.yaml")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and re.search(says, err), err


def _detector_file(path: Path, **changes) -> Path:
    """A detector.pt in the one format (a small ResNet-18 at 32 px), with ``changes`` to its keys
    (``config_<key>`` changes a key of its configuration)."""
    from synthdet.detectors import create_detector
    from synthdet.training.checkpoint import FORMAT

    config = {"model": "resnet18", "input_size": 32}
    ckpt = {"format": FORMAT, "model": create_detector("resnet18", img_size=32).state_dict(), "config": config,
            "temperature": 1.0}
    for key, value in changes.items():
        if key.startswith("config_"):
            config[key[len("config_"):]] = value
        else:
            ckpt[key] = value
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(("changes", "says"), [
    ({"model": "resnet50 weights"}, r"its weights do not fit resnet18 \(Error\(s\) in loading state_dict"),
    ({"model": {}}, r"its weights are not a non-empty mapping of tensors"),
    ({"config_model": "no_such_network"}, r"its network 'no_such_network' cannot be built here"),
    ({"config": "resnet18"}, r"not a synthdet detector"),
    ({"config_input_size": -5}, r"input size -5 is not a whole number of 8-8192 pixels"),
    ({"temperature": 0.0}, r"calibration temperature 0.0 is not a positive number"),
])
def test_a_broken_detector_is_one_clear_error_in_predict(tmp_path, monkeypatch, capsys, changes, says):
    """Wrong shapes, no weights, an unknown network, a configuration that is no mapping, a negative
    input size, a temperature of 0 (which would call every image fake): `synthdet predict` names
    the file and the problem in one line, exit 2, and writes no CSV."""
    from synthdet.detectors import create_detector

    if changes.get("model") == "resnet50 weights":
        changes = {"model": create_detector("resnet50", img_size=32).state_dict()}
    _detector_file(tmp_path / "detector.pt", **changes)
    noise_image(0, (32, 32)).save(tmp_path / "x.png")
    code, err = _cli(tmp_path, monkeypatch, capsys, "predict", "x.png", "--detector", "detector.pt")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "detector.pt: " in err and re.search(says, err), err
    assert not (tmp_path / "predictions.csv").exists()
    load_detector(_detector_file(tmp_path / "fine.pt"))  # the unchanged file loads


def test_a_broken_resume_checkpoint_of_this_run_is_one_clear_error(tmp_path, monkeypatch):
    """last.pt as a list, without its optimiser, at an epoch past the run's last, or with weights of
    another shape (its fingerprint still this run's): each a CheckpointError naming the file and
    how to start afresh, never a crash mid-way or a resume "at epoch 1000000000"."""
    from synthdet.detectors import create_detector

    img = tmp_path / "x.png"
    noise_image(0, (32, 32)).save(img)
    rows = pd.DataFrame({"path": [str(img)] * 4, "label": [0, 1, 0, 1], "sha256": ["a"] * 4})
    cfg = TrainConfig(model="resnet18", input_size=32, epochs=2, batch_size=2, num_workers=0, resume_every_s=0)
    run = tmp_path / "run"
    save = checkpoint.save

    def save_then_stop(obj, path):  # a run stopped after epoch 1: its last.pt is what a resume reads
        save(obj, path)
        if path.name == "last.pt":
            raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(checkpoint, "save", save_then_stop)
        train_detector(rows, rows.iloc[:0], cfg, run, release=False)
    last = run / "checkpoints/last.pt"
    good = torch.load(last, weights_only=True)
    assert good["epoch"] == 1
    cases = [([good], r"a list, not a resume checkpoint"),
             ({k: v for k, v in good.items() if k != "optimizer"}, r"not a resume checkpoint \(no optimizer\)"),
             ({**good, "epoch": 10**9}, r"epoch 1000000000 is not one of this run's 0-2"),
             ({**good, "model": create_detector("resnet50", img_size=32).state_dict()},
              r"does not fit this run's network or optimiser")]
    for broken, says in cases:
        for finished in (run / "detector.pt", run / "checkpoints/detector.pt"):
            finished.unlink(missing_ok=True)  # else the finished run is taken and last.pt never read
        torch.save(broken, last)
        with pytest.raises(CheckpointError, match=f"last.pt: .*{says}.*Delete it to train this run from the start"):
            train_detector(rows, rows.iloc[:0], cfg, run, release=False)
