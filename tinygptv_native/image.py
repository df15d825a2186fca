"""Image loading and preprocessing for TinyGPT-V's vision encoder.

The model's transform (BLIP-2's eval processor) is: convert to RGB, resize to a square S x S with bicubic
resampling and no crop (the aspect ratio is not kept), scale to [0, 1], normalise each channel with the
mean and std stored in the GGUF file (OpenAI CLIP statistics). torchvision's ``Resize`` on a PIL image is
PIL's ``resize(..., BICUBIC)``, and ``ToTensor``/``Normalize`` are float32 ``/255``, ``-mean``, ``/std``:
``preprocess`` does exactly these operations, so its output is bit-identical to the reference transform.

Two choices differ from a bare ``Image.open(path).convert("RGB")`` and are documented here:

* EXIF orientation is applied (``exif_transpose=True``). A phone photo is stored sideways with an
  orientation tag; every viewer shows it upright, and that is what a user asks about. (The reference
  demos received images from their web UI, which also applies the tag.) Pass ``exif_transpose=False`` to
  get the stored pixel order. A broken EXIF block is ignored rather than refused.
* Transparency is composited onto a white background (``background=(255, 255, 255)``), which is how
  viewers and browsers usually show such images; plain ``convert("RGB")`` would expose whatever colour
  the transparent pixels happen to store (often black). Pass ``background=None`` for that behaviour.

Inputs are refused with :class:`ImageError` (a ``ValueError``) naming the problem: a path that does not
exist or is not a file, empty or undecodable data, a truncated or corrupt file, a format outside
:data:`ALLOWED_FORMATS`, a zero-sized image, or more than ``max_pixels`` pixels (decompression bombs; PIL's
own ``DecompressionBombWarning``/``Error`` become ``ImageError`` too). The check of ``max_pixels`` happens
on the header, before any pixel data is decoded. Only the first frame of animated GIF/WebP and multi-page
TIFF files is used. Note that if an application sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True``
globally, PIL no longer reports truncated files.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageError", "ALLOWED_FORMATS", "DEFAULT_MAX_PIXELS", "load_image", "to_rgb", "preprocess",
           "preprocess_for_model"]

# PIL format names accepted from files and bytes. MPO is how PIL names many camera JPEGs (JPEG with an
# embedded preview), so it is a JPEG for our purposes.
ALLOWED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF")
_OPEN_FORMATS = ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"]  # PIL's JPEG opener also yields MPO images
DEFAULT_MAX_PIXELS = 64_000_000
WHITE = (255, 255, 255)

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


class ImageError(ValueError):
    """An image that cannot or must not be used (unreadable, truncated, too large, wrong format...)."""


def _check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{what} has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"{what} has {width}x{height} = {width * height} pixels, more than the limit of "
                         f"{max_pixels} (possible decompression bomb; raise max_pixels to allow it)")


def _open_encoded(src: Any, what: str, max_pixels: int) -> Image.Image:
    """Opens an encoded image (a path or a binary stream), checks it and decodes its first frame."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(src, formats=_OPEN_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"{what} is too large to decode safely (decompression bomb): {e}") from None
        except UnidentifiedImageError:
            raise ImageError(_unidentified_message(src, what)) from None
        except ImageError:
            raise
        except MemoryError:
            raise
        except Exception as e:  # corrupt headers surface as many exception types
            raise ImageError(f"{what} cannot be read as an image: {type(e).__name__}: {e}") from None
        with im:
            if im.format not in ALLOWED_FORMATS:
                raise ImageError(f"{what} is a {im.format} image; allowed formats are {', '.join(ALLOWED_FORMATS)}")
            _check_size(im.width, im.height, max_pixels, what)
            try:
                im.seek(0)
                im.load()
                out = im.copy()  # detaches from the file (and from any later frames)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise ImageError(f"{what} is too large to decode safely (decompression bomb): {e}") from None
            except MemoryError:
                raise
            except Exception as e:
                raise ImageError(f"{what} ({im.format} {im.width}x{im.height}) is truncated or corrupt: "
                                 f"{type(e).__name__}: {e}") from None
    out.format = im.format  # keep the format name for callers (copy() drops it)
    return out


def _unidentified_message(src: Any, what: str) -> str:
    # Name the format when PIL knows it but it is not allowed; only the header is parsed here.
    try:
        if hasattr(src, "seek"):
            src.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(src) as im:
                fmt = im.format
    except Exception:
        fmt = None
    if fmt:
        return f"{what} is a {fmt} image; allowed formats are {', '.join(ALLOWED_FORMATS)}"
    return f"{what} is not a recognised image file (allowed formats: {', '.join(ALLOWED_FORMATS)})"


