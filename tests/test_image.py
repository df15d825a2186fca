"""Image loading and preprocessing: exact equality with the reference transform, every input kind, and
a typed ImageError for each kind of bad image."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tinygptv_native.image import (ALLOWED_FORMATS, ImageError, load_image, preprocess, preprocess_for_model,
                                   to_rgb)

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _photo(w=61, h=37, seed=0):
    """A smooth-ish RGB test picture (gradients plus noise) as a PIL image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 127 // max(w + h - 2, 1)], -1)
    a = np.clip(a + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(a, "RGB")


def _reference_numpy(rgb, size):
    """BLIP-2's eval transform written out: PIL bicubic square resize, /255, (x - mean) / std, CHW."""
    r = rgb.resize((size, size), resample=Image.Resampling.BICUBIC)
    x = np.array(r, dtype=np.float32) / np.float32(255)
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return x.transpose(2, 0, 1)


def _encoded(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("size", [14, 28, 224])
def test_equals_reference_numpy(size):
    im = _photo()
    got = preprocess(im, size, MEAN, STD)
    assert got.dtype == np.float32 and got.shape == (3, size, size) and got.flags.c_contiguous
    assert np.array_equal(got, _reference_numpy(im, size))


def test_equals_torch_normalisation():
    torch = pytest.importorskip("torch")
    im = _photo(50, 80, seed=3)
    r = im.resize((28, 28), Image.BICUBIC)
    # torchvision ToTensor + Normalize, spelled out in torch
    t = torch.from_numpy(np.array(r, dtype=np.uint8)).permute(2, 0, 1).contiguous().float().div(255)
    t = t.sub(torch.tensor(MEAN).view(3, 1, 1)).div(torch.tensor(STD).view(3, 1, 1))
    assert np.array_equal(preprocess(im, 28, MEAN, STD), t.numpy())


def test_no_resize_when_already_square():
    im = _photo(28, 28)
    assert np.array_equal(preprocess(im, 28, MEAN, STD), _reference_numpy(im, 28))


def test_input_kinds(tmp_path):
    im = _photo()
    want = _reference_numpy(im, 28)
    png = _encoded(im, "PNG")
    p = tmp_path / "pic.png"
    p.write_bytes(png)
    arr = np.array(im)
    for src in (str(p), p, png, bytearray(png), memoryview(png), io.BytesIO(png), im, arr):
        got = preprocess(src, 28, MEAN, STD)
        assert np.array_equal(got, want), type(src).__name__
    # non-contiguous array view
    big = np.zeros((im.height, im.width * 2, 3), np.uint8)
    big[:, ::2] = arr
    assert np.array_equal(preprocess(big[:, ::2], 28, MEAN, STD), want)


def test_grayscale_and_rgba_arrays():
    rng = np.random.default_rng(1)
    g = rng.integers(0, 256, (30, 20), dtype=np.uint8)
    want = _reference_numpy(Image.fromarray(np.stack([g] * 3, -1), "RGB"), 28)
    assert np.array_equal(preprocess(g, 28, MEAN, STD), want)
    assert np.array_equal(preprocess(g[:, :, None], 28, MEAN, STD), want)
    # RGBA: alpha composited on white by default, dropped with background=None
    rgba = rng.integers(0, 256, (30, 20, 4), dtype=np.uint8)
    a = rgba[..., 3:4].astype(np.float64) / 255
    over_white = Image.alpha_composite(Image.new("RGBA", (20, 30), (255, 255, 255, 255)),
                                       Image.fromarray(rgba, "RGBA")).convert("RGB")
    # the composite is what one expects numerically (up to rounding)
    manual = rgba[..., :3] * a + 255 * (1 - a)
    assert np.max(np.abs(np.array(over_white, np.float64) - manual)) <= 1.0
    assert np.array_equal(preprocess(rgba, 28, MEAN, STD), _reference_numpy(over_white, 28))
    dropped = Image.fromarray(np.ascontiguousarray(rgba[..., :3]), "RGB")
    assert np.array_equal(preprocess(rgba, 28, MEAN, STD, background=None), _reference_numpy(dropped, 28))
    black = Image.alpha_composite(Image.new("RGBA", (20, 30), (0, 0, 0, 255)), Image.fromarray(rgba, "RGBA"))
    assert np.array_equal(preprocess(rgba, 28, MEAN, STD, background=(0, 0, 0)),
                          _reference_numpy(black.convert("RGB"), 28))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_allowed_formats_decode_like_pil(fmt):
    im = _photo()
    data = _encoded(im, fmt)
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    got = load_image(data)
    assert got.format == fmt and got.size == im.size
    assert np.array_equal(np.array(to_rgb(got)), np.array(decoded.convert("RGB")))


def test_gif_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    got = to_rgb(load_image(buf.getvalue()))
    assert got.getpixel((5, 5)) == (255, 0, 0)


def test_exif_orientation():
    im = _photo(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encoded(im, "JPEG", exif=exif, quality=95)
    stored = Image.open(io.BytesIO(data))
    stored.load()
    upright = load_image(data)
    assert upright.size == (20, 40)
    assert np.array_equal(np.array(upright), np.array(stored.transpose(Image.Transpose.ROTATE_270)))
    raw = load_image(data, exif_transpose=False)
    assert raw.size == (40, 20) and np.array_equal(np.array(raw), np.array(stored))


def test_sixteen_bit_grayscale():
    a = (np.arange(24 * 10, dtype=np.uint32).reshape(10, 24) * 273).astype(np.uint16)
    data = _encoded(Image.fromarray(a), "PNG")
    got = np.array(to_rgb(load_image(data)))
    want = ((a.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    assert np.array_equal(got[..., 0], want) and np.array_equal(got[..., 2], want)


def test_palette_with_transparency():
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    p.paste(1, (0, 0, 4, 8))
    data = _encoded(p, "PNG", transparency=0)
    rgb = to_rgb(load_image(data))
    assert rgb.getpixel((1, 1)) == (200, 10, 10) and rgb.getpixel((6, 1)) == (255, 255, 255)
    assert to_rgb(load_image(data), background=None).getpixel((6, 1)) == (0, 0, 0)


# ---- refusals ----

def _png_header_only(width, height):
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ImageError, match=r"not found: '.*nope\.png'"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(str(tmp_path))


def test_empty_and_garbage_bytes():
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="not a recognised image file"):
        load_image(b"this is not an image at all" * 10)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated(tmp_path, fmt):
    data = _encoded(_photo(64, 64), fmt)
    cut = data[: len(data) * 2 // 3]
    with pytest.raises(ImageError, match=r"truncated or corrupt|cannot be read"):
        load_image(cut)
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(cut)
    with pytest.raises(ImageError, match=r"cut\.") as ei:
        preprocess(p, 28, MEAN, STD)
    assert "truncated" in str(ei.value) or "cannot be read" in str(ei.value)


def test_decompression_bomb():
    # A header claiming 20000 x 20000 pixels: refused before any data is decoded (PIL's own bomb error).
    with pytest.raises(ImageError, match=r"decompression bomb"):
        load_image(_png_header_only(20000, 20000))
    # 9000 x 9000 = 81 M pixels: above the 64 MP cap, below PIL's limits.
    with pytest.raises(ImageError, match=r"9000x9000 = 81000000 pixels, more than the limit of 64000000"):
        load_image(_png_header_only(9000, 9000))
    # The cap applies to every input kind and can be changed.
    with pytest.raises(ImageError, match="more than the limit of 1000"):
        load_image(_encoded(_photo(40, 30), "PNG"), max_pixels=1000)
    with pytest.raises(ImageError, match="more than the limit of 1000"):
        preprocess(np.zeros((40, 30, 3), np.uint8), 28, MEAN, STD, max_pixels=1000)
    with pytest.raises(ImageError, match="more than the limit of 1000"):
        load_image(_photo(40, 30), max_pixels=1000)
    assert load_image(_photo(40, 30), max_pixels=1200).size == (40, 30)


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA"])
def test_format_not_allowed(fmt):
    assert fmt not in ALLOWED_FORMATS
    data = _encoded(_photo(16, 16), fmt)
    with pytest.raises(ImageError, match=rf"is a {fmt} image; allowed formats are PNG"):
        load_image(data)


def test_bad_arrays_and_types():
    with pytest.raises(ImageError, match=r"zero size \(0x5\)"):
        load_image(np.zeros((5, 0, 3), np.uint8))
    with pytest.raises(ImageError, match="dtype uint8.*float32"):
        load_image(np.zeros((5, 5, 3), np.float32))
    with pytest.raises(ImageError, match=r"shape .*got \(5, 5, 2\)"):
        load_image(np.zeros((5, 5, 2), np.uint8))
    with pytest.raises(ImageError, match=r"got \(2, 5, 5, 3\)"):
        load_image(np.zeros((2, 5, 5, 3), np.uint8))
    with pytest.raises(ImageError, match="unsupported image input of type int"):
        load_image(42)
    with pytest.raises(ImageError, match="mode F"):
        to_rgb(Image.new("F", (4, 4)))
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 3)))


def test_bad_preprocess_arguments():
    im = _photo()
    for size in (0, -3, 10000, 2.5, True):
        with pytest.raises(ImageError, match="size must be an integer"):
            preprocess(im, size, MEAN, STD)
    with pytest.raises(ImageError, match="mean must be 3"):
        preprocess(im, 28, MEAN[:2], STD)
    with pytest.raises(ImageError, match="std must be 3 finite positive"):
        preprocess(im, 28, MEAN, (0.2, 0.0, 0.3))
    with pytest.raises(ImageError, match="std must be 3"):
        preprocess(im, 28, MEAN, (0.2, float("nan"), 0.3))
    with pytest.raises(ImageError, match="background must be"):
        preprocess(np.zeros((4, 4, 4), np.uint8), 28, MEAN, STD, background=(300, 0, 0))
    assert issubclass(ImageError, ValueError)


def test_preprocess_for_model():
    class FakeModel:  # the attributes tinygptv_native's Model exposes
        has_vision = True
        image_size = 28
        image_mean = MEAN
        image_std = STD

    im = _photo()
    assert np.array_equal(preprocess_for_model(im, FakeModel()), _reference_numpy(im, 28))

    class TextOnly:
        has_vision = False

    with pytest.raises(ImageError, match="no vision encoder"):
        preprocess_for_model(im, TextOnly())


def test_mpo_camera_jpeg():
    # Many camera JPEGs carry a second (preview) picture and PIL names them MPO: accepted, first frame used.
    first, second = _photo(32, 24, seed=1), _photo(32, 24, seed=2)
    buf = io.BytesIO()
    first.save(buf, format="MPO", save_all=True, append_images=[second], quality=95)
    got = load_image(buf.getvalue())
    assert got.format == "MPO" and got.size == (32, 24)
    ref = Image.open(io.BytesIO(buf.getvalue()))
    ref.seek(0)
    ref.load()
    assert np.array_equal(np.array(to_rgb(got)), np.array(ref.convert("RGB")))
