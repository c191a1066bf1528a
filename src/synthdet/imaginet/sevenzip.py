"""Split 7z archives (ImagiNet's packed distribution, ``imaginet.7z.001 ...``), read with the 7-Zip
command (``7zz``, ``7z`` or ``7za``): the tool that already reads every 7z method and checks every
member's CRC-32 while it extracts.

Extraction is resumable: members already in place with the size (and, when asked, the CRC-32)
the archive lists are kept; the others are extracted by one 7-Zip call (a solid archive is decoded
once, front to back) into a staging folder of ours, and each is moved into place as soon as 7-Zip
has finished it (its CRC-32 checked by 7-Zip, its size by us) and logged, so a run killed half-way
keeps every member it finished. Member names are checked before anything is written: an absolute
name, one that leaves the folder, or a link is refused, naming the archive.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from synthdet.fsutil import (
    DataSourceError,
    file_digest,
    inside,
    make_owned_dir,
    read_json_cache,
    remove_owned_dir,
    write_json,
)

EXECUTABLES = ("7zz", "7z", "7za")
STAGING = ".7z-staging"


@dataclass(frozen=True)
class Entry:
    name: str
    size: int
    crc: int | None


def executable() -> str:
    for name in EXECUTABLES:
        if path := shutil.which(name):
            return path
    raise DataSourceError(
        "reading a 7z archive needs the 7-Zip command (7zz, 7z or 7za; Debian: `apt install 7zip`). Or extract "
        "it yourself (`7z x imaginet.7z.001`) and set data.imaginet.root to the extracted folder")


def _run(args: list[str], archive: Path, what: str) -> str:
    result = subprocess.run([executable(), *args], capture_output=True, text=True, errors="replace")
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
        raise DataSourceError(f"{archive}: 7-Zip could not {what} it (exit {result.returncode}: {' | '.join(detail)}); "
                              "a missing or corrupt part? Every part (.001, .002, ...) must be in the same folder")
    return result.stdout


def list_entries(archive: Path) -> list[Entry]:
    """The archive's files (folders left out), from ``7z l -slt``; a link is refused."""
    text = _run(["l", "-slt", str(archive)], archive, "list")
    if "\n----------\n" not in text:
        raise DataSourceError(f"{archive}: 7-Zip listed no members")
    entries = []
    for block in text.split("\n----------\n", 1)[1].split("\n\n"):
        fields = dict(line.split(" = ", 1) for line in block.splitlines() if " = " in line)
        if "Path" not in fields:
            continue
        attributes = fields.get("Attributes", "")
        if fields.get("Folder") == "+" or attributes.startswith("D"):
            continue
        if " lrwx" in f" {attributes}" or fields.get("Symbolic Link"):
            raise DataSourceError(f"{archive}: member {fields['Path']!r} is a link; refused (a crafted archive?)")
        crc = fields.get("CRC", "")
        entries.append(Entry(fields["Path"], int(fields.get("Size") or 0), int(crc, 16) if crc else None))
    return entries


def extract(archive: Path, out: Path, verify_existing: bool = False) -> dict[str, int]:
    """Extract ``archive`` (its first part) into ``out``, resumably; counts of extracted and kept files.

    A file already there is kept when the extraction log records it with the same size and
    mtime, or (``verify_existing``, or not logged) when its size and CRC-32 match the listing.
    """
    archive, out = Path(archive), Path(out)
    entries = list_entries(archive)
    targets = {e.name: inside(out, e.name, f"{archive} member") for e in entries}
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / f".extract-log-{archive.name}.json"
    done = read_json_cache(log_path)
    todo = []
    for e in tqdm(entries, desc="check extracted"):
        target = targets[e.name]
        if target.is_file() and not target.is_symlink():
            st = target.stat()
            if st.st_size == e.size and ((not verify_existing and done.get(e.name) == [st.st_size, st.st_mtime_ns])
                                         or e.crc is None or file_digest(target, "crc32") == f"{e.crc:08x}"):
                done[e.name] = [st.st_size, st.st_mtime_ns]
                continue
        todo.append(e)
    if todo:
        staging = out / STAGING
        if staging.exists():
            remove_owned_dir(staging)  # an interrupted run's half-written files
        make_owned_dir(staging)
        listfile = staging / ".members.txt"
        listfile.write_text("".join(f"{e.name}\n" for e in todo))
        try:
            _extract_streaming(archive, staging, listfile, todo, targets, done, log_path)
        finally:
            write_json(done, log_path)  # every member moved into place so far: kept by a rerun
        remove_owned_dir(staging)
    write_json(done, log_path)
    return {"extracted": len(todo), "kept": len(entries) - len(todo)}


LOG_EVERY_S = 30.0  # how often the extraction log is written while 7-Zip runs (and when it stops)


def _extract_streaming(archive: Path, staging: Path, listfile: Path, todo: list[Entry], targets: dict[str, Path],
                       done: dict[str, list[int]], log_path: Path) -> None:
    """One 7-Zip call over the members in ``listfile``. With ``-bb1`` it names each member as it
    starts it, and with ``-bse1`` its errors come in the same stream, in order: when it names the
    next member, the previous one is complete and passed its CRC-32 unless an error line came in
    between. Such a member is moved into place at once (its size checked) and recorded in ``done``;
    one with an error line waits for the end, where a failed call moves nothing more and raises."""
    by_name = {e.name: e for e in todo}
    moved: set[str] = set()

    def move(name: str) -> None:
        e = by_name[name]
        staged = inside(staging, e.name, f"{archive} member")
        if staged.is_symlink() or not staged.is_file() or staged.stat().st_size != e.size:
            raise DataSourceError(f"{archive}: member {e.name!r} did not extract to a file of the listed size")
        targets[name].parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, targets[name])
        st = targets[name].stat()
        done[name] = [st.st_size, st.st_mtime_ns]
        moved.add(name)

    command = [executable(), "x", "-y", "-spd", "-bb1", "-bse1", "-bd", f"-o{staging}", str(archive), f"@{listfile}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    current, troubled, tail, errors = None, False, deque(maxlen=3), []
    logged = time.monotonic()
    bar = tqdm(total=len(todo), desc="extract", unit="file")
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("- "):
                if current is not None and not troubled:
                    move(current)
                name = line[2:]
                current, troubled = (name if name in by_name else None), False
                bar.update(current is not None)
                if time.monotonic() - logged > LOG_EVERY_S:
                    write_json(done, log_path)
                    logged = time.monotonic()
            elif line.strip():
                tail.append(line.strip())
                if "error" in line.lower():
                    troubled = True
                    errors.append(line.strip())
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        bar.close()
    if code != 0:
        detail = " | ".join(errors[:3] or tail)
        raise DataSourceError(f"{archive}: 7-Zip could not extract it (exit {code}: {detail}); a missing or corrupt "
                              f"part? Every part (.001, .002, ...) must be in the same folder. The {len(moved)} "
                              "members it finished are kept")
    for name in by_name:  # 7-Zip succeeded: every member passed its CRC-32
        if name not in moved:
            move(name)
