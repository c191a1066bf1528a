import io

import numpy as np
import pytest
from PIL import Image

from synthdet.data import imageio
from synthdet.data.imageio import ImageDecodeError, inspect_image, load_rgb
from tests.conftest import noise_image


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("P", "PNG"),
                                      ("LA", "PNG"), ("RGB", "WEBP"), ("1", "PNG")])
def test_every_colour_mode_decodes_to_8bit_rgb(tmp_path, mode, fmt):
    path = _save(noise_image(1, (40, 30), mode), tmp_path / f"x.{fmt.lower()}", format=fmt)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (40, 30)
    assert inspect_image(path).mode == mode


def test_sixteen_bit_grayscale_is_rescaled_not_clipped(tmp_path):
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    out = np.asarray(load_rgb(path))
    assert out.dtype == np.uint8 and out[..., 0].min() == 0 and out[..., 0].max() == 255
    assert len(np.unique(out[..., 0])) > 200  # a gradient, not a saturated blob


def test_alpha_is_composited_on_black(tmp_path):
    img = Image.new("RGBA", (8, 8), (255, 255, 255, 0))
    path = _save(img, tmp_path / "clear.png")
    assert np.asarray(load_rgb(path)).max() == 0


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert inspect_image(path).n_frames == 2
    r, g, _ = np.asarray(load_rgb(path))[0, 0]
    assert r > 200 and g < 50


@pytest.mark.parametrize("kind,status", [("zero", "empty"), ("text", "not_image"), ("truncated", "corrupt"),
                                         ("missing", "missing"), ("garbage_png", "not_image")])
def test_bad_files_raise_with_path_and_reason(tmp_path, kind, status):
    path = tmp_path / "bad.png"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "truncated":
        buf = io.BytesIO()
        noise_image(2, (200, 200)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "garbage_png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    for fn in (load_rgb, inspect_image):
        with pytest.raises(ImageDecodeError) as err:
            fn(path)
        assert err.value.status == status
        assert str(path) in str(err.value)


def test_truncated_jpeg_is_refused(tmp_path):
    buf = io.BytesIO()
    noise_image(3, (256, 256)).save(buf, format="JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[:2000])
    with pytest.raises(ImageDecodeError, match="cut.jpg"):
        load_rgb(path)


def test_decompression_bomb_refused_without_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(imageio, "MAX_PIXELS", 10_000)
    path = _save(Image.new("RGB", (200, 200)), tmp_path / "big.png")
    with pytest.raises(ImageDecodeError) as err:
        load_rgb(path)
    assert err.value.status == "too_large" and "200x200" in str(err.value)


def test_jpeg_quality_is_recovered_exactly_for_every_quality_pil_writes(tmp_path):
    """The IJG scaling inverse, checked against what Pillow (libjpeg) wrote: colour and grey, 1-100
    (the old mean-ratio estimate was off at 1-18, 99 and 100)."""
    colour, grey = noise_image(4, (64, 64)), noise_image(5, (64, 64), "L")
    wrong = []
    for quality in range(1, 101):
        for img in (colour, grey):
            path = _save(img, tmp_path / f"q{img.mode}.jpg", quality=quality)
            if inspect_image(path).jpeg_quality != quality:
                wrong.append((img.mode, quality, inspect_image(path).jpeg_quality))
    assert wrong == []


def test_chroma_subsampling_and_exif_are_recorded(tmp_path):
    img = noise_image(6, (48, 48))
    seen = {code: inspect_image(_save(img, tmp_path / f"s{code}.jpg", quality=90, subsampling=code)).subsampling
            for code in (0, 1, 2)}
    assert seen == {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
    exif = Image.Exif()
    exif[0x0110] = "camera"  # Model
    assert inspect_image(_save(img, tmp_path / "cam.jpg", exif=exif)).exif
    plain = inspect_image(_save(img, tmp_path / "plain.png"))
    assert not plain.exif and plain.subsampling == "" and plain.jpeg_quality is None
    assert inspect_image(_save(img.convert("L"), tmp_path / "grey.jpg")).subsampling == "none"
