"""GenImage as distributed: one split zip per subset (``.z01`` ... ``.zNN`` + ``.zip``).

``ingest`` finds every subset's parts, verifies their MD5s against the community checksums shipped
in ``reference/`` and extracts them with :mod:`synthdet.genimage.splitzip`; the extracted tree is
then indexed by :func:`synthdet.genimage.layout.index_genimage_tree`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from synthdet.data.indexcache import listing_fingerprint, tree_files
from synthdet.fsutil import DataSourceError, file_digest, read_json_cache, write_json
from synthdet.genimage.layout import REFERENCE, SUBSETS
from synthdet.genimage.splitzip import SplitZip, extract

# Google Drive may add "-NNN" before the extension of a downloaded part
PART_RE = re.compile(r"^(?P<subset>[a-z0-9_]+?)(?:-\d{3})?\.(?P<ext>zip|z\d{2,3})$", re.IGNORECASE)


def load_checksums(path: Path = REFERENCE / "checksums.csv") -> dict[str, str]:
    """Part file name -> MD5. A name listed twice must carry the same checksum."""
    out: dict[str, str] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            name, md5 = row["originalFilename"].strip(), row["md5Checksum"].strip().lower()
            if out.get(name, md5) != md5:
                raise DataSourceError(f"{path}: {name} is listed with two different MD5s")
            out[name] = md5
    return out



@dataclass(frozen=True)
class Part:
    path: Path
    canonical: str  # the name without Google Drive's -NNN suffix
    index: int  # .z01 -> 1 ... ; .zip (the last disk) -> large


def find_parts(source: Path, subset: str, checksums: dict[str, str]) -> list[Part]:
    """The parts of ``subset`` in ``source``, in disk order; errors name what is missing."""
    parts: dict[str, Part] = {}
    for path in sorted(source.iterdir()):
        m = PART_RE.match(path.name)
        if not m or m["subset"] != subset:
            continue
        ext = m["ext"].lower()
        canonical = f"{subset}.{ext}"
        if canonical in parts:
            raise DataSourceError(f"{source}: two files for {canonical}: {parts[canonical].path.name}, {path.name}")
        parts[canonical] = Part(path, canonical, 10**6 if ext == "zip" else int(ext[1:]))
    expected = sorted(n for n in checksums if n.startswith(f"{subset}."))
    missing = [n for n in expected if n not in parts]
    if not parts:
        hint = f" (expected {expected[0]} ... {expected[-1]})" if expected else ""
        raise DataSourceError(f"{source}: no archive parts for {subset}{hint}")
    if missing:
        raise DataSourceError(f"{source}: {subset} is missing {len(missing)} of {len(expected)} parts: {missing}")
    return sorted(parts.values(), key=lambda p: p.index)



def verify_parts(parts: list[Part], checksums: dict[str, str], cache: Path) -> None:
    """MD5 of every part; results are cached by (size, mtime) so a resumed run does not re-hash."""
    seen = read_json_cache(cache)
    bad = []
    for part in tqdm(parts, desc="md5"):
        stat = part.path.stat()
        key = f"{part.path.name}:{stat.st_size}:{stat.st_mtime_ns}"
        md5 = seen.get(key) or file_digest(part.path, "md5")
        seen[key] = md5
        expected = checksums.get(part.canonical)
        if expected is None:
            bad.append(f"{part.path.name}: not in the checksum list")
        elif md5 != expected:
            bad.append(f"{part.path.name}: md5 {md5}, expected {expected} (re-download this part)")
    write_json(seen, cache)
    if bad:
        raise DataSourceError("GenImage parts failed verification:\n  " + "\n  ".join(bad))



def ingest(source: Path, out: Path, subsets: list[str] | None = None,
           checksums: dict[str, str] | None = None, verify_extracted: bool = False) -> dict[str, dict[str, int]]:
    """Archives in ``source`` -> verified, extracted subsets under ``out``.

    Subsets already extracted in ``source`` (a folder with ``train/`` and ``val/``) are used as
    they are. ``verify_extracted`` re-checks the CRC of every file a previous run extracted.
    Returns per-subset extraction counts.
    """
    checksums = checksums if checksums is not None else load_checksums()
    report = {}
    for subset in subsets or list(SUBSETS):
        if (source / subset / "train").is_dir() and (source / subset / "val").is_dir():
            report[subset] = {"already_extracted": 1}
            continue
        parts = find_parts(source, subset, checksums)
        verify_parts(parts, checksums, out / ".md5_cache.json")
        with SplitZip([p.path for p in parts]) as archive:
            names = {Path(n).parts[0] for n in archive.namelist() if Path(n).parts}  # "." has none
            if subset not in names:
                raise DataSourceError(f"{parts[-1].path}: expected a top-level folder {subset}/, found {sorted(names)}")
            report[subset] = extract(archive, out, desc=subset, verify_existing=verify_extracted)
    return report


def source_fingerprint(source: Path, subsets: list[str] | None = None, checksums: Path | None = None) -> dict:
    """What the download stage reads from ``source``, without opening a file: per subset, the
    archive parts' names, sizes and modification times (or, for a subset already extracted in
    ``source``, every file's), digested. A re-downloaded part or a deleted image changes it; the
    parts' MD5s are checked by the download stage itself (cached by size and mtime)."""
    source = Path(source)
    if not source.is_dir():
        raise DataSourceError(f"{source}: GenImage source folder does not exist (data.genimage.source)")
    found = {m["subset"] for p in source.iterdir() if (m := PART_RE.match(p.name))}
    found |= {p.name for p in source.iterdir() if (p / "train").is_dir() and (p / "val").is_dir()}
    out: dict = {}
    for subset in sorted(subsets or (found & set(SUBSETS)) or found):
        if (source / subset / "train").is_dir() and (source / subset / "val").is_dir():
            out[subset] = {"kind": "extracted", **listing_fingerprint(tree_files(source / subset), source)}
        else:
            parts = [p for p in source.iterdir() if (m := PART_RE.match(p.name)) and m["subset"] == subset]
            out[subset] = {"kind": "archives", **listing_fingerprint(parts, source)}
    if checksums is not None:
        out["checksums"] = {"path": str(checksums), "sha256": file_digest(checksums)}
    return out


def subset_root(source: Path, out: Path, subset: str) -> Path:
    return source if (source / subset / "train").is_dir() else out
