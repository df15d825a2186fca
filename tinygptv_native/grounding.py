"""Bounding boxes in answers to [grounding], [refer] and [detection] questions.

TinyGPT-V (like MiniGPT-v2) writes a box as ``{<x1><y1><x2><y2>}`` with integers on a 0-100 grid over the
model's square input. The input is the whole image resized without keeping its aspect ratio, so grid
coordinates map to the original image by scaling x by width/100 and y by height/100. A box may follow a
label ``<p>phrase</p>``; several boxes of one label are separated by ``<delim>``::

    <p>a dog</p> {<10><20><50><90>}<delim>{<55><20><95><90>} next to <p>a ball</p> {<40><70><60><95>}

:func:`parse_boxes` returns every well-formed box (malformed box text is skipped, coordinates are
clamped to the grid and put in order); :func:`draw_boxes` draws them on the image with Pillow.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

GRID = 100

_NUM = r"<\s*(-?\d{1,6})\s*>"
_BOX = re.compile(r"\{\s*" + r"\s*".join([_NUM] * 4) + r"\s*\}")
_PHRASE = re.compile(r"<p>(.*?)</p>", re.S)
_TOKEN = re.compile(_BOX.pattern + r"|<p>(.*?)</p>|<delim>", re.S)


@dataclass(frozen=True)
class Box:
    """One box: ``label`` (the preceding <p>phrase</p>, or None), ``grid`` (x1, y1, x2, y2 on the 0-100
    grid) and ``xyxy`` (pixels of the original image, floats), ``span`` (where it is in the text)."""
    label: Optional[str]
    grid: Tuple[int, int, int, int]
    xyxy: Tuple[float, float, float, float]
    span: Tuple[int, int]

    @property
    def width(self) -> float:
        return self.xyxy[2] - self.xyxy[0]

    @property
    def height(self) -> float:
        return self.xyxy[3] - self.xyxy[1]


def _image_size(image: Any) -> Tuple[int, int]:
    if image is None:
        return GRID, GRID
    if isinstance(image, (tuple, list)) and len(image) == 2:
        w, h = int(image[0]), int(image[1])
    elif hasattr(image, "size") and isinstance(getattr(image, "size"), tuple):
        w, h = image.size  # PIL image
    elif hasattr(image, "shape"):
        h, w = int(image.shape[0]), int(image.shape[1])  # numpy HWC
    else:
        from .image import load_image
        w, h = load_image(image).size
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    return w, h


def parse_boxes(text: str, image: Any = None) -> List[Box]:
    """The boxes in an answer, mapped to pixels of ``image`` (a (width, height) tuple, a PIL image, a uint8
    array or anything :func:`tinygptv_native.image.load_image` takes; None keeps the 0-100 grid).

    Each box gets the label of the nearest preceding ``<p>phrase</p>`` (boxes joined by ``<delim>`` share
    it; other text in between ends it). Coordinates outside 0..100 are clamped; swapped corners are put
    in order; anything that is not exactly four integers in braces is not a box."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    w, h = _image_size(image)
    boxes: List[Box] = []
    label: Optional[str] = None
    chain_end = 0  # end of the phrase, box or <delim> the current label's chain has reached
    for m in _TOKEN.finditer(text):
        if text[chain_end:m.start()].strip():
            label = None  # other text in between: the label no longer applies
        if m.group(5) is not None:
            label = m.group(5).strip() or None
        elif m.group(1) is not None:
            x1, y1, x2, y2 = (min(GRID, max(0, int(m.group(i)))) for i in range(1, 5))
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
            boxes.append(Box(label, (x1, y1, x2, y2), (x1 * w / GRID, y1 * h / GRID, x2 * w / GRID, y2 * h / GRID),
                             (m.start(), m.end())))
        chain_end = m.end()
    return boxes


def strip_boxes(text: str) -> str:
    """The answer without box markup: ``<p>a dog</p> {<..>}`` becomes ``a dog``."""
    t = _BOX.sub("", text)
    t = t.replace("<delim>", "")
    t = _PHRASE.sub(lambda m: m.group(1), t)
    return re.sub(r"[ \t]{2,}", " ", t).strip()


_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]


def draw_boxes(image: Any, boxes: Union[str, Sequence[Box]], *, width: int = 0, out: Any = None):
    """Draws boxes (a list of Box, or an answer text to parse) with their labels on a copy of ``image``
    (anything :func:`tinygptv_native.image.load_image` takes); returns the PIL image, and saves it to ``out``
    (a path) when given (written under a temporary name, then renamed)."""
    from PIL import ImageDraw

    from .image import load_image, to_rgb
    im = to_rgb(load_image(image)).copy()
    if isinstance(boxes, str):
        boxes = parse_boxes(boxes, im.size)
    if width <= 0:
        width = max(2, round(min(im.size) / 150))
    d = ImageDraw.Draw(im)
    colors = {}
    for b in boxes:
        c = colors.setdefault(b.label, _COLORS[len(colors) % len(_COLORS)])
        x1, y1, x2, y2 = b.xyxy
        x2, y2 = max(x1, x2 - 1), max(y1, y2 - 1)  # pixel x2 is exclusive
        d.rectangle([x1, y1, x2, y2], outline=c, width=width)
        if b.label:
            tb = d.textbbox((x1 + width, y1 + width), b.label)
            d.rectangle(tb, fill=c)
            d.text((x1 + width, y1 + width), b.label, fill=(255, 255, 255))
    if out is not None:
        import os
        out = os.fspath(out)
        tmp = f"{out}.tmp{os.getpid()}"
        fmt = _format_of(out)
        try:
            im.save(tmp, format=fmt)
            os.replace(tmp, out)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    return im


def _format_of(path: str) -> str:
    from PIL import Image
    ext = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    fmt = Image.registered_extensions().get("." + ext)
    if fmt is None:
        raise ValueError(f"cannot tell the image format of '{path}' from its extension (use .png or .jpg)")
    return fmt
