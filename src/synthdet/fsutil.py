"""File-system safety shared by every writer: paths that stay inside their folder, atomic writes,
caches that survive a crash, and deleting only folders this tool made.

The lowest layer of the package: it imports nothing from synthdet.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

# the marker that says "synthdet created this folder and may delete it"
OWNED_MARKER = ".synthdet-owned"
# one path component: ext4, xfs, btrfs and NTFS all stop at 255 bytes
MAX_NAME_BYTES = 255


class DataSourceError(RuntimeError):
    """A data source that cannot be acquired or verified; the message says what to do."""


class UnsafePathError(DataSourceError):
    """A path from data (an archive member, an annotation line) that would leave its folder."""


def check_relative(rel: str, where: str) -> PurePosixPath:
    """``rel`` as a clean relative POSIX path, or :class:`UnsafePathError` naming ``where``.

    Refused: absolute paths, drive letters, ``..``, empty names, NUL and other control
    characters, backslashes (a Windows separator), and components longer than the file system takes.
    """
    problem = None
    if not rel.strip("/"):
        problem = "empty name"
    elif any(ord(c) < 32 for c in rel):
        problem = "control character (NUL, newline, ...) in the name"
    elif "\\" in rel:
        problem = "backslash in the name"
    else:
        pure = PurePosixPath(rel)
        parts = [p for p in pure.parts if p not in ("", ".")]
        if pure.is_absolute() or (parts and parts[0].endswith(":")):
            problem = "absolute path"
        elif ".." in parts:
            problem = "'..' leaves the folder"
        elif not parts:
            problem = "names the folder itself"
        elif any(len(p.encode()) > MAX_NAME_BYTES for p in parts):
            problem = f"a name longer than {MAX_NAME_BYTES} bytes"
    if problem:
        raise UnsafePathError(f"{where}: refused path {rel[:200]!r}: {problem}")
    return PurePosixPath(*[p for p in PurePosixPath(rel).parts if p not in ("", ".")])


def inside(base: Path, rel: str, where: str) -> Path:
    """``base / rel`` for a derived file, guaranteed to stay inside ``base`` after resolving links.

    Every writer of derived files goes through this (extraction, perturbation, degrade, smoke).
    """
    target = Path(base).joinpath(*check_relative(rel, where).parts)
    resolved_base = Path(base).resolve()
    resolved = target.resolve()
    if resolved != resolved_base and resolved_base not in resolved.parents:
        raise UnsafePathError(f"{where}: {rel!r} resolves to {resolved}, outside {resolved_base}")
    if resolved == resolved_base:
        raise UnsafePathError(f"{where}: {rel!r} names the output folder itself")
    return target


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block ends
    without error, deleted otherwise: an interrupted run never leaves half a file. The temporary
    name is short, so it fits the file system even when ``path``'s own name is at its limit."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".synthdet-", suffix=".part")
    except OSError as exc:
        raise _disk_full(path, exc) or exc from None
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 otherwise: the mode any other write would give
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        full = _disk_full(path, exc)
        if full is None:
            raise
        raise full from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DiskFullError(OSError):
    """No space (or quota) left where a file was being written: the message names the file."""


def _disk_full(path: Path, exc: OSError) -> DiskFullError | None:
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    free = ""
    with contextlib.suppress(OSError):
        free = f" ({shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free there now)"
    return DiskFullError(exc.errno, f"{path}: no space left on its disk while writing it{free}; the partial file "
                                    "was removed and every finished file kept: free some space and rerun")


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting and restoring it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def hard_link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes ``source``'s file again: a hard link (no second copy on disk) where the file
    system allows one, else a copy (another file system, or links not supported)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_json(obj: dict, path: Path) -> None:
    """Sorted, indented JSON, written atomically (metrics files, reports, caches)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n").encode())


