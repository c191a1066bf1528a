"""GenImage's format bias, built into the embedded benchmark: the same images with every real
stored as a JPEG (quality 96, 4:2:0, as ImageNet's camera files mostly are) and every fake kept
as a PNG. An audit must find this shortcut, and a detector trained here can learn it.

Written as a GenImage-layout tree (``<subset>/{train,val}/{nature,ai}/``; ``val`` is the test
split, as in GenImage), so everything that reads GenImage reads it too.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from synthdet.data.imageio import load_rgb
from synthdet.data.manifest import FILE_COLUMNS, describe_files, normalise
from synthdet.fsutil import atomic_output, inside, make_owned_dir

GENIMAGE_SPLIT_DIRS = {"train": "train", "val": "train", "test": "val"}
GENIMAGE_LABEL_DIRS = {0: "nature", 1: "ai"}


def write_variant(manifest: pd.DataFrame, out: Path, name: str,
                  write_image: Callable[[Any, str], Path]) -> pd.DataFrame:
    """Copy ``manifest``'s images into a GenImage-layout tree under ``out`` (a folder this call
    creates), each by ``write_image(row, folder)``, which returns its file (inside ``out/folder``;
    left unwritten when the image does not decode). Returns the variant's manifest: the same rows,
    ``split`` and ``group`` kept (so its folds and test set are the original's), new paths and file
    facts; an image not written keeps its row, indexed as missing."""
    out = make_owned_dir(Path(out))
    rows = manifest.reset_index(drop=True).copy()
    paths = []
    for r in tqdm(rows.itertuples(index=False), total=len(rows), desc=name):
        folder = f"{r.subset}/{GENIMAGE_SPLIT_DIRS[r.split]}/{GENIMAGE_LABEL_DIRS[int(r.label)]}"
        paths.append(write_image(r, folder).as_posix())
    facts = pd.DataFrame(describe_files([Path(p) for p in paths], desc=f"index {name}"))
    rows = rows.drop(columns=list(FILE_COLUMNS)).assign(path=paths)
    return normalise(pd.concat([rows, facts], axis=1))


def write_biased_variant(manifest: pd.DataFrame, out: Path, real_quality: int = 96) -> pd.DataFrame:
    """Copy ``manifest``'s images under ``out``: reals re-encoded as JPEG at ``real_quality``,
    fakes byte for byte (:func:`write_variant`)."""
    out = Path(out)

    def write(r: Any, folder: str) -> Path:
        real = int(r.label) == 0
        target = inside(out, f"{folder}/{Path(r.path).stem}.jpg" if real else f"{folder}/{Path(r.path).name}",
                        "biased variant")
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as tmp:
            if real:
                load_rgb(r.path).save(tmp, format="JPEG", quality=int(real_quality))
            else:
                shutil.copyfile(r.path, tmp)
        return target

    return write_variant(manifest, out, "biased variant", write)
