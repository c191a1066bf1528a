"""Stage ``detector_code``: one small file per detector name, the hashes of the code that builds it.

The detector registry's package imports every detector so that each registers itself, so a stage
that builds a detector by name would, judged by its imports, depend on every detector's source:
an edit to NPR's file would rerun every ResNet-50 run. Instead such a stage declares the names it
builds (``Stage.detectors``), its own dependencies leave the registry's imports out, and it
depends on ``artifacts/detector_code/<name>``: the files that build that one network (its builder's
module and what that imports). This stage rewrites those files whenever any detector's source
changes; DVC then reruns only the stages whose file's content moved. A ``synthdet`` command: it
has nothing to show.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from synthdet.codegraph import DETECTORS, import_closure, repo_relative
from synthdet.fsutil import inside, replace_owned_dir, write_json
from synthdet.stages import paths
from synthdet.stages.base import Out, Result, Stage, select

# every params key that names a detector built by a stage with ``detectors`` (a timm name too)
NAME_PARAMS = ("model", "tables.xgen_models", "tables.detectors", "tables.ablation_model", "imaginet.loco.model")
STAGE = Stage(
    name="detector_code", notebook="", module=__name__, params=NAME_PARAMS, outs=(Out(paths.DETECTOR_CODE),),
    cli="synthdet stage detector_code",
)


@dataclass(frozen=True)
class Config:
    names: tuple[str, ...]  # every registered detector (ImagiNet's networks too) and every name in NAME_PARAMS

    @classmethod
    def from_params(cls, params: dict) -> Config:
        from synthdet.detectors.registry import registered_names

        names = set(registered_names())
        view = select(params, NAME_PARAMS)
        for key in NAME_PARAMS:
            value = view
            for part in key.split("."):
                value = value[part]
            values = [value] if isinstance(value, str) else list(value or ())
            if not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"{key}: {value!r} is not a detector name (or a list of them)")
            names |= set(values)
        return cls(tuple(sorted(names)))


def builder_code(name: str) -> dict:
    """The module that builds ``name`` and the sha256 of each file it runs (the registry's
    package counted as its own ``__init__.py`` only: it imports every other detector)."""
    from synthdet.detectors.registry import builder_module

    module = builder_module(name)
    files = import_closure(module, opaque=(DETECTORS,))
    return {"detector": name, "builder": module,
            "files": {repo_relative(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}}


def run(params: dict) -> Result:
    cfg = Config.from_params(params)
    folder = replace_owned_dir(Path(paths.DETECTOR_CODE))
    for name in cfg.names:
        write_json(builder_code(name), inside(folder, name, "detector_code"))
    return Result(metrics={"detectors": len(cfg.names)})
