"""Stage ``code``: one small file per stage module and per detector name, the hashes of the code it runs.

A stage depends on the code it executes, and DVC must rerun it when that code changes, but listing
every source file as a dependency of every stage made ``dvc.lock`` 200 KB (1,075 of its 1,323
entries were source files), and DVC reads and rewrites that file after every stage: 2-3 s each,
about a minute and a half of a ``make repro``. So this stage, which depends on the whole source
tree (one entry), writes ``artifacts/code/stage/<module>``: the sha256 of every file the stage's
module imports, directly or not (:func:`synthdet.codegraph.import_closure`, lazy imports
included), and every stage depends on its module's file instead. DVC then reruns exactly the
stages whose file's content moved: the same stages as before, from a lock a third the size.

The detector registry's package imports every detector so that each registers itself, so a stage
that builds a detector by name would, judged by its imports, depend on every detector's source:
an edit to NPR's file would rerun every ResNet-50 run. Such a stage declares the names it builds
(``Stage.detectors``), its module's file leaves the registry's imports out, and it also depends on
``artifacts/code/detector/<name>``: the files that build that one network (its builder's module
and what that imports). A ``synthdet`` command: it has nothing to show.
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
    name="code", notebook="", module=__name__, params=NAME_PARAMS, deps=(paths.SOURCE_TREE,), outs=(Out(paths.CODE),),
    cli="synthdet stage code", code_dep=False,
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


def _hashes(files: tuple[Path, ...] | list[Path]) -> dict[str, str]:
    """sha256 per file, read where DVC sees it: relative to the stage's working folder (the
    checkout), whose ``src/synthdet`` is this stage's dependency, when it has the file (a copy of
    the checkout run with another one's installed package, as the end-to-end tests do), else where
    Python imports it from."""
    out = {}
    for f in sorted(files):
        rel = repo_relative(f)
        here = Path(rel)
        out[rel] = hashlib.sha256((here if here.is_file() else f).read_bytes()).hexdigest()
    return out


def builder_code(name: str) -> dict:
    """The module that builds ``name`` and the sha256 of each file it runs (the registry's
    package counted as its own ``__init__.py`` only: it imports every other detector)."""
    from synthdet.detectors.registry import builder_module

    module = builder_module(name)
    return {"detector": name, "builder": module, "files": _hashes(import_closure(module, opaque=(DETECTORS,)))}


def stage_code(stage: Stage) -> dict:
    """What ``stage``'s module runs: the sha256 of each file it imports (:meth:`Stage.source_paths`)."""
    return {"module": stage.module, "files": _hashes(stage.source_paths())}


def run(params: dict) -> Result:
    from synthdet.stages.table import all_stages  # the table imports this module

    cfg = Config.from_params(params)
    folder = replace_owned_dir(Path(paths.CODE))
    (folder / "detector").mkdir()
    (folder / "stage").mkdir()
    for name in cfg.names:
        write_json(builder_code(name), inside(folder / "detector", name, "code"))
    modules: dict[str, Stage] = {}
    for stage in all_stages():
        if not stage.code_dep:
            continue
        other = modules.setdefault(stage.module, stage)
        if (other.detectors is None) != (stage.detectors is None):  # one file per module: one closure
            raise ValueError(f"stages {other.name} and {stage.name} share {stage.module} but not whether they "
                             "build detectors by name")
    for module, stage in modules.items():
        write_json(stage_code(stage), inside(folder, paths.stage_code(module).removeprefix(f"{paths.CODE}/"), "code"))
    return Result(metrics={"detectors": len(cfg.names), "stage_modules": len(modules)})
