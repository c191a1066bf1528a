"""GenImage as distributed: split zips made with `zip -s`, in a fabricated miniature."""

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthdet.fsutil import DataSourceError, file_digest
from synthdet.genimage import archives as genimage
from synthdet.genimage import layout
from synthdet.genimage.archives import ingest, load_checksums
from synthdet.genimage.splitzip import SplitZip, extract
from synthdet.stages.download import download_genimage
from tests.conftest import make_genimage_tree

needs_zip = pytest.mark.skipif(shutil.which("zip") is None, reason="needs Info-ZIP `zip` (apt-get install zip)")
SUBSET = "imagenet_glide"
LISTED = "imagenet_glide/train/ai/GLIDE_1000_200_08_808_glide_00033.png"  # in corrupted_files/


def _archives(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    tree = make_genimage_tree(tmp_path / "tree", subsets=(SUBSET,), per_folder=3)
    big = np.random.default_rng(0).integers(0, 256, (220, 220, 3), dtype=np.uint8)
    Image.fromarray(big).save(tree / SUBSET / "train/ai/big_noise.png")  # > 64 KiB: spans disks
    Image.fromarray(big[:32, :32]).save(tree / LISTED)
    (tree / SUBSET / "train/ai/empty.png").write_bytes(b"")  # ADM ships zero-byte PNGs
    jpg = next((tree / SUBSET / "val/nature").glob("*.JPEG"))
    jpg.write_bytes(jpg.read_bytes()[:200])  # truncated
    src = tmp_path / "downloads"
    src.mkdir()
    subprocess.run(["zip", "-q", "-r", "-s", "64k", str(src / f"{SUBSET}.zip"), SUBSET], cwd=tree, check=True)
    parts = sorted(src.iterdir())
    assert len(parts) >= 3, "the fixture must produce a real multi-part archive"
    checksums = {p.name: file_digest(p, "md5") for p in parts}
    parts[0].rename(src / parts[0].name.replace(".z01", "-001.z01"))  # Google Drive's renaming
    return tree, src, checksums


@needs_zip
def test_split_zip_is_verified_extracted_and_indexed(tmp_path):
    tree, src, checksums = _archives(tmp_path)
    out = tmp_path / "extracted"
    report = ingest(src, out, [SUBSET], checksums)
    originals = sorted(p.relative_to(tree) for p in tree.rglob("*") if p.is_file())
    extracted = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert extracted == originals and report[SUBSET]["extracted"] == len(originals)
    for rel in originals:
        assert (out / rel).read_bytes() == (tree / rel).read_bytes(), rel
    # a second run resumes: nothing is extracted twice
    assert ingest(src, out, [SUBSET], checksums)[SUBSET] == {"extracted": 0, "skipped": len(originals)}


@needs_zip
def test_interrupted_extraction_resumes_and_never_keeps_half_files(tmp_path):
    tree, src, checksums = _archives(tmp_path)
    out = tmp_path / "extracted"
    ingest(src, out, [SUBSET], checksums)
    victim = out / SUBSET / "train/ai/big_noise.png"
    victim.write_bytes(victim.read_bytes()[:1000])  # as if the run died mid-file
    (victim.parent / ".stale.png.part").write_bytes(b"junk")
    assert ingest(src, out, [SUBSET], checksums)[SUBSET]["extracted"] == 1
    assert victim.read_bytes() == (tree / SUBSET / "train/ai/big_noise.png").read_bytes()


@needs_zip
def test_bad_parts_are_named(tmp_path):
    _, src, checksums = _archives(tmp_path)
    wrong = dict(checksums, **{f"{SUBSET}.zip": "0" * 32})
    with pytest.raises(DataSourceError, match=rf"{SUBSET}.zip: md5 .* expected 0+"):
        ingest(src, tmp_path / "o1", [SUBSET], wrong)
    next(src.glob("*.z02")).unlink()
    with pytest.raises(DataSourceError, match=r"missing 1 of .* parts: \['imagenet_glide.z02'\]"):
        ingest(src, tmp_path / "o2", [SUBSET], checksums)
    with pytest.raises(DataSourceError, match="no archive parts for imagenet_midjourney"):
        ingest(src, tmp_path / "o3", ["imagenet_midjourney"], checksums)


@needs_zip
def test_download_stage_marks_corrupt_and_known_bad_images(tmp_path):
    _, src, checksums = _archives(tmp_path)
    df = download_genimage(src, tmp_path / "out", [SUBSET], checksums=checksums).set_index("path")
    status = df["status"].rename(lambda p: Path(p).name)
    assert status["empty.png"] == "empty"
    assert status[Path(LISTED).name] == "known_corrupt"
    assert (status == "corrupt").sum() == 1  # the truncated JPEG
    assert set(df.loc[df.label == 1, "generator"]) == {"GLIDE"}


def test_path_traversal_in_an_archive_is_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("imagenet_glide/train/ai/ok.png", b"fine")
        zf.writestr("../../outside.png", b"evil")
    with SplitZip([evil]) as archive, pytest.raises(DataSourceError, match=r"evil.zip: entry: .*'\.\.' leaves"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "outside.png").exists()
    assert not (tmp_path / "out").exists()  # names are checked before anything is written


def _tampered_zip(path: Path, compression: int, tamper) -> Path:  # noqa: ANN001
    """A one-entry archive (5,000 bytes of ``A``) whose bytes ``tamper`` edits in place."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("imagenet_glide/a.bin", b"A" * 5000)
    data = bytearray(path.read_bytes())
    tamper(data)
    path.write_bytes(bytes(data))
    return path


def _assert_refused(path: Path, out: Path, match: str) -> None:
    """Extraction fails with ``match`` and leaves no member behind."""
    with SplitZip([path]) as archive, pytest.raises(DataSourceError, match=match):
        extract(archive, out)
    assert not list(out.rglob("*.bin"))


def test_corrupt_archive_data_is_detected(tmp_path):
    def flip(data: bytearray) -> None:
        data[100] ^= 0xFF  # flip a byte inside the stored data

    _assert_refused(_tampered_zip(tmp_path / "one.zip", zipfile.ZIP_STORED, flip), tmp_path / "out", "CRC mismatch")


def test_an_archive_given_the_wrong_number_of_parts_is_refused(tmp_path):
    path = tmp_path / "one.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("imagenet_glide/a.bin", b"A" * 5000)
    stray = tmp_path / "one.z01"
    stray.write_bytes(b"not a part of this archive" * 100)
    with pytest.raises(DataSourceError, match="one.zip: the archive has 1 disks but 2 parts were given"):
        SplitZip([stray, path])  # one part too many: its disk numbers would read the stray file


def test_encrypted_entries_are_refused(tmp_path):
    def lock(data: bytearray) -> None:
        for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
            data[data.find(signature) + flags_at] |= 0x1  # bit 0: encrypted (the data itself is left readable)

    _assert_refused(_tampered_zip(tmp_path / "locked.zip", zipfile.ZIP_STORED, lock), tmp_path / "out",
                    "encrypted entries are not supported")


def test_an_entry_shorter_than_its_directory_declares_is_refused(tmp_path):
    import struct

    def lie(data: bytearray) -> None:
        for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size, both headers
            i = data.find(signature) + size_at
            data[i:i + 4] = struct.pack("<I", 5010)  # the data (and its CRC) intact: only the size lies

    _assert_refused(_tampered_zip(tmp_path / "short.zip", zipfile.ZIP_DEFLATED, lie), tmp_path / "out",
                    "5,000 bytes, the directory declares 5,010")


def test_a_kept_file_changed_in_place_is_extracted_again(tmp_path):
    """A file of the right size is kept on resume only when the extraction log holds its size, mtime
    and CRC, or its own CRC matches the entry: one edited in place (same size) is extracted again."""
    path = tmp_path / "one.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("imagenet_glide/a.bin", b"A" * 5000)
        zf.writestr("imagenet_glide/b.bin", b"B" * 5000)
    out = tmp_path / "out"
    with SplitZip([path]) as archive:
        assert extract(archive, out) == {"extracted": 2, "skipped": 0}
    edited = out / "imagenet_glide/a.bin"
    edited.write_bytes(b"X" + b"A" * 4999)  # same size, new mtime: the log no longer vouches for it
    with SplitZip([path]) as archive:
        assert extract(archive, out) == {"extracted": 1, "skipped": 1}
    assert edited.read_bytes() == b"A" * 5000


def test_shipped_reference_lists():
    checksums = load_checksums()
    assert len(checksums) == 207  # 208 rows, sdv5.z26 listed twice with the same MD5
    assert {n.split(".")[0] for n in checksums} == set(layout.SUBSETS)
    assert len(layout.known_corrupt("imagenet_ai_0424_sdv5")) == 3648
    assert "imagenet_ai_0508_adm/train/ai/115_adm_141.PNG" in layout.known_corrupt("imagenet_ai_0508_adm")


@needs_zip
def test_zip64_split_archives_extract_byte_exact(tmp_path):
    """GenImage's real parts are zip64 (over 65,535 entries, parts over 4 GiB): `zip -fz` writes
    the same records (0xFFFFFFFF sizes with zip64 extra fields, zip64 end-of-directory and its
    locator) on a small tree, split across disks, through the real ingest path."""
    tree = make_genimage_tree(tmp_path / "tree", subsets=(SUBSET,), per_folder=3)
    big = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(big).save(tree / SUBSET / "train/ai/big_noise.png")  # spans disks
    src = tmp_path / "downloads"
    src.mkdir()
    subprocess.run(["zip", "-q", "-r", "-fz", "-s", "64k", str(src / f"{SUBSET}.zip"), SUBSET], cwd=tree, check=True)
    last = (src / f"{SUBSET}.zip").read_bytes()
    assert b"PK\x06\x06" in last and b"PK\x06\x07" in last  # zip64 end record and locator
    with SplitZip(sorted(src.iterdir(), key=lambda p: (p.suffix == ".zip", p.name))) as archive:
        sizes = {e.name: e.file_size for e in archive.entries}  # read from the zip64 extra fields
    assert sizes[f"{SUBSET}/train/ai/big_noise.png"] == (tree / SUBSET / "train/ai/big_noise.png").stat().st_size
    checksums = {p.name: file_digest(p, "md5") for p in src.iterdir()}
    out = tmp_path / "extracted"
    ingest(src, out, [SUBSET], checksums)
    originals = sorted(p.relative_to(tree) for p in tree.rglob("*") if p.is_file())
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")) \
        == originals
    for rel in originals:
        assert (out / rel).read_bytes() == (tree / rel).read_bytes(), rel


def test_md5_cache_trusts_size_and_mtime_and_rehashes_when_either_changes(tmp_path, monkeypatch):
    part = tmp_path / "imagenet_glide.zip"
    part.write_bytes(b"x" * 1000)
    checksums = {part.name: file_digest(part, "md5")}
    parts = [genimage.Part(part, part.name, 1 << 30)]
    calls = []
    monkeypatch.setattr(genimage, "file_digest", lambda p, algorithm: calls.append(p) or file_digest(p, algorithm))
    cache = tmp_path / "out/.md5_cache.json"
    genimage.verify_parts(parts, checksums, cache)
    genimage.verify_parts(parts, checksums, cache)
    assert len(calls) == 1  # the second run trusts the cache
    stat = part.stat()
    part.write_bytes(b"y" * 1000)  # same size, other bytes, mtime restored: trusted (the documented trade-off)
    os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    genimage.verify_parts(parts, checksums, cache)
    assert len(calls) == 1
    os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: hashed again, and caught
    with pytest.raises(DataSourceError, match="md5 .* expected"):
        genimage.verify_parts(parts, checksums, cache)
    assert len(calls) == 2


def test_already_extracted_subsets_are_used_where_they_are(tmp_path):
    root = make_genimage_tree(tmp_path / "gi", subsets=("imagenet_glide",))
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    manifest = download_genimage(root, tmp_path / "out", ["imagenet_glide"], extract_to=tmp_path / "extracted")
    assert manifest["path"].map(lambda p: Path(p).is_relative_to(root / "imagenet_glide")).all()
    assert not (tmp_path / "extracted").exists()  # nothing copied or extracted
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    report = (tmp_path / "out/ingest_report.json").read_text()
    assert "already_extracted" in report
