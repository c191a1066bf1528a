"""ImagiNet (Boychev and Cholakov, 2024): annotation files and the perturbed test set.

Annotation lines are ``path,origin,content,family,specific`` with paths relative to the dataset
root (``./imagenet/ILSVRC/Data/CLS-LOC/val/...JPEG``, ``./ffhq_stylegan/<uuid>.png``, ...).
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from synthdet.data.imageio import ImageDecodeError, load_rgb
from synthdet.data.indexcache import file_stat, listing_fingerprint
from synthdet.fsutil import DataSourceError, atomic_write_bytes, check_relative, file_digest, inside, replace_owned_dir
from synthdet.machine import die_with_parent
from synthdet.seeding import rng_for
from synthdet.transforms.degrade import compress

CONTENT = {0: "photos", 1: "paintings", 2: "faces", 3: "uncategorized"}
FAMILY = {0: "gan", 1: "sd", 2: "midjourney", 3: "dalle3", 4: "real"}
SPECIFIC = {0: "progan", 1: "stylegan_xl", 2: "stylegan3", 3: "sd_v2.1", 4: "sdxl_v1.0", 5: "animagine_xl",
            6: "midjourney", 7: "dalle3", 8: "real"}
FIELDS = ("path", "origin", "content", "family", "specific")
REAL = "real"
CODES_FILE = "codes.json"  # what an exported dataset's integer fields mean, beside its annotation files
ANNOTATION_FILES = {"train": "train_annotations.txt", "test": "test_annotations.txt", "calibration": "calibration.txt"}


@dataclass(frozen=True)
class Codes:
    """What the integer fields of an annotation file mean. ImagiNet's own tables by default; a
    dataset written in ImagiNet's format by :func:`write_dataset` (the embedded benchmark) has its
    own families and generators, stored in ``annotations/codes.json``. ``real`` is the family and
    the generator of every real image."""

    content: dict[int, str]
    family: dict[int, str]
    specific: dict[int, str]

    @classmethod
    def for_generators(cls, families: list[str], generators: list[str]) -> Codes:
        """Codes for another dataset: its families and generators, sorted, then ``real``."""
        table = lambda names: dict(enumerate([*sorted(set(names) - {REAL}), REAL]))  # noqa: E731
        return cls(dict(CONTENT), table(families), table(generators))

    def real_family(self) -> int:
        return next(k for k, v in self.family.items() if v == REAL)

    def real_specific(self) -> int:
        return next(k for k, v in self.specific.items() if v == REAL)

    def to_json(self) -> str:
        return json.dumps({"content": self.content, "family": self.family, "specific": self.specific}, indent=1)

    @classmethod
    def read(cls, path: Path) -> Codes:
        """``codes.json`` (integer keys); refused, naming the file, when a table or ``real`` is missing."""
        try:
            raw = json.loads(Path(path).read_text())
            codes = cls(*({int(k): str(v) for k, v in raw[name].items()} for name in ("content", "family", "specific")))
            codes.real_family(), codes.real_specific()
        except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration) as exc:
            raise DataSourceError(f"{path}: not a codes file (content, family and specific tables with "
                                  f"{REAL!r}): {exc!r}") from exc
        return codes

    @classmethod
    def beside(cls, annotation: Path) -> Codes:
        """The codes of the dataset ``annotation`` belongs to: its ``codes.json`` if it has one, else ImagiNet's."""
        path = Path(annotation).parent / CODES_FILE
        return cls.read(path) if path.is_file() else IMAGINET_CODES


IMAGINET_CODES = Codes(CONTENT, FAMILY, SPECIFIC)
# the packed distribution's ready perturbed test set: its lists and its folder
READY_LISTS = {"test_all.txt", *(f"test_{family}.txt" for family in FAMILY.values() if family != "real")}
READY_FOLDER = "testset"
PERTURBED_LIST = "test_perturbed.txt"  # what build_perturbed writes
PERTURB_LOG = "perturb_log.jsonl"
PERTURB_VERSION = 2  # 2: small images padded, not upscaled (a log of another version is not resumed)


_INT = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit() also takes "²" and int() refuses it


