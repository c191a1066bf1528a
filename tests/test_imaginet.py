"""ImagiNet's annotation format and perturbed test set, on a fabricated miniature."""

import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from synthdet.fsutil import DataSourceError
from synthdet.imaginet import sevenzip
from synthdet.imaginet.dataset import build_perturbed, perturb, read_annotations, source_fingerprint
from synthdet.stages.download import download_imaginet
from tests.conftest import SEVEN_ZIP, add_ready_testset, noise_image, pack_7z


def make_imaginet(root, n=8):
    """Real ImageNet JPEGs and StyleGAN-XL faces, with train/test/calibration annotation files."""
    lines = []
    rng = np.random.default_rng(0)
    for i in range(n):
        rel = f"./imagenet/ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_{i:08d}.JPEG"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        noise_image(i, (int(rng.integers(300, 500)), int(rng.integers(300, 500)))).save(root / rel, quality=90)
        lines.append(f"{rel},0,0,4,8")
        fake = f"./ffhq_stylegan/{uuid.UUID(int=i)}.png"
        (root / fake).parent.mkdir(parents=True, exist_ok=True)
        noise_image(100 + i, (512, 512)).save(root / fake)
        lines.append(f"{fake},1,2,0,1")
    (root / "annotations").mkdir()
    (root / "annotations/train_annotations.txt").write_text("\n".join(lines[: n]) + "\n")
    (root / "annotations/test_annotations.txt").write_text("path,origin,content,family,specific\n"
                                                          + "\n".join(lines[n:]) + "\n")
    (root / "annotations/calibration_annotations.txt").write_text("\n".join(lines[:2]) + "\n")
    return root


def test_annotations_are_parsed_and_validated(tmp_path):
    root = make_imaginet(tmp_path)
    ann = read_annotations(root / "annotations/test_annotations.txt")
    assert len(ann) == 8 and set(ann.generator) == {"real", "stylegan_xl"}
    assert set(ann[ann.label == 1].content) == {"faces"} and ann.relpath.iloc[0].startswith(("imagenet", "ffhq"))
    bad = tmp_path / "bad.txt"
    bad.write_text("./a.png,1,2,0,1\n./b.png,0,0,1,8\n./c.png,1,9,0,1\nnot a line\n")
    with pytest.raises(DataSourceError, match=r"3 bad annotation lines, first: .*bad.txt:2: invalid origin"):
        read_annotations(bad)


def test_perturbation_follows_the_paper_and_is_seeded():
    img = noise_image(0, (640, 480))
    sides, codecs = [], []
    for k in range(200):
        out, info = perturb(img, np.random.default_rng(k))
        assert out.size == (256, 256) and out.mode == "RGB"
        assert 256 <= info["crop_side"] <= 480
        assert info["quality"] is None or 60 <= info["quality"] <= 100
        sides.append(info["crop_side"])
        codecs.append(info["codec"])
    share = np.mean([c != "none" for c in codecs])
    assert 0.65 < share < 0.85 and {"jpeg", "webp", "none"} == set(codecs)
    a, _ = perturb(img, np.random.default_rng(7))
    b, _ = perturb(img, np.random.default_rng(7))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    # smaller than the 256 px crop: padded with black (not upscaled), then cropped at 256
    small, info = perturb(noise_image(1, (200, 300)), np.random.default_rng(0), p_compress=0.0)
    assert small.size == (256, 256) and info["crop_side"] == 256 and info["padded"]
    pixels = np.asarray(small)
    assert (pixels.reshape(-1, 3) == 0).all(axis=1).mean() >= (256 - 200) / 256 - 0.01  # the padding
    assert not perturb(img, np.random.default_rng(0))[1]["padded"]


