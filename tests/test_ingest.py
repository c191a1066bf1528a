"""Incremental ingest: the source fingerprint and the per-file index cache."""

import logging
import os
from pathlib import Path

import pandas as pd
import pytest

from synthdet.data.indexcache import IndexCache
from synthdet.data.manifest import describe_files
from synthdet.genimage import archives as genimage
from synthdet.genimage.layout import index_genimage_tree
from synthdet.imaginet import dataset as imaginet
from tests.conftest import make_genimage_tree, make_imaginet_dataset, noise_image

SUBSETS = ("imagenet_ai_0419_sdv4", "imagenet_glide")


def _rewrite(path: Path, seed: int) -> None:
    """New content (other pixels) at the same path, size possibly equal."""
    noise_image(seed, (64, 64)).save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")


def test_a_rerun_decodes_only_the_files_that_changed(tmp_path, monkeypatch):
    tree = make_genimage_tree(tmp_path / "tree", subsets=SUBSETS, per_folder=6)
    decoded: list[str] = []
    from synthdet.data import manifest

    real_describe = manifest.describe_file
    monkeypatch.setattr(manifest, "describe_file", lambda p: decoded.append(Path(p).name) or real_describe(p))

    first = index_genimage_tree(tree, cache=IndexCache(tmp_path / "cache"))
    assert len(decoded) == len(first) == 2 * 2 * 2 * 6
    cache = IndexCache(tmp_path / "cache")
    decoded.clear()
    again = index_genimage_tree(tree, cache=cache)
    assert decoded == [] and cache.stats() == {"cached": len(first), "decoded": 0}
    pd.testing.assert_frame_equal(again, first)
    cache.save()

    changed = sorted((tree / SUBSETS[0] / "train/ai").iterdir())[0]
    _rewrite(changed, 999)
    deleted = sorted((tree / SUBSETS[1] / "val/nature").iterdir())[0]
    deleted.unlink()
    touched = sorted((tree / SUBSETS[1] / "val/ai").iterdir())[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))  # same bytes
    decoded.clear()
    cache = IndexCache(tmp_path / "cache")
    third = index_genimage_tree(tree, cache=cache)
    assert sorted(decoded) == sorted([changed.name, touched.name])
    assert len(third) == len(first) - 1 and deleted.as_posix() not in set(third["path"])
    fresh = index_genimage_tree(tree)  # no cache: what a full decode says
    pd.testing.assert_frame_equal(third, fresh)
    assert third.loc[third["path"] == changed.as_posix(), "sha256"].item() != \
        first.loc[first["path"] == changed.as_posix(), "sha256"].item()
    cache.save()
    assert len(pd.read_parquet(tmp_path / "cache/index.parquet")) == len(third)  # the deleted file is gone


def test_an_interrupted_index_resumes_from_its_flushed_chunks(tmp_path):
    tree = make_genimage_tree(tmp_path / "tree", subsets=SUBSETS[:1], per_folder=5)
    paths = sorted(p for p in tree.rglob("*") if p.is_file())
    cache = IndexCache(tmp_path / "cache", flush_every=4)
    describe_files(paths[:9], cache=cache)  # then the process dies: save() never runs
    assert len(list((tmp_path / "cache").glob("part-*.parquet"))) >= 2
    resumed = IndexCache(tmp_path / "cache")
    rows = describe_files(paths, cache=resumed)
    assert resumed.stats() == {"cached": 9, "decoded": len(paths) - 9}
    assert rows == describe_files(paths)


def test_a_broken_cache_is_named_and_rebuilt(tmp_path, caplog):
    tree = make_genimage_tree(tmp_path / "tree", subsets=SUBSETS[:1], per_folder=2)
    cache_dir = tmp_path / "cache"
    cache = IndexCache(cache_dir)
    index_genimage_tree(tree, cache=cache)
    cache.save()
    (cache_dir / "index.parquet").write_bytes(b"PAR1 not really")
    with caplog.at_level(logging.WARNING):
        cache = IndexCache(cache_dir)
    assert "index.parquet: unreadable index cache" in caplog.text
    index_genimage_tree(tree, cache=cache)
    assert cache.stats()["cached"] == 0


def test_a_cache_folder_the_tool_did_not_make_is_refused(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="did not create"):
        IndexCache(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_the_genimage_fingerprint_sees_a_changed_part_and_a_deleted_image(tmp_path):
    source = tmp_path / "GenImage"
    make_genimage_tree(source, subsets=SUBSETS[:1], per_folder=2)  # one subset already extracted
    parts = [source / f"{SUBSETS[1]}.z01", source / f"{SUBSETS[1]}.zip"]  # one as split archive parts
    for i, p in enumerate(parts):
        p.write_bytes(bytes([i]) * 100)
    first = genimage.source_fingerprint(source)
    assert set(first) == set(SUBSETS) and first[SUBSETS[1]]["kind"] == "archives"
    assert first[SUBSETS[1]]["files"] == 2 and first[SUBSETS[0]]["files"] == 8
    assert genimage.source_fingerprint(source) == first  # nothing changed, nothing differs

    with open(parts[0], "ab") as f:  # a re-downloaded part
        f.write(b"x")
    second = genimage.source_fingerprint(source)
    assert second[SUBSETS[1]] != first[SUBSETS[1]] and second[SUBSETS[0]] == first[SUBSETS[0]]
    next((source / SUBSETS[0] / "val/ai").iterdir()).unlink()
    third = genimage.source_fingerprint(source)
    assert third[SUBSETS[0]]["files"] == 7 and third[SUBSETS[0]] != second[SUBSETS[0]]


def test_the_imaginet_fingerprint_follows_annotations_and_listed_files(tmp_path):
    root = make_imaginet_dataset(tmp_path / "ImagiNet")
    annotations = {"train": "annotations/train_annotations.txt", "test": "annotations/test_annotations.txt"}
    first = imaginet.source_fingerprint(root, annotations)
    assert first == imaginet.source_fingerprint(root, annotations)
    listed = imaginet.read_annotations(root / annotations["train"])["relpath"].iloc[0]
    (root / listed).unlink()  # a missing image is a state of its own
    second = imaginet.source_fingerprint(root, annotations)
    assert second["train"] != first["train"] and second["test"] == first["test"]
    assert second["train"]["files"] == first["train"]["files"]