def read_annotations(path: Path, codes: Codes | None = None) -> pd.DataFrame:
    """Parse one annotation file; every malformed line is reported with its number.

    Refused, with ``file:line``: bytes that are not UTF-8 (a BOM is fine), fields that are not
    plain integers or not in ``codes`` (default: the ``codes.json`` beside the file, else
    ImagiNet's), paths that are absolute or leave the dataset root, and an image listed twice.
    """
    path = Path(path)
    codes = codes or Codes.beside(path)
    if not path.is_file():
        raise DataSourceError(f"{path}: annotation file not found")
    rows, errors, first_line = [], [], {}
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError as exc:
            errors.append(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        if not line or (number == 1 and line.lower().startswith("path")):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5 or not all(_INT.fullmatch(p) for p in parts[1:]):
            errors.append(f"{where}: expected path,origin,content,family,specific, got {line[:80]!r}")
            continue
        rel, origin, content, family, specific = parts[0], *map(int, parts[1:])
        try:
            rel = check_relative(rel, where).as_posix()
        except DataSourceError as exc:
            errors.append(str(exc))
            continue
        fields = (("origin", origin, {0: 0, 1: 1}), ("content", content, codes.content),
                  ("family", family, codes.family), ("specific", specific, codes.specific))
        problems = [name for name, value, table in fields if value not in table]
        if (origin == 0) != (family == codes.real_family()) or (origin == 0) != (specific == codes.real_specific()):
            problems.append("origin disagrees with family/specific")
        if problems:
            errors.append(f"{where}: invalid {', '.join(problems)} in {line[:80]!r}")
            continue
        if rel in first_line:
            errors.append(f"{where}: {rel} is already listed on line {first_line[rel]}")
            continue
        first_line[rel] = number
        rows.append({"relpath": rel, "label": origin, "content": codes.content[content],
                     "family": codes.family[family], "generator": codes.specific[specific], "specific": specific})
    if errors:
        raise DataSourceError(f"{len(errors)} bad annotation lines, first: " + "; ".join(errors[:3]))
    if not rows:
        raise DataSourceError(f"{path}: no annotation lines")
    return pd.DataFrame(rows)


def source_fingerprint(root: Path, annotations: dict[str, str | None]) -> dict:
    """What the download stage reads from ImagiNet, without decoding: each annotation file's
    sha256 and the names, sizes and modification times of every image it lists (a missing one
    counts as a state). Parses the files strictly, so a bad line fails here, before any long work.
    For the packed distribution, the archive parts' names, sizes and modification times."""
    root = Path(root)
    if (archive := find_archive(root)) is not None:
        parts = sorted(root.glob(f"{archive.name[:-4]}.[0-9][0-9][0-9]")) if archive.suffix == ".001" else [archive]
        return {"archive": listing_fingerprint(parts, root)}
    out: dict = {}
    for split, rel in annotations.items():
        if not rel:
            continue
        path = root / rel
        table = read_annotations(path)
        files = [root / r for r in table["relpath"]]
        out[split] = {"annotations": rel, "sha256": file_digest(path),
                      **listing_fingerprint(files, root)}
    return out


def ready_testset(annotation: Path, table: pd.DataFrame) -> str | None:
    """Why the test list ``annotation`` is already a perturbed test set (None when it is not):
    ImagiNet's packed distribution ships one (``annotations/test_all.txt`` and per-family
    ``test_<family>.txt``, images under ``testset/``), and this module writes ``test_perturbed.txt``.
    Perturbing either again would crop and compress every image twice."""
    name = Path(annotation).name
    if name == PERTURBED_LIST:
        return f"{name} is a test set this tool already perturbed"
    if name in READY_LISTS:
        return f"{name} lists ImagiNet's ready perturbed test set (the packed distribution's)"
    if len(table) and table["relpath"].str.startswith(f"{READY_FOLDER}/").all():
        return f"every image it lists is under {READY_FOLDER}/, ImagiNet's ready perturbed test set"
    return None


def perturb(img: Image.Image, rng: np.random.Generator, size: int = 256, p_compress: float = 0.75,
            quality: tuple[int, int] = (60, 100), max_crop: int = 1000) -> tuple[Image.Image, dict]:
    """The paper's test-time perturbation (ImagiNet's ``save_testset.py``): a random square crop
    with side uniform in [size, max(min(short side, max_crop), size)]; an image smaller than the
    crop is padded with black on both sides (as torchvision's ``RandomCrop(pad_if_needed=True)``),
    never upscaled; Lanczos resize to ``size``; then with probability ``p_compress`` JPEG or WebP
    at a quality uniform in ``quality``."""
    w, h = img.size
    side = int(rng.integers(size, max(min(w, h, max_crop), size) + 1))
    pad_w, pad_h = max(0, side - w), max(0, side - h)
    if pad_w or pad_h:
        canvas = Image.new("RGB", (w + 2 * pad_w, h + 2 * pad_h))
        canvas.paste(img, (pad_w, pad_h))
        img, (w, h) = canvas, canvas.size
    left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    out = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
    info = {"crop_side": side, "crop_left": left, "crop_top": top, "padded": bool(pad_w or pad_h),
            "codec": "none", "quality": None}
    if rng.random() < p_compress:
        codec = "JPEG" if rng.random() < 0.5 else "WEBP"
        q = int(rng.integers(quality[0], quality[1] + 1))
        out = compress(out, codec, q)
        info.update(codec=codec.lower(), quality=q)
    return out, info


def _read_log(log: Path, header: dict) -> dict[str, dict]:
    """The rows of an earlier run with the same perturbation (``header``), by relpath; ``{}`` when
    there is none or it was made with other settings. A torn last line (a kill mid-write) is skipped."""
    if not log.is_file():
        return {}
    lines = log.read_text(errors="replace").splitlines()
    try:
        if not lines or json.loads(lines[0]) != header:
            return {}
    except ValueError:
        return {}
    done = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        done[row["relpath"]] = row
    return done


def _perturb_one(source: Path, target: Path, seed: int, relpath: str, size: int, p_compress: float) -> dict:
    """One image's perturbation written as PNG; what its log row adds (or why it could not be read).
    A pure function of its arguments (seeded per path): any process gives the same bytes."""
    try:
        img, info = perturb(load_rgb(source), rng_for(seed, relpath), size, p_compress)
    except ImageDecodeError as exc:
        return {"status": exc.status, "error": exc.problem, "path": None}
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(target, buf.getvalue())
    return info | {"status": "ok", "error": ""}


PARALLEL_FROM = 64  # images to perturb before worker processes pay for their start (about 2 s each)


def build_perturbed(annotations: pd.DataFrame, root: Path, out: Path, seed: int, size: int = 256,
                    p_compress: float = 0.75, codes: Codes = IMAGINET_CODES,
                    processes: int | None = None) -> pd.DataFrame:
    """Perturb every annotated image (seeded per path) and store it losslessly as PNG.

    Writes ``out/<relpath>.png`` and ``out/test_perturbed.txt`` in the original annotation format.
    Undecodable images are kept as rows with a status, never silently dropped. Resumable: each
    finished image is logged (``out/perturb_log.jsonl``), and a rerun with the same settings
    redoes only the images not logged, or whose source file changed since (size, mtime).
    ``processes``: worker processes (None: one per core; 1: this process), the same bytes either way.
    """
    out = Path(out)
    header = {"seed": seed, "size": size, "p_compress": p_compress, "version": PERTURB_VERSION}
    log_path = out / PERTURB_LOG
    done = _read_log(log_path, header)
    if not done:
        replace_owned_dir(out)  # another perturbation's images (or none yet): start over
        log_path.write_text(json.dumps(header) + "\n")
    rows: list[dict] = []
    todo: list[int] = []  # positions in rows still to perturb
    for r in annotations.itertuples(index=False):
        source = root / r.relpath
        target = inside(out, r.relpath + ".png", "perturbed test set")
        stat = file_stat(source)
        row = r._asdict() | {"source_path": source.as_posix(), "path": target.as_posix(),
                             "source_size": stat[0] if stat else -1, "source_mtime": stat[1] if stat else -1}
        old = done.get(r.relpath)
        if (old and (old["source_size"], old["source_mtime"]) == (row["source_size"], row["source_mtime"])
                and (old["status"] != "ok" or target.is_file())):
            rows.append(old)
            continue
        todo.append(len(rows))
        rows.append(row)
    jobs = [(Path(rows[i]["source_path"]), Path(rows[i]["path"]), seed, rows[i]["relpath"], size, p_compress)
            for i in todo]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(processes or cores, len(jobs)) if len(jobs) >= PARALLEL_FROM or processes else 1
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=die_with_parent, initargs=(os.getpid(),))
            stack.callback(pool.shutdown, cancel_futures=True)  # an error stops the queued images too
            results = pool.map(_perturb_one, *zip(*jobs, strict=True), chunksize=16) if jobs else iter(())
        else:
            results = (_perturb_one(*job) for job in jobs)
        with log_path.open("a") as log:
            for i, added in zip(todo, tqdm(results, total=len(jobs), desc="perturb"), strict=True):
                rows[i] |= added
                log.write(json.dumps(rows[i], default=int) + "\n")
                log.flush()
    table = pd.DataFrame(rows)
    ok = table[table["status"] == "ok"]
    atomic_write_bytes(out / PERTURBED_LIST, annotation_text(ok.assign(relpath=ok["relpath"] + ".png"), codes))
    table.attrs["perturbed_now"] = len(jobs)
    return table


