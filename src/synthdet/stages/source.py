"""Stage ``source``: a fingerprint of the dataset's source files, which ``download`` depends on.

DVC cannot see a folder outside the repository change (GenImage's archives, ImagiNet's root), so
this stage runs on every ``dvc repro`` (``always_changed``) and writes what it finds: names, sizes
and modification times of the archive parts or files, digested per subset (per split for
ImagiNet). Nothing is opened but the annotation files, so it takes seconds even for GenImage's
1.3M images; ``download`` reruns only when the fingerprint changed (a re-downloaded part, a deleted
image, an edited annotation file). A ``synthdet`` command rather than a notebook: it has nothing to
show and runs every time, where a kernel start would double a no-op ``dvc repro``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synthdet.fsutil import DataSourceError, write_json
from synthdet.stages import paths
from synthdet.stages.base import Out, Result, Stage, select

STAGE = Stage(
    name="source", notebook="", module=__name__, params=("data",), outs=(Out(paths.FINGERPRINT),),
    cli="synthdet stage source", always_changed=True,
)


@dataclass(frozen=True)
class Config:
    dataset: str
    genimage: dict
    imaginet: dict

    @classmethod
    def from_params(cls, params: dict) -> Config:
        d = select(params, STAGE.params)["data"]
        return cls(d["name"], dict(d["genimage"]), dict(d["imaginet"]))


SOURCE_KEYS = {"genimage": ("source", "the folder holding GenImage's archives"),
               "imaginet": ("root", "the ImagiNet dataset root (or the folder of its split 7z)")}


def dataset_folder(dataset: str, settings: dict) -> Path:
    """``data.genimage.source`` / ``data.imaginet.root``; refused when empty, naming the key to set."""
    key, what = SOURCE_KEYS[dataset]
    if not settings[key]:
        raise DataSourceError(f"data.{dataset}.{key} is empty: set it to {what} "
                              f"(dvc exp run -S data.{dataset}.{key}=/path/to/it)")
    return Path(settings[key])


def fingerprint(cfg: Config) -> dict:
    """The dataset's source state (the embedded benchmark's is ``data/``, a dependency of its own).
    The dataset modules are imported only when used: the default run then starts no torch."""
    if cfg.dataset == "genimage":
        from synthdet.genimage import archives as genimage

        g = cfg.genimage
        checksums = Path(g["checksums"]) if g.get("checksums") else None
        return {"dataset": "genimage", "subsets": genimage.source_fingerprint(dataset_folder("genimage", g),
                                                                               g["subsets"], checksums)}
    if cfg.dataset == "imaginet":
        from synthdet.imaginet import dataset as imaginet

        i = cfg.imaginet
        return {"dataset": "imaginet",
                "splits": imaginet.source_fingerprint(dataset_folder("imaginet", i), i["annotations"])}
    return {"dataset": cfg.dataset, "note": "data/ (data.dvc) is a dependency of the download stage itself"}


def run(params: dict) -> Result:
    state = fingerprint(Config.from_params(params))
    write_json(state, Path(paths.FINGERPRINT))
    return Result(metrics=state)
