"""Fabricated miniature data in the exact layouts the real sources use."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

# Under `pytest -n N` (make test: N = 2 on 2 cores) every worker, and every DVC / papermill process
# it starts, gets one intra-op thread: N processes of 2 OpenMP threads each on 2 cores spin-wait on
# each other and run far slower than N times one thread. Set before torch is imported.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    torch.set_num_threads(1)  # in case torch was imported before this file
from PIL import Image  # noqa: E402

from synthdet.datasets.embedded.generators.dcgan import DCGANGenerator  # noqa: E402
from synthdet.datasets.embedded.generators.pretrained import EyeGenerator  # noqa: E402


def noise_image(seed: int, size: tuple[int, int] = (96, 72), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
    return img.convert(mode)


def rcc_bytes(files: dict[str, bytes], compress: set[str] = frozenset()) -> bytes:
    """A Qt resource archive (format version 2) holding ``files``: a writer for the tests."""
    tree: dict = {}
    for path, data in files.items():
        node = tree
        *dirs, leaf = path.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = data
    names, name_off = bytearray(), {}

    def name_offset(name: str) -> int:
        if name not in name_off:
            name_off[name] = len(names)
            encoded = name.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(name), 0) + encoded)
        return name_off[name]

    data_blob = bytearray()
    nodes: list[bytes] = []
    nodes.append(b"")  # root placeholder
    pending = [(0, "", tree)]
    while pending:
        index, name, node = pending.pop(0)
        if isinstance(node, dict):
            first = len(nodes)
            children = sorted(node.items())
            nodes.extend([b""] * len(children))
            nodes[index] = struct.pack(">IHIIQ", name_offset(name) if name else 0, 2, len(children), first, 0)
            for k, (child_name, child) in enumerate(children):
                pending.append((first + k, child_name, child))
        else:
            payload, flags = node, 0
            if name in compress:
                payload, flags = struct.pack(">I", len(node)) + zlib.compress(node), 1
            off = len(data_blob)
            data_blob.extend(struct.pack(">I", len(payload)) + payload)
            nodes[index] = struct.pack(">IHHHIQ", name_offset(name), flags, 0, 0, off, 0)
    tree_blob = b"".join(nodes)
    header = 20
    tree_off, data_off = header, header + len(tree_blob)
    names_off = data_off + len(data_blob)
    header_blob = b"qres" + struct.pack(">IIII", 2, tree_off, data_off, names_off)
    return header_blob + tree_blob + bytes(data_blob) + bytes(names)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _cutout(seed: int, size: int = 90) -> Image.Image:
    img = noise_image(seed, (size, size)).convert("RGBA")
    alpha = Image.new("L", (size, size), 0)
    alpha.paste(255, (10, 10, size - 10, size - 10))
    img.putalpha(alpha)
    return img


def make_embedded_data(root: Path, n: int = 6, per_land_class: int = 0) -> Path:
    """``data/embedded`` in miniature: every real source's file layout plus loadable weights.

    ``per_land_class`` adds that many landscapes of three more photo classes (the conditional
    ldm subset needs photo classes with train and test images)."""
    raw = root / "raw"
    land = raw / "endless_sky/usr/share/games/endless-sky/images/land"
    land.mkdir(parents=True)
    for i in range(n):
        noise_image(i, (720 // 3, 360 // 3)).save(land / f"desert{i}.jpg", quality=90)
    for k, cls in enumerate(("snow", "city", "sea")):
        for i in range(per_land_class):
            noise_image(1000 + 100 * k + i, (128, 64)).save(land / f"{cls}{i}.jpg", quality=90)
    stamps = raw / "tuxpaint/usr/share/tuxpaint/stamps/animals/birds"
    stamps.mkdir(parents=True)
    for i in range(n):
        _cutout(100 + i).save(stamps / f"bird{i}.png")
    _cutout(199, size=30).save(stamps / "tiny.png")  # too small: recorded, not used
    for k, (sub, content) in enumerate((("categorization/resource/images/tools", "hammer"),
                                        ("details/resource/image", "Monet"))):
        d = raw / "gcompris" / sub
        d.mkdir(parents=True)
        for i in range(n):
            noise_image(200 + 10 * k + i, (140, 140)).save(d / f"{content}{i}.webp", lossless=True)
    noise_image(200, (140, 140)).save(d / "Monet_copy.webp", lossless=True)  # the same picture twice
    portraits = raw / "wesnoth/usr/share/games/wesnoth/1.16/data/core/images/portraits/humans"
    portraits.mkdir(parents=True)
    for i in range(n):
        _cutout(300 + i, 120).save(portraits / f"mage{i}.png")
    (raw / "lfw/skimage/data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(raw / "lfw/skimage/data/lfw_subset.npy", rng.random((200, 25, 25)))
    (raw / "foolbox/foolbox/data").mkdir(parents=True)
    for i in range(n):
        noise_image(400 + i, (224, 224)).save(raw / f"foolbox/foolbox/data/imagenet_{i:02d}_{i * 7}.jpg")
    (root / "weights").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"netG_state_dict": DCGANGenerator(nz=100, ngf=64, size=64).state_dict()}, root / "weights/weights.tar")
    torch.save(EyeGenerator().state_dict(), root / "weights/generator_model_state.pth")
    (root / "licenses").mkdir()
    (root / "licenses/endless-sky-data.copyright").write_text("Files: *\nLicense: CC-BY-SA-4.0\n")
    return root


@pytest.fixture(scope="session")
def embedded_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_embedded_data(tmp_path_factory.mktemp("data") / "embedded")


def make_genimage_tree(root: Path, subsets: tuple[str, ...] = ("imagenet_ai_0419_sdv4", "imagenet_glide"),
                       per_folder: int = 4, real_qualities: tuple[int, ...] = (75,)) -> Path:
    """GenImage's extracted layout: ImageNet JPEG reals named by synset, PNG fakes (some upper-case
    .PNG) named by class index, alternating between two classes (index 0 = n01440764, 1 = n01443537).
    Reals cycle through ``real_qualities`` every two images, so each class gets each quality."""
    k = 0
    for subset in subsets:
        for split in ("train", "val"):
            for label in ("ai", "nature"):
                folder = root / subset / split / label
                folder.mkdir(parents=True)
                for i in range(per_folder):
                    k += 1
                    img = noise_image(k, (64, 64))
                    c = i % 2
                    if label == "nature":
                        quality = real_qualities[i // 2 % len(real_qualities)]
                        img.save(folder / f"{('n01440764', 'n01443537')[c]}_{k}.JPEG", quality=quality)
                    else:
                        name = (f"{c:03d}_sdv4_{k:05d}.png" if i % 4 < 2
                                else f"GLIDE_1000_200_08_{c:03d}_glide_{k:05d}.PNG")
                        img.save(folder / name, format="PNG")
    return root


# ImagiNet's real path patterns: (content, origin, family, specific, relative folder, suffix)
IMAGINET_CELLS = (
    (0, 0, 4, 8, "imagenet/ILSVRC/Data/CLS-LOC/val", ".JPEG"), (0, 1, 1, 4, "sdxl/photos", ".png"),
    (1, 0, 4, 8, "wikiart/Impressionism", ".jpg"), (1, 1, 1, 5, "animagine/paintings", ".png"),
    (2, 0, 4, 8, "ffhq/images", ".png"), (2, 1, 0, 1, "ffhq_stylegan", ".png"),
    (3, 0, 4, 8, "coco/train2017", ".jpg"), (3, 1, 3, 7, "dalle3", ".png"),
)


def make_imaginet_dataset(root: Path, per_cell: int = 6) -> Path:
    """ImagiNet in miniature: real and synthetic images of all four content types, 300-500 px,
    with train (4/6), test (2/6) and calibration annotation files, paths relative to ``root``."""
    rng = np.random.default_rng(1)
    splits: dict[str, list[str]] = {"train": [], "test": [], "calibration": []}
    k = 0
    for content, origin, family, specific, folder, suffix in IMAGINET_CELLS:
        for i in range(per_cell):
            k += 1
            rel = f"./{folder}/{k:06d}{suffix}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            img = noise_image(5000 + k, (int(rng.integers(300, 500)), int(rng.integers(300, 500))))
            img.save(root / rel, **({"quality": 90} if suffix.lower() in (".jpg", ".jpeg") else {}))
            line = f"{rel},{origin},{content},{family},{specific}"
            splits["test" if i % 3 == 2 else "train"].append(line)
            if i == 0:
                splits["calibration"].append(line)
    (root / "annotations").mkdir(parents=True)
    for name, lines in splits.items():
        file = "calibration.txt" if name == "calibration" else f"{name}_annotations.txt"  # as ImagiNet names them
        (root / f"annotations/{file}").write_text("\n".join(lines) + "\n")
    return root


def add_ready_testset(root: Path, per_cell: int = 1) -> Path:
    """The packed distribution's ready perturbed test set: lossless 256 px WebPs under
    ``testset/<content>/<real|synthetic>/[<model>/]``, listed in ``annotations/test_all.txt``."""
    from synthdet.imaginet.dataset import CONTENT, SPECIFIC

    lines, k = [], 0
    for content, origin, family, specific, _, _ in IMAGINET_CELLS:
        for _ in range(per_cell):
            kind = "real" if origin == 0 else f"synthetic/{SPECIFIC[specific]}"
            rel = f"testset/{CONTENT[content]}/{kind}/{k:05d}.webp"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            noise_image(7000 + k, (256, 256)).save(root / rel, lossless=True)
            lines.append(f"{rel},{origin},{content},{family},{specific}")
            k += 1
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations/test_all.txt").write_text("\n".join(lines) + "\n")
    return root


SEVEN_ZIP = next((shutil.which(n) for n in ("7zz", "7z", "7za") if shutil.which(n)), None)


def pack_7z(folder: Path, dest: Path, volume: str = "200k") -> Path:
    """``folder``'s contents as the split 7z ``dest/imaginet.7z.001, .002, ...``; the first part."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([SEVEN_ZIP, "a", f"-v{volume}", "-bso0", "-bd", str(dest / "imaginet.7z"), "."], cwd=folder,
                   check=True)
    return dest / "imaginet.7z.001"


