"""A split zip (``.z01`` ... ``.zNN`` + ``.zip``, as GenImage ships each subset) read in place:
no joined copy on disk, zip64 aware, extracted member by member, atomically and resumably, with
path traversal refused and every member's CRC checked."""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from synthdet.fsutil import DataSourceError, atomic_output, file_digest, inside, read_json_cache, write_json


class ConcatFile(io.RawIOBase):
    """A read-only, seekable view of several files one after another (the disks of a split zip)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.sizes = [p.stat().st_size for p in paths]
        self.starts = [sum(self.sizes[:i]) for i in range(len(paths))]
        self.total = sum(self.sizes)
        self.pos = 0
        self.handles = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed in close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.total}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:  # noqa: ANN001 - a writable buffer
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self.pos < self.total:
            i = max(k for k, s in enumerate(self.starts) if s <= self.pos)
            handle = self.handles[i]
            handle.seek(self.pos - self.starts[i])
            n = handle.readinto(view[done : done + min(len(view) - done, self.starts[i] + self.sizes[i] - self.pos)])
            if not n:
                break
            done += n
            self.pos += n
        return done

    def close(self) -> None:
        for handle in self.handles:
            handle.close()
        super().close()


@dataclass(frozen=True)
class ZipEntry:
    name: str
    method: int
    flags: int
    crc: int
    compressed_size: int
    file_size: int
    disk: int
    offset: int  # of the local header, relative to its disk


class SplitZip:
    """Reader for ``zip -s`` archives (and ordinary zips), zip64 included, read in place.

    Python's zipfile refuses archives that span disks; here each entry's local header is found
    on its own disk (``disk start`` in the central directory), and data may run across disks.
    """

    def __init__(self, paths: list[Path]) -> None:
        self.name = str(paths[-1])
        self.file = ConcatFile(paths)
        self.entries = self._central_directory(len(paths))

    def __enter__(self) -> SplitZip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def _at(self, disk: int, offset: int, size: int) -> bytes:
        if disk >= len(self.file.starts):
            n = len(self.file.starts)
            raise DataSourceError(f"{self.name}: refers to disk {disk + 1}, but only {n} parts were given")
        self.file.seek(self.file.starts[disk] + offset)
        return self.file.read(size)

    def _central_directory(self, n_parts: int) -> list[ZipEntry]:
        tail_len = min(self.file.total, 65536 + 22)
        self.file.seek(self.file.total - tail_len)
        tail = self.file.read(tail_len)
        i = tail.rfind(b"PK\x05\x06")
        if i < 0:
            raise DataSourceError(f"{self.name}: no end-of-central-directory record; the last part is truncated")
        _, disk_no, cd_disk, _, n_total, cd_size, cd_off, _ = struct.unpack("<IHHHHIIH", tail[i : i + 22])
        if i >= 20 and tail[i - 20 : i - 16] == b"PK\x06\x07":  # zip64 locator
            _, z_disk, z_off, _ = struct.unpack("<IIQI", tail[i - 20 : i])
            rec = self._at(z_disk, z_off, 56)
            _, _, _, _, disk_no, cd_disk, _, n_total, cd_size, cd_off = struct.unpack("<IQHHIIQQQQ", rec)
        if disk_no + 1 != n_parts:
            raise DataSourceError(f"{self.name}: the archive has {disk_no + 1} disks but {n_parts} parts were given")
        cd = self._at(cd_disk, cd_off, cd_size)
        entries, pos = [], 0
        for _ in range(n_total):
            if cd[pos : pos + 4] != b"PK\x01\x02":
                raise DataSourceError(f"{self.name}: corrupt central directory at entry {len(entries)}")
            (flags, method, crc, csize, usize, n_len, x_len, c_len, disk) = struct.unpack(
                "<8xHH4xIIIHHHH", cd[pos : pos + 36])
            (offset,) = struct.unpack("<I", cd[pos + 42 : pos + 46])
            name = cd[pos + 46 : pos + 46 + n_len].decode("utf-8" if flags & 0x800 else "cp437")
            extra = cd[pos + 46 + n_len : pos + 46 + n_len + x_len]
            usize, csize, offset, disk = _zip64_fields(extra, usize, csize, offset, disk)
            entries.append(ZipEntry(name, method, flags, crc, csize, usize, disk, offset))
            pos += 46 + n_len + x_len + c_len
        return entries

    def namelist(self) -> list[str]:
        return [e.name for e in self.entries]

    def copy_to(self, entry: ZipEntry, dst: io.BufferedWriter, chunk: int = 1 << 20) -> None:
        """Decompress ``entry`` into ``dst``, never producing more than its declared size (a zip
        bomb stops at the first byte past it), and check its length and CRC-32."""
        where = f"{self.name}: entry {entry.name!r}"
        if entry.flags & 0x1:
            raise DataSourceError(f"{where}: encrypted entries are not supported")
        if entry.method not in (0, 8):
            raise DataSourceError(f"{where}: compression method {entry.method} is not supported")
        if entry.method == 0 and entry.compressed_size != entry.file_size:
            raise DataSourceError(f"{where}: stored entry with compressed size {entry.compressed_size} "
                                  f"!= size {entry.file_size} (corrupt directory)")
        head = self._at(entry.disk, entry.offset, 30)
        if head[:4] != b"PK\x03\x04":
            raise DataSourceError(f"{where}: no local header where the directory says (corrupt part?)")
        n_len, x_len = struct.unpack("<HH", head[26:30])
        self.file.seek(self.file.starts[entry.disk] + entry.offset + 30 + n_len + x_len)
        inflate = zlib.decompressobj(-15) if entry.method == 8 else None
        crc, written, left = 0, 0, entry.compressed_size

        def emit(data: bytes) -> None:
            nonlocal crc, written
            written += len(data)
            if written > entry.file_size:
                raise DataSourceError(f"{where}: inflates past its declared {entry.file_size:,} bytes "
                                      "(a zip bomb or a corrupt archive); refused")
            crc = zlib.crc32(data, crc)
            dst.write(data)

        try:
            while left:
                block = self.file.read(min(chunk, left))
                if not block:
                    raise DataSourceError(f"{where}: data ends early (truncated part)")
                left -= len(block)
                if inflate is None:
                    emit(block)
                    continue
                while block:  # bounded output per call: memory stays at ``chunk``
                    emit(inflate.decompress(block, chunk))
                    block = inflate.unconsumed_tail
            if inflate is not None:
                emit(inflate.flush())
        except zlib.error as exc:
            raise DataSourceError(f"{where}: corrupt deflate data ({exc})") from exc
        if written != entry.file_size:
            raise DataSourceError(f"{where}: {written:,} bytes, the directory declares {entry.file_size:,}")
        if crc != entry.crc:
            raise DataSourceError(f"{where}: CRC mismatch (corrupt archive data)")


def _zip64_fields(extra: bytes, usize: int, csize: int, offset: int, disk: int) -> tuple[int, int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack("<HH", extra[pos : pos + 4])
        if tag == 0x0001:
            body, k = extra[pos + 4 : pos + 4 + size], 0
            if usize == 0xFFFFFFFF:
                (usize,), k = struct.unpack("<Q", body[k : k + 8]), k + 8
            if csize == 0xFFFFFFFF:
                (csize,), k = struct.unpack("<Q", body[k : k + 8]), k + 8
            if offset == 0xFFFFFFFF:
                (offset,), k = struct.unpack("<Q", body[k : k + 8]), k + 8
            if disk == 0xFFFF:
                (disk,) = struct.unpack("<I", body[k : k + 4])
        pos += 4 + size
    return usize, csize, offset, disk


def planned_targets(archive: SplitZip, out: Path) -> dict[str, tuple[ZipEntry, Path]]:
    """Every file entry's target under ``out``, checked before anything is written: a name that
    is empty, ``.``, absolute, ``..``, has NUL or is too long for the file system, two entries
    for one path, and a file entry where another entry needs a folder, are errors naming the archive
    and the entries."""
    targets: dict[str, tuple[ZipEntry, Path]] = {}
    for entry in archive.entries:
        if entry.name.endswith("/") and entry.name.strip("/") not in ("", "."):
            continue  # a folder entry
        target = inside(out, entry.name, f"{archive.name}: entry")
        key = target.as_posix()
        if key in targets:
            raise DataSourceError(f"{archive.name}: entries {targets[key][0].name!r} and {entry.name!r} "
                                  "both extract to the same path; refused (a corrupt or crafted archive)")
        targets[key] = (entry, target)
    needs_folder: dict[str, str] = {}  # a folder some entry extracts into -> that entry
    root = Path(out).as_posix()
    for key, (entry, _) in targets.items():
        folder = os.path.dirname(key)
        while len(folder) > len(root) and folder not in needs_folder:
            needs_folder[folder] = entry.name
            folder = os.path.dirname(folder)
    clash = next((key for key in targets if key in needs_folder), None)
    if clash is not None:  # e.g. a symbolic link stored where the archive's other entries see a folder
        raise DataSourceError(f"{archive.name}: entry {targets[clash][0].name!r} is a file where entry "
                              f"{needs_folder[clash]!r} needs a folder; refused (a corrupt or crafted archive)")
    return targets


def extract(archive: SplitZip, out: Path, desc: str = "extract", verify_existing: bool = False) -> dict[str, int]:
    """Extract every member atomically (temporary name, then rename), resumably.

    A file already there is kept when it is recorded in the extraction log with the same size,
    mtime and CRC, or when its own CRC-32 matches the entry (checked for every kept file with
    ``verify_existing``); otherwise it is extracted again.
    """
    targets = planned_targets(archive, out)
    log_path = out / f".extract-log-{Path(archive.name).stem}.json"
    done = read_json_cache(log_path)
    counts = {"extracted": 0, "skipped": 0}
    try:
        for k, (entry, target) in enumerate(tqdm(targets.values(), desc=desc)):
            if target.is_file():
                st = target.stat()
                record = [st.st_size, st.st_mtime_ns, entry.crc]
                if st.st_size == entry.file_size and (
                        (not verify_existing and done.get(entry.name) == record)
                        or file_digest(target, "crc32") == f"{entry.crc:08x}"):
                    done[entry.name] = record
                    counts["skipped"] += 1
                    continue
            with atomic_output(target) as tmp, open(tmp, "wb") as dst:
                archive.copy_to(entry, dst)
            st = target.stat()
            done[entry.name] = [st.st_size, st.st_mtime_ns, entry.crc]
            counts["extracted"] += 1
            if k % 1000 == 999:
                write_json(done, log_path)
    finally:
        if done:
            write_json(done, log_path)
    return counts
