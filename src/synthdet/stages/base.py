"""What a stage declares, the source files it depends on (found from its imports), and the
``dvc.yaml`` entry generated from it.

A stage is written once, here in code: its params, data inputs, outputs, metrics and plots. The
``dvc.yaml`` the user runs is generated from these declarations (``synthdet stages --write``) and
checked against them (``synthdet stages --check``, a test), so the two cannot drift.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from synthdet.codegraph import DETECTORS, import_closure, repo_relative
from synthdet.stages import paths

PARAMS_FILE = "params.yaml"
# params keys that were renamed: an old params file says so instead of failing on a missing key
RENAMED = {"tables.train_subset": "tables.detector_subset",  # the top-level train_subset is the train stage's
           "audit.sharpness_variant": "degrade.sharpness_variant"}  # the degrade stage builds the variant


@dataclass(frozen=True)
class Out:
    """An output of a stage. ``persist``: kept across reruns (checkpoints to resume from);
    ``cache``: stored in DVC's cache (not for checkpoints: every run's optimizer state)."""

    path: str
    cache: bool = True
    persist: bool = False

    def entry(self) -> str | dict:
        if self.cache and not self.persist:
            return self.path
        flags: dict[str, bool] = {}
        if self.persist:
            flags["persist"] = True
        if not self.cache:
            flags["cache"] = False
        return {self.path: flags}


@dataclass(frozen=True)
class Stage:
    """One DVC stage: a notebook executed by papermill, whose code calls ``<module>.run``.

    ``matrix`` maps an item name to the params key that lists its values (DVC's ``matrix:``);
    paths may use ``${item.<name>}`` and ``${<params key>}`` as DVC interpolates them.
    """

    name: str
    notebook: str
    module: str
    params: tuple[str, ...]
    deps: tuple[str, ...] = ()
    outs: tuple[Out, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    matrix: tuple[tuple[str, str], ...] = ()
    report: str = ""
    description: str = ""
    arguments: tuple[tuple[str, str], ...] = ()  # constant notebook parameters (``-p name value``)
    cli: str = ""  # a ``synthdet`` command instead of a notebook (a check with nothing to show)
    always_changed: bool = False  # DVC runs it on every ``dvc repro`` (then only a changed output reruns the rest)
    # the detectors it builds by name (``${...}`` allowed): its code is then its imports without the registry's
    # package's (which imports every detector) plus each one's code file, so an edit to one detector reruns only
    # the stages that build it. None: every file it imports (a stage using every detector)
    detectors: tuple[str, ...] | None = None
    code_dep: bool = True  # depends on its module's code file (artifacts/code/stage/<module>); not the code stage
    # every output in DVC's cache, its metrics too, and no uncached folder among its outs: `dvc pull <stage>`
    # from a remote then restores the whole stage and `dvc repro` skips it (the download stage: the recorded
    # benchmark's bytes on a machine whose float arithmetic builds others)
    pullable: bool = False

    @property
    def report_path(self) -> str:
        return self.report or f"reports/{Path(self.notebook).name}"

    def command(self) -> str:
        if self.cli:
            return self.cli
        args = [f"-p {k} {v}" for k, v in self.arguments] + [f"-p {k} ${{item.{k}}}" for k, _ in self.matrix]
        # papermill through synthdet.notebook: the kernel on local sockets, one-line errors, Ctrl-C that stops it
        return " ".join(["synthdet notebook", self.notebook, self.report_path, f"-p params_file {PARAMS_FILE}", *args])

    def source_paths(self) -> tuple[Path, ...]:
        """Every file of the package that ``module`` imports, directly or not (lazy imports
        inside functions included): what the code stage hashes into the stage's code file."""
        return import_closure(self.module, () if self.detectors is None else (DETECTORS,))

    def source_files(self) -> list[str]:
        """:meth:`source_paths` relative to the repository root."""
        return sorted(repo_relative(f) for f in self.source_paths())

    def entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        if self.matrix:
            entry["matrix"] = {k: f"${{{key}}}" for k, key in self.matrix}
        entry["cmd"] = self.command()
        code = [paths.stage_code(self.module)] if self.code_dep else []
        code += [paths.detector_code(name) for name in self.detectors or ()]
        entry["deps"] = [*self.deps, *code, *([self.notebook] if self.notebook else [])]
        entry["params"] = list(self.params)
        entry["outs"] = [o.entry() for o in self.outs] + ([self.report_path] if self.notebook else [])
        if self.pullable and any(not o.cache for o in self.outs):
            raise ValueError(f"stage {self.name}: pullable, so every output must be cached")
        if self.metrics:
            entry["metrics"] = [m if self.pullable else {m: {"cache": False}} for m in self.metrics]
        if self.plots:
            entry["plots"] = [{p: {"cache": False}} for p in self.plots]
        if self.always_changed:
            entry["always_changed"] = True
        return entry


def select(params: dict, keys: tuple[str, ...] | list[str]) -> dict:
    """Only ``keys`` (dotted) of ``params``, nested as in params.yaml: what a stage may read.
    A config built from this view fails loudly if the code reads a key the stage did not declare."""
    out: dict = {}
    for key in keys:
        node, target = params, out
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"missing key {key!r} (a stage reads it); compare with the repository's {PARAMS_FILE}")
            node = node[part]
            target = target.setdefault(part, {})
        if not isinstance(node, dict) or leaf not in node:
            raise KeyError(f"missing key {key!r} (a stage reads it); compare with the repository's {PARAMS_FILE}")
        target[leaf] = node[leaf]
    return out


def load_params(path: str | Path = PARAMS_FILE) -> dict:
    """params.yaml as a dict (papermill passes its path; DVC's ``-S`` edits the file itself)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found (run from the repository root)")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping of parameters")
    for old, new in RENAMED.items():
        parent, _, leaf = old.rpartition(".")
        if isinstance(data.get(parent), dict) and leaf in data[parent]:
            raise ValueError(f"{path}: {old} is now {new}; rename it there (see params.yaml)")
    return data


@dataclass
class Result:
    """What a stage's ``run`` hands its notebook: named tables and figures to show, in order,
    and the metrics it wrote."""

    tables: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def show(self, *sections: str) -> None:
        """Display tables and figures in a notebook: all of them, or those of the named sections
        (a section ``table4`` holds ``table4`` and every ``table4: ...`` item)."""
        from IPython.display import Image, Markdown, display

        items = {**self.tables, **self.figures}
        names = [n for n in items if not sections or any(n == s or n.startswith(f"{s}:") for s in sections)]
        if not names:
            display(Markdown(f"*{', '.join(sections)}: not computed in this run (see the notes below).*"))
        for name in names:
            display(Markdown(f"**{name}**"))
            item = items[name]
            if hasattr(item, "savefig"):  # a matplotlib figure, whatever the backend
                buf = io.BytesIO()
                item.savefig(buf, format="png", dpi=100)
                item = Image(data=buf.getvalue())
            display(item)
        if not sections and self.notes:
            display(Markdown("\n".join(f"- {n}" for n in self.notes)))


def notebook_params(params_file: str = PARAMS_FILE) -> dict:
    """The notebooks' first call: work from the repository root (JupyterLab starts them in
    ``notebooks/``) and read the params file papermill names."""
    import os

    if Path.cwd().name == "notebooks" and (Path.cwd().parent / PARAMS_FILE).exists():
        os.chdir("..")
    return load_params(params_file)