def _slow_minutes(item: pytest.Item) -> float:
    """``@pytest.mark.slow(minutes=...)``: about how long the test takes alone (0: not slow)."""
    mark = item.get_closest_marker("slow")
    return float(mark.kwargs.get("minutes", 1)) if mark else 0.0


def pytest_collection_modifyitems(config, items):  # noqa: ANN001, ARG001
    """The end-to-end runs (minutes each) spread over the workers, each at the head of its worker's
    share. `pytest -n 2 --dist worksteal` (make test) hands worker k the k-th contiguous share of
    this list and lets an idle worker steal from the tails of the others' shares, never their first
    two tests: two long runs queued in one share would run one after the other there (measured:
    smoke 659 s then GenImage 305 s on one worker while the other sat idle at the end)."""
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    slow = sorted((i for i in items if _slow_minutes(i)), key=_slow_minutes, reverse=True)
    rest = [i for i in items if not _slow_minutes(i)]
    heads: list[list] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for item in slow:  # longest first, each to the least loaded worker
        k = min(range(workers), key=lambda w: (load[w], w))
        heads[k].append(item)
        load[k] += _slow_minutes(item)
    ordered, remaining = [], len(items)
    for k in range(workers):  # xdist's split: share k = remaining // (workers - k)
        share = remaining // (workers - k)
        remaining -= share
        fill = max(0, share - len(heads[k]))
        ordered += heads[k] + rest[:fill]
        rest = rest[fill:]
    items[:] = ordered + rest