def annotation_text(rows: pd.DataFrame, codes: Codes) -> bytes:
    """Rows (relpath, label, content, family, generator) as lines ``./path,origin,content,family,specific``."""
    inverse = {name: {v: k for k, v in getattr(codes, name).items()} for name in ("content", "family", "specific")}
    lines = [f"./{p},{int(o)},{inverse['content'][c]},{inverse['family'][f]},{inverse['specific'][g]}"
             for p, o, c, f, g in zip(rows["relpath"], rows["label"], rows["content"], rows["family"],
                                      rows["generator"], strict=True)]
    return ("\n".join(lines) + "\n").encode()


def write_dataset(splits: dict[str, pd.DataFrame], out: Path, codes: Codes) -> dict[str, Path]:
    """Another dataset in ImagiNet's format: one annotation file per split (``ANNOTATION_FILES``)
    under ``out/annotations`` and the ``codes.json`` saying what its integers mean. Rows need
    relpath (relative to the dataset root), label, content (ImagiNet's four), family, generator."""
    folder = Path(out) / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / CODES_FILE, codes.to_json().encode())
    written = {}
    for split, rows in splits.items():
        written[split] = inside(folder, ANNOTATION_FILES[split], "annotation file")
        atomic_write_bytes(written[split], annotation_text(rows, codes))
    return written