def _from_array(a: np.ndarray, max_pixels: int) -> Image.Image:
    if a.dtype != np.uint8:
        raise ImageError(f"numpy image must have dtype uint8 (values 0..255), got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ImageError(f"numpy image must have shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    _check_size(a.shape[1], a.shape[0], max_pixels, f"numpy image of shape {a.shape}")
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[a.ndim if a.ndim == 2 else a.shape[2]]
    return Image.fromarray(np.ascontiguousarray(a), mode=mode)


def _apply_exif(im: Image.Image) -> Image.Image:
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return im  # unreadable EXIF: keep the stored orientation
    if orientation in (None, 1):
        return im
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im


def load_image(image: Any, *, exif_transpose: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Returns a decoded PIL image from a path (str or os.PathLike), encoded bytes (bytes, bytearray,
    memoryview), a binary file object, a PIL image, or a uint8 numpy array of shape (H, W), (H, W, 3) RGB or
    (H, W, 4) RGBA. The mode is left as decoded (see :func:`to_rgb`). Raises ImageError."""
    if not isinstance(max_pixels, int) or max_pixels < 1:
        raise ImageError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if isinstance(image, Image.Image):
        _check_size(image.width, image.height, max_pixels, "PIL image")
        im = image
    elif isinstance(image, np.ndarray):
        return _from_array(image, max_pixels)  # arrays carry no EXIF
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.exists():
            raise ImageError(f"image file not found: '{path}'")
        if not path.is_file():
            raise ImageError(f"image path is not a regular file: '{path}'")
        im = _open_encoded(str(path), f"image file '{path}'", max_pixels)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise ImageError("image bytes are empty")
        im = _open_encoded(io.BytesIO(data), f"image data ({len(data)} bytes)", max_pixels)
    elif hasattr(image, "read"):
        im = _open_encoded(image, f"image stream {getattr(image, 'name', type(image).__name__)!r}", max_pixels)
    else:
        raise ImageError(f"unsupported image input of type {type(image).__name__} (expected a path, bytes, a PIL "
                         f"image or a uint8 numpy array)")
    return _apply_exif(im) if exif_transpose else im


def to_rgb(im: Image.Image, background: Sequence[int] | None = WHITE) -> Image.Image:
    """The image in mode RGB. Transparent pixels are composited onto `background` (an (r, g, b) tuple), or
    the alpha channel is dropped when background is None. 16-bit greyscale is scaled to 8 bits."""
    if im.mode == "RGB":
        return im
    if im.mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(im).astype(np.int64)
        if im.mode != "I" or a.max(initial=0) > 255 or a.min(initial=0) < 0:
            a = (np.clip(a, 0, 65535) * 255 + 32767) // 65535
        im = Image.fromarray(a.astype(np.uint8), mode="L")
    elif im.mode == "F":
        raise ImageError("floating-point images (PIL mode F) have no defined value range; convert to 8-bit first")
    has_alpha = im.mode in _ALPHA_MODES or (im.mode in ("P", "L", "RGB") and "transparency" in im.info)
    try:
        if has_alpha and background is not None:
            bg = tuple(int(c) for c in background)
            if len(bg) != 3 or not all(0 <= c <= 255 for c in bg):
                raise ImageError(f"background must be an (r, g, b) tuple of 0..255 values, got {background!r}")
            rgba = im.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, bg + (255,)), rgba).convert("RGB")
        return im.convert("RGB")
    except ImageError:
        raise
    except (ValueError, OSError) as e:
        raise ImageError(f"cannot convert a PIL image of mode {im.mode} to RGB: {e}") from None


def _channel_triple(name: str, v: Any, positive: bool) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ImageError(f"{name} must be 3 numbers, got {v!r}") from None
    if a.size != 3 or not np.all(np.isfinite(a)) or (positive and not np.all(a > 0)):
        raise ImageError(f"{name} must be 3 finite{' positive' if positive else ''} numbers, got {v!r}")
    return a.astype(np.float32)


def preprocess(image: Any, size: int, mean: Sequence[float], std: Sequence[float], *,
               background: Sequence[int] | None = WHITE, exif_transpose: bool = True,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The model input for one image: float32 array (3, size, size), RGB, normalised.
    Equivalent to torchvision's Compose([Resize((size, size), BICUBIC), ToTensor(), Normalize(mean, std)])
    applied to ``to_rgb(load_image(image))``. Raises ImageError."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= 8192:
        raise ImageError(f"size must be an integer in [1, 8192], got {size!r}")
    size = int(size)
    m = _channel_triple("mean", mean, positive=False)
    s = _channel_triple("std", std, positive=True)
    im = to_rgb(load_image(image, exif_transpose=exif_transpose, max_pixels=max_pixels), background)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    x = np.asarray(im, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    x = (x - m) / s
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_for_model(image: Any, model: Any, **kwargs: Any) -> np.ndarray:
    """:func:`preprocess` with the image size, mean and std of a loaded model (``tinygptv_native`` Model)."""
    if not getattr(model, "has_vision", False):
        raise ImageError("this model has no vision encoder, so it cannot take an image")
    return preprocess(image, model.image_size, model.image_mean, model.image_std, **kwargs)

