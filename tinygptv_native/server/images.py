"""Images in requests: what the server accepts and the limits it keeps.

An image arrives as a ``data:image/...;base64,`` URL, as bare base64 (OpenAI's ``image_url`` and
ollama's ``images``), or as a ``file://`` URL naming a file under ``--media-dir`` (refused when no
media folder is set, or when the path, links resolved, leaves it). ``http(s)://`` URLs are refused:
the server fetches nothing. Each image is checked before the model sees it: its encoded size, its
format (the header, not the declared type), and its width x height from the header, so a
decompression bomb is refused before any pixel is decoded. The model gets the encoded bytes.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import re
import warnings
from typing import Optional
from urllib.parse import unquote, urlsplit

from .errors import APIError, bad_request

_B64_CHARS = re.compile(rb"^[A-Za-z0-9+/=_\-\s]*$")


def decode_base64(s: str, *, max_bytes: int, what: str) -> bytes:
    """Bytes of a base64 string (standard or URL-safe alphabet, padding optional)."""
    if len(s) * 3 // 4 > max_bytes + 3:
        raise APIError(413, f"{what} is larger than the limit of {max_bytes} bytes", code="image_too_large")
    raw = s.encode("ascii", "replace")
    if not _B64_CHARS.match(raw):
        raise bad_request(f"{what} is not valid base64", code="invalid_image")
    raw = re.sub(rb"\s+", b"", raw).replace(b"-", b"+").replace(b"_", b"/")
    raw += b"=" * (-len(raw) % 4)
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad_request(f"{what} is not valid base64 ({e})", code="invalid_image") from None
    if not data:
        raise bad_request(f"{what} is empty", code="invalid_image")
    return data


def check_image(data: bytes, *, max_bytes: int, max_pixels: int, what: str) -> bytes:
    """The image's bytes when they are an allowed format within the size limits (header only)."""
    from PIL import Image, UnidentifiedImageError

    from ..image import ALLOWED_FORMATS
    if len(data) > max_bytes:
        raise APIError(413, f"{what} has {len(data)} bytes, more than the limit of {max_bytes}",
                       code="image_too_large")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = im.format, im.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise APIError(413, f"{what} is too large to decode safely (decompression bomb): {e}",
                           code="image_too_large") from None
        except UnidentifiedImageError:
            raise APIError(422, f"{what} is not a recognised image (allowed formats: {', '.join(ALLOWED_FORMATS)})",
                           code="invalid_image") from None
        except Exception as e:
            raise APIError(422, f"{what} cannot be read as an image: {type(e).__name__}: {e}",
                           code="invalid_image") from None
    if fmt not in ALLOWED_FORMATS:
        raise APIError(422, f"{what} is a {fmt} image; allowed formats are {', '.join(ALLOWED_FORMATS)}",
                       code="invalid_image")
    if w <= 0 or h <= 0:
        raise APIError(422, f"{what} has zero size ({w}x{h})", code="invalid_image")
    if w * h > max_pixels:
        raise APIError(413, f"{what} has {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}",
                       code="image_too_large")
    return data


class ImageReader:
    """Turns the image references of requests into checked bytes, keeping the server's limits."""

    def __init__(self, *, media_dir: Optional[str], max_bytes: int, max_pixels: int):
        self.media_dir = os.path.realpath(media_dir) if media_dir else None
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)

    def from_url(self, url: str, what: str) -> bytes:
        """An OpenAI ``image_url``: a data URL, bare base64 or a file:// URL under the media folder."""
        if not isinstance(url, str) or not url:
            raise bad_request(f"{what}: the image URL must be a non-empty string", code="invalid_image_url")
        head = url[:16].lower()
        if head.startswith("data:"):
            meta, sep, payload = url.partition(",")
            if not sep:
                raise bad_request(f"{what}: a data URL needs a ',' before its data", code="invalid_image_url")
            mime = meta[5:].split(";")[0].strip().lower()
            if mime and not mime.startswith("image/"):
                raise bad_request(f"{what}: the data URL holds '{mime[:60]}', not an image", code="invalid_image_url")
            if ";base64" not in meta.lower():
                raise bad_request(f"{what}: only base64 data URLs are supported", code="invalid_image_url")
            return self.from_base64(payload, what)
        if head.startswith("file:"):
            return self.from_file_url(url, what)
        if head.startswith(("http://", "https://", "ftp://")) or "://" in url[:32]:
            raise bad_request(f"{what}: remote image URLs are not fetched ({url[:80]!r}); send the image as a "
                              f"data URL or base64", code="remote_url_not_allowed")
        return self.from_base64(url, what)  # bare base64, as ollama and some clients send it

    def from_base64(self, s: str, what: str) -> bytes:
        if not isinstance(s, str):
            raise bad_request(f"{what}: an image must be a base64 string, got {type(s).__name__}",
                              code="invalid_image")
        data = decode_base64(s, max_bytes=self.max_bytes, what=what)
        return check_image(data, max_bytes=self.max_bytes, max_pixels=self.max_pixels, what=what)

    def from_file_url(self, url: str, what: str) -> bytes:
        if self.media_dir is None:
            raise APIError(403, f"{what}: file:// image URLs are disabled (start the server with --media-dir)",
                           code="file_url_not_allowed")
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise bad_request(f"{what}: a file URL must name a local file (file:///path)", code="invalid_image_url")
        path = os.path.realpath(unquote(parts.path))
        if os.path.commonpath([path, self.media_dir]) != self.media_dir:
            raise APIError(403, f"{what}: {unquote(parts.path)!r} is outside the media folder",
                           code="file_url_not_allowed")
        if not os.path.isfile(path):
            raise bad_request(f"{what}: no such file in the media folder: {unquote(parts.path)!r}",
                              code="file_not_found")
        size = os.path.getsize(path)
        if size > self.max_bytes:
            raise APIError(413, f"{what} has {size} bytes, more than the limit of {self.max_bytes}",
                           code="image_too_large")
        with open(path, "rb") as f:
            data = f.read(self.max_bytes + 1)
        return check_image(data, max_bytes=self.max_bytes, max_pixels=self.max_pixels, what=what)