def read_json_cache(path: Path) -> dict:
    """A cache file, or ``{}`` when it is missing or broken (a warning names it; it is rebuilt)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("%s: unreadable cache (%s); rebuilding it", path, exc)
        return {}


def make_owned_dir(path: Path) -> Path:
    """Create ``path`` (it must not exist, or be empty, or be ours) and mark it as ours."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path}: exists and is not a folder; choose another place")
        if not (path / OWNED_MARKER).exists() and any(path.iterdir()):
            raise FileExistsError(f"{path}: a non-empty folder synthdet did not create; choose another place")
    path.mkdir(parents=True, exist_ok=True)
    (path / OWNED_MARKER).write_text("created by synthdet; it may delete this folder\n")
    return path


def remove_owned_dir(path: Path, protect: tuple[Path, ...] = ()) -> None:
    """Delete ``path`` only if synthdet created it (marker file) and it holds none of ``protect``
    (e.g. the checkout itself). A missing folder is fine; anything else is refused."""
    path = Path(path)
    if not path.exists():
        return
    resolved = path.resolve()
    for keep in protect:
        keep = Path(keep).resolve()
        if resolved == keep or resolved in keep.parents:
            raise PermissionError(f"{path}: refusing to delete it: it is or contains {keep}")
    if path.is_symlink() or not path.is_dir() or not (path / OWNED_MARKER).is_file():
        raise PermissionError(f"{path}: refusing to delete a folder synthdet did not create "
                              f"(no {OWNED_MARKER}); remove it yourself or choose another place")
    shutil.rmtree(path)


def replace_owned_dir(path: Path, protect: tuple[Path, ...] = ()) -> Path:
    """A fresh, empty folder of ours at ``path`` (an old one of ours is deleted first)."""
    path = Path(path)
    if path.exists() and (path / OWNED_MARKER).is_file():
        remove_owned_dir(path, protect)
    return make_owned_dir(path)


class CheckpointError(RuntimeError):
    """A checkpoint or weight file that cannot be loaded safely; the message names the file."""


def load_torch_file(path: Path, what: str = "checkpoint") -> dict:
    """``torch.load`` that never runs code from the file (``weights_only=True``) and turns every
    failure into one :class:`CheckpointError` naming the file and what to do."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        named = next((line for line in lines if "Unsupported global" in line), None)
        if named is not None:  # a pickled reference to code: what weights_only exists to refuse
            raise CheckpointError(f"{path}: refused to load this {what}: it holds Python objects other than "
                                  f"tensors and plain data, and unpickling them could run code ({named[:200]}). "
                                  "Load only files you trust, saved as a state dict.") from exc
        reason = next((line for line in lines if "Unsupported operand" in line), lines[-1] if lines else "")
        raise CheckpointError(f"{path}: unreadable {what} (not a file torch.save wrote, or damaged: "
                              f"{reason[:200] or type(exc).__name__})") from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            UnicodeDecodeError) as exc:  # what the unpickler raises on text and other non-torch bytes
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable {what} (truncated, or not a file torch.save wrote: "
                              f"{type(exc).__name__} {reason})") from exc


def file_digest(path: Path | str, algorithm: str = "sha256", chunk: int = 1 << 22) -> str:
    """Hex digest of a file read in chunks: the one hasher behind every checksum here (sha256 for
    manifests and pinned downloads, md5 for GenImage's part list, crc32 for zip and 7z members).
    Only a regular file (or a link to one) is read: a device such as /dev/zero would never end, a
    FIFO would wait forever; either is a DataSourceError naming the path (an IsADirectoryError for
    a folder, as ``open`` gives)."""
    mode = os.stat(path).st_mode  # before open: opening a FIFO would already wait
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise DataSourceError(f"{path}: not a regular file (a device, a FIFO or a socket); refused to read it")
    with open(path, "rb") as handle:
        if algorithm == "crc32":
            crc = 0
            while block := handle.read(chunk):
                crc = zlib.crc32(block, crc)
            return f"{crc:08x}"
        digest = hashlib.new(algorithm, usedforsecurity=False)
        while block := handle.read(chunk):
            digest.update(block)
        return digest.hexdigest()