def too_many_missing(root: Path, split: str, count: int, total: int, max_missing: float, what: str,
                     examples: list[str]) -> DataSourceError | None:
    """The error that stops a run when more than ``max_missing`` (a share) of a split's images are
    ``what`` (missing; missing or unreadable), with the count and examples; None when within it."""
    if count <= max_missing * total:
        return None
    return DataSourceError(
        f"{root}: {count} of the {total} images of the {split} split are {what} ({count / total:.1%}, more than "
        f"data.imaginet.max_missing = {max_missing:.1%}), e.g. {'; '.join(examples[:3])}: is data.imaginet.root "
        "the dataset root, and is the download complete?")


def check_missing(tables: dict[str, pd.DataFrame], root: Path, max_missing: float) -> dict[str, int]:
    """Count the annotated images that do not exist, per split; stop, with the count and
    examples, when more than ``max_missing`` (a share) of a split's are gone: before any long work,
    rather than running on what is left."""
    counts = {}
    for split, table in tables.items():
        missing = [rel for rel in table["relpath"] if not (root / rel).is_file()]
        counts[split] = len(missing)
        if error := too_many_missing(root, split, len(missing), len(table), max_missing, "missing", missing):
            raise error
    return counts


def find_archive(root: Path) -> Path | None:
    """The packed distribution's first part (``*.7z.001``, or a single ``*.7z``) in ``root``."""
    parts = sorted(Path(root).glob("*.7z.001")) or sorted(Path(root).glob("*.7z"))
    return parts[0] if parts else None
