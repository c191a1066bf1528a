"""ImagiNet (Boychev and Cholakov, 2024): annotation files and the perturbed test set.

Annotation lines are ``path,origin,content,family,specific`` with paths relative to the dataset
root (``./imagenet/ILSVRC/Data/CLS-LOC/val/...JPEG``, ``./ffhq_stylegan/<uuid>.png``, ...).
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from synthdet.data.imageio import ImageDecodeError, load_rgb
from synthdet.data.indexcache import listing_fingerprint
from synthdet.degrade import compress
from synthdet.fsutil import DataSourceError, atomic_write_bytes, check_relative, inside
from synthdet.seeding import rng_for

CONTENT = {0: "photos", 1: "paintings", 2: "faces", 3: "uncategorized"}
FAMILY = {0: "gan", 1: "sd", 2: "midjourney", 3: "dalle3", 4: "real"}
SPECIFIC = {0: "progan", 1: "stylegan_xl", 2: "stylegan3", 3: "sd_v2.1", 4: "sdxl_v1.0", 5: "animagine_xl",
            6: "midjourney", 7: "dalle3", 8: "real"}
FIELDS = ("path", "origin", "content", "family", "specific")


_INT = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit() also takes "²" and int() refuses it


def read_annotations(path: Path) -> pd.DataFrame:
    """Parse one annotation file; every malformed line is reported with its number.

    Refused, with ``file:line``: bytes that are not UTF-8 (a BOM is fine), fields that are not
    plain integers or not ImagiNet's codes, paths that are absolute or leave the dataset root,
    and an image listed twice.
    """
    path = Path(path)
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
        problems = [name for name, value, table in (("origin", origin, {0: 0, 1: 1}), ("content", content, CONTENT),
                                                    ("family", family, FAMILY), ("specific", specific, SPECIFIC))
                    if value not in table]
        if (origin == 0) != (family == 4) or (origin == 0) != (specific == 8):
            problems.append("origin disagrees with family/specific")
        if problems:
            errors.append(f"{where}: invalid {', '.join(problems)} in {line[:80]!r}")
            continue
        if rel in first_line:
            errors.append(f"{where}: {rel} is already listed on line {first_line[rel]}")
            continue
        first_line[rel] = number
        rows.append({"relpath": rel, "label": origin, "content": CONTENT[content],
                     "family": FAMILY[family], "generator": SPECIFIC[specific], "specific": specific})
    if errors:
        raise DataSourceError(f"{len(errors)} bad annotation lines, first: " + "; ".join(errors[:3]))
    if not rows:
        raise DataSourceError(f"{path}: no annotation lines")
    return pd.DataFrame(rows)


def source_fingerprint(root: Path, annotations: dict[str, str]) -> dict:
    """What the download stage reads from ImagiNet, without decoding: each annotation file's
    sha256 and the names, sizes and modification times of every image it lists (a missing one
    counts as a state). Parses the files strictly, so a bad line fails here, before any long work."""
    root = Path(root)
    out: dict = {}
    for split, rel in annotations.items():
        path = root / rel
        table = read_annotations(path)
        files = [root / r for r in table["relpath"]]
        out[split] = {"annotations": rel, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                      **listing_fingerprint(files, root)}
    return out


def perturb(img: Image.Image, rng: np.random.Generator, size: int = 256, p_compress: float = 0.75,
            quality: tuple[int, int] = (60, 100), max_crop: int = 1000) -> tuple[Image.Image, dict]:
    """The paper's test-time perturbation: random square crop (side in [size, min(short, max_crop)]),
    Lanczos resize to ``size``, then with probability ``p_compress`` JPEG or WebP at a random quality."""
    w, h = img.size
    short = min(w, h)
    side = int(rng.integers(min(size, short), max(min(size, short), min(short, max_crop)) + 1))
    left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    out = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
    info = {"crop_side": side, "crop_left": left, "crop_top": top, "codec": "none", "quality": None}
    if rng.random() < p_compress:
        codec = "JPEG" if rng.random() < 0.5 else "WEBP"
        q = int(rng.integers(quality[0], quality[1] + 1))
        out = compress(out, codec, q)
        info.update(codec=codec.lower(), quality=q)
    return out, info


def build_perturbed(annotations: pd.DataFrame, root: Path, out: Path, seed: int, size: int = 256,
                    p_compress: float = 0.75) -> pd.DataFrame:
    """Perturb every annotated image (seeded per path) and store it losslessly as PNG.

    Writes ``out/<relpath>.png`` and ``out/test_perturbed.txt`` in the original annotation format.
    Undecodable images are kept as rows with a status, never silently dropped.
    """
    rows = []
    for r in tqdm(annotations.itertuples(index=False), total=len(annotations), desc="perturb"):
        target = inside(out, r.relpath + ".png", "perturbed test set")
        row = r._asdict() | {"source_path": (root / r.relpath).as_posix(), "path": target.as_posix()}
        try:
            img, info = perturb(load_rgb(root / r.relpath), rng_for(seed, r.relpath), size, p_compress)
        except ImageDecodeError as exc:
            rows.append(row | {"status": exc.status, "error": exc.problem, "path": None})
            continue
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        atomic_write_bytes(target, buf.getvalue())
        rows.append(row | info | {"status": "ok", "error": ""})
    table = pd.DataFrame(rows)
    ok = table[table["status"] == "ok"]
    lines = [f"./{p}.png,{o},{c},{f},{s}" for p, o, c, f, s in zip(
        ok["relpath"], ok["label"], ok["content"].map({v: k for k, v in CONTENT.items()}),
        ok["family"].map({v: k for k, v in FAMILY.items()}), ok["specific"], strict=True)]
    atomic_write_bytes(out / "test_perturbed.txt", ("\n".join(lines) + "\n").encode())
    return table
