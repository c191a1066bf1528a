"""ImagiNet's annotation format and perturbed test set, on a fabricated miniature."""

import uuid

import numpy as np
import pytest
from PIL import Image

from synthdet.datasets.imaginet import build_perturbed, perturb, read_annotations
from synthdet.fsutil import DataSourceError
from synthdet.stages.download import download_imaginet
from tests.conftest import noise_image


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
    small, info = perturb(noise_image(1, (200, 300)), np.random.default_rng(0))
    assert small.size == (256, 256) and info["crop_side"] == 200  # shorter than 256: whole short side


def test_perturbed_test_set_and_manifest(tmp_path):
    root = make_imaginet(tmp_path / "imaginet")
    ann = read_annotations(root / "annotations/test_annotations.txt")
    (root / ann[ann.label == 1].relpath.iloc[0]).write_bytes(b"")  # a zero-byte test image
    first = build_perturbed(ann, root, tmp_path / "p1", seed=0)
    second = build_perturbed(ann, root, tmp_path / "p2", seed=0)
    ok = first[first.status == "ok"]
    assert len(ok) == 7 and (first.status == "empty").sum() == 1
    for p1, p2 in zip(ok.path, second[second.status == "ok"].path, strict=True):
        assert open(p1, "rb").read() == open(p2, "rb").read()
        assert Image.open(p1).format == "PNG" and Image.open(p1).size == (256, 256)
    lines = (tmp_path / "p1/test_perturbed.txt").read_text().splitlines()
    assert len(lines) == 7 and all(line.count(",") == 4 and ".png," in line for line in lines)

    cfg = {"train": "annotations/train_annotations.txt", "test": "annotations/test_annotations.txt",
           "calibration": "annotations/calibration_annotations.txt"}
    manifest = download_imaginet(root, tmp_path / "out", cfg, {"enabled": True}, seed=0)
    assert set(manifest.split) == {"train", "test", "calibration"}
    test = manifest[manifest.split == "test"]
    assert (test[test.status == "ok"].width == 256).all() and (test.status != "ok").sum() == 1
    assert set(manifest.subset) == {"photos", "faces"}
