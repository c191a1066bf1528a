"""Finished generator groups, kept across runs of the download stage.

Training the embedded benchmark's generators takes most of the download stage (10+ minutes on 2
cores). A stage killed after some groups finished used to start from zero, because its output
folder is replaced on every run. Each group that finishes is now kept in the stage's resume folder
(``artifacts/checkpoints/download``, a persistent DVC output) as hard links to its files (no second
copy on disk), under a key of everything that decides its bytes: its subsets' configuration, the
real images it learns from and is paired with, the pretrained weights, the generation code, torch
and the pinned arithmetic (:func:`synthdet.datasets.embedded.build.group_key`). A rerun links a
kept group back instead of training it again, after checking every file against the subset hash
recorded when it was kept; anything missing, changed or half-written is built again. Keys that the
current plan no longer has are deleted (the folder holds only what a rerun can use).

A group killed before it finished is not lost either: each of its generators' trainings keeps its
per-epoch resume state in ``<key>.training/`` (:class:`~synthdet.datasets.embedded.generators.common.EpochResume`),
so a rerun goes on from the last state saved (at most 30 s of training redone) and ends with the
same bytes; the folder goes once the group is kept.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from synthdet.datasets.embedded.reproducible import subset_hash
from synthdet.fsutil import atomic_write_bytes, hard_link_or_copy, inside, make_owned_dir

STATE = "done.json"  # written last: an entry without it is unfinished and never used
FORMAT = 1
TRAINING = ".training"  # suffix of a group's folder of per-epoch training states


def _link_tree(source: Path, target: Path) -> None:
    """``target`` becomes a copy of the folder ``source`` made of hard links (a copy where the
    file system cannot link); folders, empty ones included, are recreated."""
    for folder, _dirs, files in os.walk(source):
        rel = Path(folder).relative_to(source)
        (target / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            hard_link_or_copy(Path(folder) / name, target / rel / name)


def training_state(folder: Path, key: str) -> Path:
    """The folder where the trainings of the group ``key`` keep their per-epoch resume state."""
    return inside(folder, f"{key}{TRAINING}", "finished generator groups")


def prepare(folder: Path, keys: list[str]) -> None:
    """The resume folder (ours), without entries that none of ``keys`` names (a group's training
    states stay with its key)."""
    make_owned_dir(folder)
    wanted = {*keys, *(f"{key}{TRAINING}" for key in keys)}
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink() and entry.name not in wanted:
            shutil.rmtree(inside(folder, entry.name, "finished generator groups"))


def keep(folder: Path, key: str, out: Path, names: list[str], rows: list[dict], seconds: dict[str, float]) -> None:
    """Keep the finished group ``names`` (its subset folders in ``out``, its manifest rows and
    generation seconds) under ``key``."""
    entry = inside(folder, key, "finished generator groups")
    partial = entry.with_name(f"{key}.part")
    for stale in (partial, entry):
        if stale.exists():
            shutil.rmtree(stale)
    for name in names:
        _link_tree(out / name, partial / name)
    state = {"format": FORMAT, "out": out.as_posix(), "names": names, "rows": rows, "seconds": seconds,
             "hashes": {name: subset_hash(partial / name) for name in names}}
    atomic_write_bytes(partial / STATE, json.dumps(state).encode())
    partial.rename(entry)
    training = training_state(folder, key)
    if training.exists():  # the group is kept whole: its trainings' states have done their job
        shutil.rmtree(training)


def restore(folder: Path, key: str, out: Path, names: list[str]) -> tuple[list[dict], dict[str, float]] | None:
    """The group kept under ``key``, linked into ``out``: its rows and seconds; None (and the
    entry deleted) when there is none, it is unfinished, of another output folder, or a file of it
    is missing or changed."""
    entry = inside(folder, key, "finished generator groups")
    state_file = entry / STATE
    try:
        state = json.loads(state_file.read_text()) if state_file.is_file() else None
    except (OSError, ValueError):
        state = None
    usable = (isinstance(state, dict) and state.get("format") == FORMAT and state.get("names") == names
              and state.get("out") == out.as_posix()
              and all(subset_hash(entry / name) == state["hashes"].get(name) for name in names))
    if not usable:
        for stale in (entry, entry.with_name(f"{key}.part")):
            if stale.exists():
                shutil.rmtree(stale)
        return None
    for name in names:
        if (out / name).exists():
            shutil.rmtree(out / name)  # inside the freshly replaced output folder: only a leftover of ours
        _link_tree(entry / name, out / name)
    return state["rows"], state["seconds"]
