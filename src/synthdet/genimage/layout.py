"""What GenImage is on disk: its eight subsets, the extracted layout
``<subset>/{train,val}/{ai,nature}/<image>``, the community's known-corrupt files and the ImageNet
class each file name carries. The archives it ships in: :mod:`synthdet.genimage.archives`."""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from synthdet.data.indexcache import IndexCache
from synthdet.data.manifest import IMAGE_SUFFIXES, LayoutError, describe_files, normalise

log = logging.getLogger(__name__)

REFERENCE = Path(__file__).parent / "reference"
# subset folder -> (generator as GenImage names it, family)
SUBSETS: dict[str, tuple[str, str]] = {
    "imagenet_midjourney": ("Midjourney", "diffusion"),
    "imagenet_ai_0419_sdv4": ("SD V1.4", "diffusion"),
    "imagenet_ai_0424_sdv5": ("SD V1.5", "diffusion"),
    "imagenet_ai_0508_adm": ("ADM", "diffusion"),
    "imagenet_glide": ("GLIDE", "diffusion"),
    "imagenet_ai_0424_wukong": ("Wukong", "diffusion"),
    "imagenet_ai_0419_vqdm": ("VQDM", "vq-diffusion"),
    "imagenet_ai_0419_biggan": ("BigGAN", "gan"),
}
LABEL_DIRS = {"nature": 0, "ai": 1}
SPLIT_DIRS = ("train", "val")


def known_corrupt(subset: str) -> set[str]:
    """Paths (relative to the extracted root) the community reported corrupt or zero-byte."""
    path = REFERENCE / "corrupted_files" / f"{subset}.txt"
    if not path.exists():
        return set()
    return {line.strip().removeprefix("./") for line in path.read_text().splitlines() if line.strip()}


def index_genimage_tree(root: Path, subsets: Iterable[str] | None = None,
                        cache: IndexCache | None = None) -> pd.DataFrame:
    """Index a GenImage-layout tree: ``root/<subset>/{train,val}/{ai,nature}/<image>``.

    ``val`` is GenImage's test set and is recorded as split ``test``. ``cache``: decode only the
    files that changed since the last index (see :mod:`synthdet.data.indexcache`).
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: folder does not exist")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    wanted = list(subsets) if subsets is not None else found
    missing = [s for s in wanted if s not in found]
    if missing:
        raise LayoutError(f"{root}: subsets {missing} not found (found: {found})")
    records, others = [], []
    for subset in wanted:
        for split in SPLIT_DIRS:
            for label_dir, label in LABEL_DIRS.items():
                folder = root / subset / split / label_dir
                if not folder.is_dir():
                    raise LayoutError(
                        f"{folder}: missing; expected {root}/<subset>/{{train,val}}/{{ai,nature}}"
                    )
                for path in sorted(folder.rglob("*")):
                    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                        records.append({"path": path.as_posix(), "label": label, "subset": subset,
                                        "split": "test" if split == "val" else "train"})
                    elif path.is_file() and not path.name.startswith("."):
                        others.append(path)
    if others:  # said, never silent: a format this list lacks would otherwise just shrink a subset
        suffixes = sorted({p.suffix.lower() or "(none)" for p in others})
        log.warning("%s: %d files left out, not images by their suffix (%s; known: %s), e.g. %s", root,
                    len(others), ", ".join(suffixes), " ".join(sorted(IMAGE_SUFFIXES)), others[0])
    if not records:
        raise LayoutError(f"{root}: no images found under {wanted}")
    files = describe_files([Path(r["path"]) for r in records], cache=cache)
    return normalise(pd.DataFrame([{**r, **f} for r, f in zip(records, files, strict=True)]))


def mark_known_corrupt(manifest: pd.DataFrame, roots: dict[str, Path]) -> pd.DataFrame:
    """Set ``status = known_corrupt`` on images the community lists as corrupt."""
    df = manifest.copy()
    for subset, root in roots.items():
        bad = known_corrupt(subset)
        if not bad:
            continue
        rel = df.loc[df["subset"] == subset, "path"].map(lambda p, r=root: os.path.relpath(p, r))
        hit = rel[rel.isin(bad)].index.intersection(df.index[df["status"] == "ok"])
        df.loc[hit, ["status", "error"]] = ["known_corrupt", "listed in corrupted_files"]
    return df


_FAKE_CLASS = re.compile(r"(?:^|_)(\d{1,3})_[A-Za-z0-9]+_\d+$")  # 033_sdv4_00134, GLIDE_..._808_glide_00033
_REAL_CLASS = re.compile(r"^(n\d{8})_")  # n03495258_20762


def image_class(path: str) -> str | None:
    """The ImageNet synset of a GenImage image, from its file name: reals carry the synset, fakes
    the class index they were generated for (standard ImageNet-1k order, as timm lists it)."""
    stem = Path(path).stem
    if m := _REAL_CLASS.match(stem):
        return m.group(1)
    if (m := _FAKE_CLASS.search(stem)) and int(m.group(1)) < 1000:
        return _synsets()[int(m.group(1))]
    return None


@functools.cache
def _synsets() -> list[str]:
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())