def test_perturbed_test_set_and_manifest(tmp_path):
    root = make_imaginet(tmp_path / "imaginet")
    ann = read_annotations(root / "annotations/test_annotations.txt")
    (root / ann[ann.label == 1].relpath.iloc[0]).write_bytes(b"")  # a zero-byte test image
    first = build_perturbed(ann, root, tmp_path / "p1", seed=0)  # 8 images: in this process
    second = build_perturbed(ann, root, tmp_path / "p2", seed=0, processes=2)  # two worker processes
    same = [c for c in first.columns if c != "path"]  # the same rows, images and log either way
    pd.testing.assert_frame_equal(first[same], second[same])
    assert (tmp_path / "p1/perturb_log.jsonl").read_text() == (tmp_path / "p2/perturb_log.jsonl").read_text(
        ).replace(str(tmp_path / "p2"), str(tmp_path / "p1"))
    ok = first[first.status == "ok"]
    assert len(ok) == 7 and (first.status == "empty").sum() == 1
    for p1, p2 in zip(ok.path, second[second.status == "ok"].path, strict=True):
        assert open(p1, "rb").read() == open(p2, "rb").read()
        assert Image.open(p1).format == "PNG" and Image.open(p1).size == (256, 256)
    lines = (tmp_path / "p1/test_perturbed.txt").read_text().splitlines()
    assert len(lines) == 7 and all(line.count(",") == 4 and ".png," in line for line in lines)

    cfg = {"train": "annotations/train_annotations.txt", "test": "annotations/test_annotations.txt",
           "calibration": "annotations/calibration_annotations.txt"}
    manifest, report = download_imaginet(root, tmp_path / "out", cfg, {"enabled": True}, seed=0, max_missing=0.2)
    assert set(manifest.split) == {"train", "test", "calibration"}
    test = manifest[manifest.split == "test"]
    assert (test[test.status == "ok"].width == 256).all() and (test.status != "ok").sum() == 1
    assert set(manifest.subset) == {"photos", "faces"}
    assert report["perturbed_now"] == 8 and str(root / "perturbed_synthdet") in report["test_set"]
    # the default threshold (1%): one unreadable test image of eight stops the run, naming it
    with pytest.raises(DataSourceError, match=r"1 of the 8 images of the test split are missing or unreadable"):
        download_imaginet(root, tmp_path / "out", cfg, {"enabled": True}, seed=0)


def test_perturbation_resumes_and_redoes_only_what_changed(tmp_path):
    root = make_imaginet(tmp_path / "imaginet")
    ann = read_annotations(root / "annotations/test_annotations.txt")
    first = build_perturbed(ann, root, tmp_path / "p", seed=0)
    assert first.attrs["perturbed_now"] == 8
    before = {p: open(p, "rb").read() for p in first.path}
    again = build_perturbed(ann, root, tmp_path / "p", seed=0)
    assert again.attrs["perturbed_now"] == 0 and again.path.tolist() == first.path.tolist()
    noise_image(999, (400, 400)).save(root / ann.relpath.iloc[0], quality=80)  # one source replaced
    with open(tmp_path / "p/perturb_log.jsonl", "a") as log:
        log.write('{"relpath": "torn')  # a kill mid-line
    third = build_perturbed(ann, root, tmp_path / "p", seed=0)
    assert third.attrs["perturbed_now"] == 1
    changed = [p for p in third.path if open(p, "rb").read() != before[p]]
    assert changed == [third.path.iloc[0]]
    other = build_perturbed(ann, root, tmp_path / "p", seed=1)  # other settings: everything again
    assert other.attrs["perturbed_now"] == 8


def test_a_ready_perturbed_test_set_is_never_perturbed_again(tmp_path):
    root = make_imaginet(tmp_path / "imaginet")
    add_ready_testset(root)
    cfg = {"train": "annotations/train_annotations.txt", "test": "annotations/test_all.txt", "calibration": None}
    manifest, report = download_imaginet(root, tmp_path / "out", cfg, {"enabled": "auto"}, seed=0)
    test = manifest[manifest.split == "test"]
    assert len(test) == 8 and (test.format == "WEBP").all() and test.path.str.contains("/testset/").all()
    assert report["test_set"].startswith("used as it is: test_all.txt")
    assert not (root / "perturbed_synthdet").exists()
    with pytest.raises(DataSourceError, match="perturbing it again would crop and compress every image twice"):
        download_imaginet(root, tmp_path / "out", cfg, {"enabled": True}, seed=0)
    with pytest.raises(ValueError, match="perturb.enabled must be true, false or auto, not 'always'"):
        download_imaginet(root, tmp_path / "out", cfg, {"enabled": "always"}, seed=0)
    # our own output, listed again as a test set, is refused the same way
    first = build_perturbed(read_annotations(root / "annotations/test_annotations.txt"), root, root / "mine", seed=0)
    assert first.attrs["perturbed_now"] == 8
    with pytest.raises(DataSourceError, match="a test set this tool already perturbed"):
        download_imaginet(root / "mine", tmp_path / "out", {"test": "test_perturbed.txt"}, {"enabled": True}, seed=0)


