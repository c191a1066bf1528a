"""Reader for Qt binary resource archives (``.rcc``), the container GCompris ships its photos in.

Format (qtbase ``src/corelib/io/qresource.cpp`` / ``tools/rcc``): a ``qres`` header with offsets of
a tree of fixed-size nodes, a names table (UTF-16BE) and a data table (u32 size + payload, payload
optionally zlib-compressed with Qt's 4-byte length prefix, or zstd).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_FLAG_COMPRESSED = 0x01
_FLAG_DIRECTORY = 0x02
_FLAG_COMPRESSED_ZSTD = 0x04


class RccError(ValueError):
    """A file that is not a readable Qt resource archive."""


@dataclass(frozen=True)
class RccEntry:
    path: str
    data: bytes


def _u16(buf: bytes, off: int) -> int:
    return struct.unpack_from(">H", buf, off)[0]


def _u32(buf: bytes, off: int) -> int:
    return struct.unpack_from(">I", buf, off)[0]


def iter_rcc(source: Path | bytes, name: str = "<bytes>") -> Iterator[RccEntry]:
    """Yield every file stored in an rcc archive with its decompressed bytes."""
    if isinstance(source, Path):
        name = str(source)
        buf = source.read_bytes()
    else:
        buf = source
    if len(buf) < 20 or buf[:4] != b"qres":
        raise RccError(f"{name}: not a Qt resource archive (missing 'qres' magic)")
    version = _u32(buf, 4)
    if version not in (1, 2, 3):
        raise RccError(f"{name}: unsupported rcc format version {version}")
    tree, data, names = _u32(buf, 8), _u32(buf, 12), _u32(buf, 16)
    node_size = 14 + (8 if version >= 2 else 0)

    def node_name(index: int) -> str:
        off = names + _u32(buf, tree + index * node_size)
        length = _u16(buf, off)
        raw = buf[off + 6 : off + 6 + 2 * length]
        if len(raw) != 2 * length:
            raise RccError(f"{name}: the name of tree node {index} is cut short (truncated archive)")
        return raw.decode("utf-16-be")

    def walk(index: int, prefix: str, depth: int) -> Iterator[RccEntry]:
        if depth > 64:
            raise RccError(f"{name}: directory tree deeper than 64 levels (corrupt archive?)")
        base = tree + index * node_size
        if base + node_size > len(buf):
            raise RccError(f"{name}: tree node {index} lies past the end of the file")
        flags = _u16(buf, base + 4)
        if flags & _FLAG_DIRECTORY:
            count, first = _u32(buf, base + 6), _u32(buf, base + 10)
            for child in range(first, first + count):
                yield from walk(child, f"{prefix}{node_name(child)}/", depth + 1)
            return
        off = data + _u32(buf, base + 10)
        size = _u32(buf, off)
        payload = buf[off + 4 : off + 4 + size]
        if len(payload) != size:
            raise RccError(f"{name}: entry {prefix[:-1]} is truncated")
        if flags & _FLAG_COMPRESSED:
            payload = zlib.decompress(payload[4:])
        elif flags & _FLAG_COMPRESSED_ZSTD:
            raise RccError(f"{name}: entry {prefix[:-1]} is zstd-compressed, which is not supported")
        yield RccEntry(prefix[:-1], payload)

    try:
        yield from walk(0, "", 0)
    except (struct.error, UnicodeDecodeError, zlib.error) as exc:  # an offset or name past the end
        raise RccError(f"{name}: truncated or corrupt Qt resource archive ({type(exc).__name__}: "
                       f"{str(exc)[:120]})") from exc
