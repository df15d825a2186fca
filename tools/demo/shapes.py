"""Synthetic pictures for the demo model: one to three coloured shapes on a light background.

A scene is painter independent: every shape is described in normalised coordinates (0..1 of the
picture's width/height), so the same scene can be drawn at any size. The training generator varies
everything a picture drawn by another hand may vary, so that the model learns the colour and kind of
a shape rather than one painter's habits:

  placement   free (no grid): anywhere in the picture, boxes never overlap, centres at least MIN_DX
              apart in x so that "left to right" is unambiguous
  size        the longer side of a shape's box is 5-25% of the picture side
  proportions squares 0.8-1.25 wide/high, triangles 0.6-1.6 high/wide with the apex anywhere over the
              middle 80% of the base
  drawing     PIL on a 4x canvas box-filtered down (anti-aliased) or directly (hard edges); several
              shades per colour name with jitter; a dark or black outline on some pictures;
              white, grey or tinted light backgrounds; drawn at 48-224 pixels; JPEG artefacts on some

Shape geometry: the box (x0, y0, x1, y1); a circle fills it (an ellipse when it is not square, the
generator only draws circles), a square is the box, a triangle has its base on the box's bottom and
its apex on the top edge at x0 + apex * (x1 - x0).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow")

# Several shades per colour name: a picture from elsewhere rarely uses one exact RGB value.
SHADES = {
    "red": ((220, 30, 30), (200, 20, 50), (235, 70, 45), (175, 25, 25)),
    "green": ((30, 160, 40), (50, 185, 85), (20, 125, 55), (95, 190, 60)),
    "blue": ((30, 60, 220), (45, 105, 230), (25, 40, 165), (65, 125, 215)),
    "yellow": ((240, 205, 20), (250, 228, 65), (232, 188, 0), (255, 214, 45)),
}

SIZE_RANGE = (0.05, 0.25)   # longer side of a shape's box, fraction of the picture side
MARGIN = 0.01               # between a box and the picture border
MIN_GAP = 0.02              # between two boxes (in x or in y)
MIN_DX = 0.04               # between two centres in x: "left to right" stays unambiguous
RENDER_SIZES = (48, 64, 96, 128, 160, 224)


@dataclass(frozen=True)
class Shape:
    kind: str     # one of KINDS
    color: str    # one of COLORS
    x0: float     # box, 0..1
    y0: float
    x1: float
    y1: float
    apex: float = 0.5   # triangles: apex x as a fraction of the box width

    @property
    def cx(self) -> float:
        return 0.5 * (self.x0 + self.x1)

    @property
    def cy(self) -> float:
        return 0.5 * (self.y0 + self.y1)

    def bbox(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]


def separated(a: Shape, b: Shape, gap: float = MIN_GAP, min_dx: float = MIN_DX) -> bool:
    """Boxes apart by `gap` (in x or y) and centres apart by `min_dx` in x."""
    apart = a.x1 + gap <= b.x0 or b.x1 + gap <= a.x0 or a.y1 + gap <= b.y0 or b.y1 + gap <= a.y0
    return apart and abs(a.cx - b.cx) >= min_dx


def _random_shape(rng: np.random.Generator, size_range) -> Shape:
    kind = KINDS[int(rng.integers(3))]
    color = COLORS[int(rng.integers(4))]
    side = float(rng.uniform(*size_range))
    apex = 0.5
    if kind == "circle":
        w = h = side
    else:
        # aspect = height / width; the longer side is `side`
        aspect = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))) if kind == "square" else \
            float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
        w, h = (side, side * aspect) if aspect <= 1 else (side / aspect, side)
        if kind == "triangle":
            apex = float(rng.uniform(0.1, 0.9))
    x0 = float(rng.uniform(MARGIN, 1 - MARGIN - w))
    y0 = float(rng.uniform(MARGIN, 1 - MARGIN - h))
    return Shape(kind, color, x0, y0, x0 + w, y0 + h, apex)


def sample_scene(rng: np.random.Generator, size_range=SIZE_RANGE, n_shapes: int | None = None) -> Scene:
    """Draws a random scene of one to three separated shapes placed freely."""
    if n_shapes is None:
        n_shapes = int(rng.integers(1, 4))
    if not 1 <= n_shapes <= 3:
        raise ValueError(f"n_shapes must be 1..3, got {n_shapes}")
    lo, hi = size_range
    if not (0 < lo <= hi <= 0.3):
        raise ValueError(f"size range {size_range} must lie in (0, 0.3]")
    shapes: list[Shape] = []
    while len(shapes) < n_shapes:
        s = _random_shape(rng, size_range)
        if all(separated(s, o) for o in shapes):
            shapes.append(s)
    return Scene(tuple(shapes))


def _jitter(rgb, rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    d = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(np.clip(c + x, 0, 255)) for c, x in zip(rgb, d))


def _background(rng: np.random.Generator) -> tuple[int, int, int]:
    """White, light grey, or a light low-saturation tint (never as saturated as a shape)."""
    u = rng.random()
    if u < 0.35:
        return (255, 255, 255)
    g = int(rng.integers(205, 256))
    if u < 0.65:
        return (g, g, g)
    return tuple(int(np.clip(g + d, 0, 255)) for d in rng.integers(-18, 19, size=3))


def paint(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """The training painter: PIL polygons, anti-aliased or not, outlines, backgrounds, JPEG."""
    ss = 4 if rng.random() < 0.6 else 1
    big = size * ss
    img = Image.new("RGB", (big, big), _background(rng))
    draw = ImageDraw.Draw(img)
    outline = rng.random() < 0.35
    black = rng.random() < 0.5
    width = int(round(float(rng.uniform(0.6, 2.5)) * ss))
    for s in scene.shapes:
        fill = _jitter(SHADES[s.color][int(rng.integers(4))], rng, 12)
        line = None
        if outline:
            line = _jitter((30, 30, 30), rng, 25) if black else tuple(int(c * 0.55) for c in fill)
        x0, y0, x1, y1 = (v * big for v in s.bbox())
        # PIL's boxes are inclusive: the last pixel column/row is x1 - 1
        box = [x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)]
        if s.kind == "circle":
            draw.ellipse(box, fill=fill, outline=line, width=width if line else 0)
        elif s.kind == "square":
            draw.rectangle(box, fill=fill, outline=line, width=width if line else 0)
        else:
            pts = [(x0 + s.apex * (x1 - x0), y0), (box[2], box[3]), (x0, box[3])]
            draw.polygon(pts, fill=fill, outline=line, width=width if line else 0)
    if ss > 1:
        img = img.resize((size, size), Image.BOX)
    if rng.random() < 0.3:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(25, 91)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def draw_sample(rng: np.random.Generator, size: int | None = None) -> tuple[Scene, Image.Image]:
    """A fresh scene drawn by the training painter at size x size pixels (a random render size when None)."""
    scene = sample_scene(rng)
    if size is None:
        size = int(RENDER_SIZES[int(rng.integers(len(RENDER_SIZES)))])
    return scene, paint(scene, size, rng)