def test_missing_images_and_files_stop_before_any_long_work(tmp_path):
    root = make_imaginet(tmp_path / "imaginet")
    cfg = {"train": "annotations/train_annotations.txt", "test": "annotations/test_annotations.txt",
           "calibration": "annotations/calibration.txt"}
    with pytest.raises(DataSourceError, match=r"calibration.txt: annotation file for the calibration split not found"):
        download_imaginet(root, tmp_path / "out", cfg, {"enabled": True}, seed=0)
    assert not (root / "perturbed_synthdet").exists()  # checked before the test set was perturbed
    add_ready_testset(root)
    with pytest.raises(DataSourceError, match=r"test_annotation.txt: annotation file for the test split not found .*"
                                              r"test_all.txt"):
        download_imaginet(root, tmp_path / "out", {"test": "annotations/test_annotation.txt"}, {}, seed=0)
    cfg["calibration"] = None  # left out
    ann = read_annotations(root / "annotations/train_annotations.txt")
    (root / ann.relpath.iloc[0]).unlink()
    with pytest.raises(DataSourceError, match=r"1 of the 8 images of the train split are missing \(12.5%.*e\.g\. "
                                              + ann.relpath.iloc[0]):
        download_imaginet(root, tmp_path / "out", cfg, {"enabled": True}, seed=0)
    assert not (root / "perturbed_synthdet").exists()
    manifest, report = download_imaginet(root, tmp_path / "out", cfg, {"enabled": False}, seed=0, max_missing=0.2)
    assert report["missing"] == {"train": 1, "test": 0} and (manifest.status != "ok").sum() == 1


@pytest.mark.skipif(SEVEN_ZIP is None,
                    reason="the 7-Zip command is not installed (make setup installs Debian's 7zip where it can)")
def test_the_packed_distribution_is_extracted_resumably_and_used_as_it_is(tmp_path):
    packed = tmp_path / "packed"
    make_imaginet(packed)
    add_ready_testset(packed)
    download = tmp_path / "download"
    pack_7z(packed, download)
    parts = sorted(p.name for p in download.iterdir())
    assert parts[:2] == ["imaginet.7z.001", "imaginet.7z.002"]
    fingerprint = source_fingerprint(download, {"test": "annotations/test_all.txt"})
    assert fingerprint["archive"]["files"] == len(parts)
    cfg = {"train": "annotations/train_annotations.txt", "test": "annotations/test_all.txt"}
    manifest, report = download_imaginet(download, tmp_path / "out", cfg, {"enabled": "auto"}, seed=0)
    assert set(manifest.split) == {"train", "test"} and (manifest.status == "ok").all()
    assert manifest.path.str.startswith(str(download / "extracted")).all()
    assert report["test_set"].startswith("used as it is")
    one = download / "extracted/annotations/test_all.txt"
    one.write_text("truncated")  # a damaged file is extracted again; the others are kept
    files = sum(1 for p in packed.rglob("*") if p.is_file())
    assert sevenzip.extract(download / "imaginet.7z.001", download / "extracted") == {"extracted": 1, "kept": files - 1}
    assert one.read_text() == (packed / "annotations/test_all.txt").read_text()
    (download / "imaginet.7z.002").write_bytes(b"")  # a part lost: a clear error naming the archive
    shutil.rmtree(download / "extracted")
    with pytest.raises(DataSourceError, match=r"imaginet.7z.001: 7-Zip could not"):
        download_imaginet(download, tmp_path / "out", cfg, {"enabled": "auto"}, seed=0)


@pytest.mark.skipif(SEVEN_ZIP is None,
                    reason="the 7-Zip command is not installed (make setup installs Debian's 7zip where it can)")
