"""Decode once, train many epochs: the detector's view of every training image, cached.

The training transform is :func:`~synthdet.data.imageio.fit_to_input` (short side to the input
size, centre crop) followed by a flip and normalisation; only the flip is random. So the pixels
after ``fit_to_input`` are the same every epoch, and this cache stores exactly them: one uint8
``(N, S, S, 3)`` NumPy array file, memory-mapped, built in one pass (DataLoader workers decode,
the main process writes). Later epochs read 3*S*S bytes per image instead of decoding a full-size
JPEG or PNG. The pixels are those of the reference path by construction (a test compares them).

Files are named by a key over (input size, every path and its sha256), so another training set or
size never reads a stale cache: ``<key>.npy``, ``<key>.status.npy`` (1 decoded, 2 unreadable) and
``<key>.json``, written last (an interrupted build is rebuilt). On GenImage's SD V1.4 training
split at 224 px that is about 49 GB.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from synthdet.data.imageio import ImageDecodeError, fit_to_input, load_rgb
from synthdet.fsutil import atomic_output, inside

VERSION = 1  # bump when what is stored changes (e.g. fit_to_input's resampler)
OK, FAILED = 1, 2


def cache_key(paths: Sequence[str], digests: Sequence[str], size: int) -> str:
    h = hashlib.sha256(f"pixelcache v{VERSION} {size}\n".encode())
    for path, digest in zip(paths, digests, strict=True):
        h.update(f"{path}\t{digest}\n".encode())
    return h.hexdigest()[:20]


class _Decode(Dataset):
    def __init__(self, paths: Sequence[str], size: int) -> None:
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        try:
            view = fit_to_input(load_rgb(self.paths[i], strict=False), self.size)  # a manifest's rows: checked
            return torch.from_numpy(np.asarray(view, dtype=np.uint8).copy()), i, ""
        except ImageDecodeError as exc:
            return torch.zeros(self.size, self.size, 3, dtype=torch.uint8), i, exc.problem


class PixelCache:
    """Cached ``fit_to_input`` views of ``paths`` at ``size``, built on first use."""

    INTERPOLATION = "bicubic"  # fit_to_input's default: the resize of every stored view

    def __init__(self, folder: Path, paths: Sequence[str], digests: Sequence[str], size: int) -> None:
        self.key = cache_key(paths, digests, size)
        self.paths, self.size = list(paths), size
        self.array_path = inside(Path(folder), f"{self.key}.npy", "pixel cache")
        self.status_path = inside(Path(folder), f"{self.key}.status.npy", "pixel cache")
        self.meta_path = inside(Path(folder), f"{self.key}.json", "pixel cache")
        self.problems: dict[int, str] = {}
        self._pixels: np.ndarray | None = None
        self._status: np.ndarray | None = None

    @property
    def complete(self) -> bool:
        return self.meta_path.is_file() and self.array_path.is_file() and self.status_path.is_file()

    def build(self, num_workers: int = 0, batch_size: int = 64) -> None:
        """Decode every image once (skipped when a complete cache with this key exists)."""
        if self.complete:
            meta = json.loads(self.meta_path.read_text())
            self.problems = {int(k): v for k, v in meta["problems"].items()}
            return
        self.array_path.parent.mkdir(parents=True, exist_ok=True)
        n, s = len(self.paths), self.size
        status = np.zeros(n, dtype=np.int8)
        with atomic_output(self.array_path) as tmp:
            pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, s, s, 3))
            # its own generator: building the cache must not move the global RNG training draws from
            loader = DataLoader(_Decode(self.paths, s), batch_size=batch_size, num_workers=num_workers,
                                generator=torch.Generator().manual_seed(0))
            for views, idx, problems in tqdm(loader, desc=f"pixel cache {self.key[:8]}", unit="batch"):
                rows = idx.numpy()
                pixels[rows] = views.numpy()
                for j, problem in zip(rows, problems, strict=True):
                    status[j] = FAILED if problem else OK
                    if problem:
                        self.problems[int(j)] = problem
            pixels.flush()
            del pixels
        with atomic_output(self.status_path) as tmp, open(tmp, "wb") as f:
            np.save(f, status)
        with atomic_output(self.meta_path) as tmp:
            Path(tmp).write_text(json.dumps({"size": s, "images": n, "version": VERSION,
                                             "problems": {str(k): v for k, v in self.problems.items()}}))

    def view(self, i: int) -> torch.Tensor:
        """Image ``i`` as a uint8 CHW tensor: what the reference path's ``fit_to_input`` and
        ``PILToTensor`` give (then :func:`~synthdet.data.dataset.view_transform`), or ImageDecodeError."""
        if self._pixels is None:  # opened lazily in each DataLoader worker; never pickled
            self._pixels = np.load(self.array_path, mmap_mode="r")
            self._status = np.load(self.status_path)
        if self._status[i] != OK:
            raise ImageDecodeError(self.paths[i], self.problems.get(i, "unreadable when the pixel cache was built"),
                                   "corrupt")
        return torch.from_numpy(np.array(self._pixels[i])).permute(2, 0, 1)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None, "_status": None}