def test_a_member_leaving_the_folder_is_refused_before_anything_is_written(tmp_path):
    """A real archive whose member is stored as ``../../evil.txt`` (7-Zip's -spf keeps the path as
    given): refused by name before a byte is extracted, here or above the folder."""
    import subprocess

    inner = tmp_path / "make/a/b"
    inner.mkdir(parents=True)
    (inner / "ok.txt").write_text("ok")
    (tmp_path / "make/evil.txt").write_text("evil")
    archive = tmp_path / "hostile.7z"
    subprocess.run([SEVEN_ZIP, "a", "-spf", "-bso0", "-bd", str(archive), "ok.txt", "../../evil.txt"], cwd=inner,
                   check=True)
    assert "../../evil.txt" in {e.name for e in sevenzip.list_entries(archive)}
    out = tmp_path / "deep/er/out"
    with pytest.raises(DataSourceError, match=r"evil.txt"):
        sevenzip.extract(archive, out)
    assert not out.exists() and not (tmp_path / "deep/evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def _placed(out):
    """The members in place (not the staging folder's)."""
    return [p for p in out.rglob("*.bin") if sevenzip.STAGING not in p.relative_to(out).parts]


def _members(folder, n: int = 12, size: int = 20_000) -> dict[str, bytes]:
    """``n`` files of random bytes, each starting with a marker of its own (to find it in a stored archive)."""
    rng = np.random.default_rng(0)
    files = {f"images/f{i:02d}.bin": bytes([65 + i]) * 16 + rng.bytes(size) for i in range(n)}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


@pytest.mark.skipif(SEVEN_ZIP is None,
                    reason="the 7-Zip command is not installed (make setup installs Debian's 7zip where it can)")
def test_an_interrupted_7z_extraction_keeps_every_member_7zip_finished_and_checks_none_twice(tmp_path, monkeypatch):
    import os

    files = _members(tmp_path / "packed")
    first = pack_7z(tmp_path / "packed", tmp_path / "download", volume="60k")  # a solid archive in 5 parts
    out = tmp_path / "extracted"
    replace, placed = os.replace, []

    def replace_then_stop(src, dst):  # killed (Ctrl-C) right after the fifth member is in place
        replace(src, dst)
        if not os.path.basename(dst).startswith("."):  # not the log's own atomic write
            placed.append(dst)
            if len(placed) == 5:
                raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace_then_stop)
        with pytest.raises(KeyboardInterrupt):
            sevenzip.extract(first, out)
    kept = sorted(p.relative_to(out).as_posix() for p in _placed(out))
    assert len(kept) == 5 and all((out / k).read_bytes() == files[k] for k in kept)
    digests = []
    digest = sevenzip.file_digest
    monkeypatch.setattr(sevenzip, "file_digest", lambda *a, **k: digests.append(a) or digest(*a, **k))
    assert sevenzip.extract(first, out) == {"extracted": len(files) - 5, "kept": 5}
    # the extracted ones passed 7-Zip's CRC-32 check and the logged ones are trusted: only the one
    # moved into place at the moment of the kill, before the log had it, is checked (and kept)
    assert [Path(a[0]).name for a in digests] == [Path(placed[-1]).name]
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in _placed(out)} == files
    assert not (out / sevenzip.STAGING).exists()


@pytest.mark.skipif(SEVEN_ZIP is None,
                    reason="the 7-Zip command is not installed (make setup installs Debian's 7zip where it can)")
def test_a_member_failing_its_crc_is_named_and_the_members_7zip_finished_are_kept(tmp_path):
    import subprocess

    files = _members(tmp_path / "packed", n=6)
    archive = tmp_path / "stored.7z"
    subprocess.run([SEVEN_ZIP, "a", "-mx0", "-bso0", "-bd", str(archive), "images"], cwd=tmp_path / "packed",
                   check=True)
    data = bytearray(archive.read_bytes())
    data[data.find(bytes([67]) * 16) + 100] ^= 0xFF  # one byte of f02.bin's data, stored as it is
    archive.write_bytes(bytes(data))
    out = tmp_path / "extracted"
    with pytest.raises(DataSourceError, match=r"stored.7z: 7-Zip could not extract it .*CRC Failed"):
        sevenzip.extract(archive, out)
    placed = {p.relative_to(out).as_posix(): p.read_bytes() for p in _placed(out)}
    assert "images/f02.bin" not in placed and len(placed) >= 4
    assert all(files[name] == data for name, data in placed.items())
