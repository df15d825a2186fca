"""Synthetic pictures for the demo model: one to three solid shapes on a white background.

A scene is painter independent: every shape is described in normalised coordinates (0..1 of the
picture's width/height), so the same scene can be drawn by two different painters at any size.

  painter A (training): PIL ImageDraw on a 4x supersampled canvas, box-filtered down (anti-aliased),
                        pure white background, small colour jitter.
  painter B (held out): numpy rasteriser testing pixel centres (no anti-aliasing), another palette,
                        stronger colour jitter, an optional dark outline, an off-white background and a
                        slightly different size range.

Shape geometry (r = half extent, the bounding box is [cx-r, cy-r, cx+r, cy+r] for every kind):
  circle   centre (cx, cy), radius r
  square   axis aligned, side 2r
  triangle apex (cx, cy-r), base corners (cx-r, cy+r) and (cx+r, cy+r)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow")

PALETTE_A = {"red": (220, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 220), "yellow": (240, 205, 20)}
PALETTE_B = {"red": (205, 25, 50), "green": (45, 150, 70), "blue": (45, 85, 205), "yellow": (250, 220, 60)}

# Layout: the picture is a GRID x GRID board of cells; each shape lies inside its own cell (at a
# random offset within it), no two shapes share a column (so "left to right" is unambiguous) and
# every shape keeps CELL_MARGIN from its cell's border (so bounding boxes never touch).
GRID = 4
CELL = 1.0 / GRID
CELL_MARGIN = 1.0 / 64
SIZE_RANGE_A = (0.075, 0.109)  # half extent, fraction of the picture side
SIZE_RANGE_B = (0.080, 0.105)
MIN_GAP = 2 * CELL_MARGIN      # gap between bounding boxes
MIN_DX = 2 * CELL_MARGIN       # centres at least this far apart in x


@dataclass(frozen=True)
class Shape:
    kind: str     # one of KINDS
    color: str    # one of COLORS
    cx: float     # centre, 0..1
    cy: float
    r: float      # half extent, 0..1

    def bbox(self) -> tuple[float, float, float, float]:
        return (self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r)


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]


def sample_scene(rng: np.random.Generator, size_range=SIZE_RANGE_A, n_shapes: int | None = None) -> Scene:
    """Draws a random scene of one to three shapes in distinct columns of the board."""
    if n_shapes is None:
        n_shapes = int(rng.integers(1, 4))
    if not 1 <= n_shapes <= 3:
        raise ValueError(f"n_shapes must be 1..3, got {n_shapes}")
    lo, hi = size_range
    if not (0 < lo <= hi and 2 * (hi + CELL_MARGIN) <= CELL):
        raise ValueError(f"size range {size_range} does not fit a cell of {CELL}")
    cols = rng.permutation(GRID)[:n_shapes]
    shapes = []
    for col in sorted(int(c) for c in cols):
        row = int(rng.integers(GRID))
        r = float(rng.uniform(lo, hi))
        free = CELL - 2 * (r + CELL_MARGIN)
        cx = col * CELL + CELL_MARGIN + r + float(rng.uniform(0, free))
        cy = row * CELL + CELL_MARGIN + r + float(rng.uniform(0, free))
        shapes.append(Shape(KINDS[int(rng.integers(3))], COLORS[int(rng.integers(4))], cx, cy, r))
    order = rng.permutation(n_shapes)
    return Scene(tuple(shapes[int(i)] for i in order))


def _jitter(rgb, rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    d = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(np.clip(c + x, 0, 255)) for c, x in zip(rgb, d))


def paint_a(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Painter A: PIL polygons on a 4x canvas, box-filtered down (anti-aliased edges)."""
    ss = 4
    big = size * ss
    img = Image.new("RGB", (big, big), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        fill = _jitter(PALETTE_A[s.color], rng, 8)
        x0, y0, x1, y1 = (v * big for v in s.bbox())
        if s.kind == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif s.kind == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        else:
            draw.polygon([(s.cx * big, y0), (x1, y1), (x0, y1)], fill=fill)
    return img.resize((size, size), Image.BOX)


def _inside(s: Shape, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Signed-distance-like inside test in normalised units (>= 0 inside)."""
    dx, dy = px - s.cx, py - s.cy
    if s.kind == "circle":
        return s.r - np.sqrt(dx * dx + dy * dy)
    if s.kind == "square":
        return s.r - np.maximum(np.abs(dx), np.abs(dy))
    # triangle: bottom edge y = cy + r, two slanted edges through the apex (slope 2)
    bottom = (s.cy + s.r) - py
    # distance to the slanted edges: line |dx| * 2 = (py - (cy - r)), normalised by sqrt(5)
    slant = ((py - (s.cy - s.r)) - 2.0 * np.abs(dx)) / np.sqrt(5.0)
    return np.minimum(bottom, slant)


def paint_b(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Painter B: hard pixel-centre rasteriser, another palette, optional dark outline."""
    bg = int(rng.integers(238, 256))
    img = np.full((size, size, 3), bg, dtype=np.uint8)
    c = (np.arange(size) + 0.5) / size
    py, px = np.meshgrid(c, c, indexing="ij")
    for s in scene.shapes:
        fill = np.array(_jitter(PALETTE_B[s.color], rng, 20), dtype=np.float64)
        d = _inside(s, px, py)
        inside = d >= 0
        img[inside] = fill.astype(np.uint8)
        if rng.random() < 0.5:
            width = float(rng.uniform(0.8, 1.6)) / size
            edge = inside & (d < width)
            img[edge] = (fill * 0.6).astype(np.uint8)
    return Image.fromarray(img, "RGB")


PAINTERS = {"A": paint_a, "B": paint_b}
SIZE_RANGES = {"A": SIZE_RANGE_A, "B": SIZE_RANGE_B}


def draw_sample(rng: np.random.Generator, painter: str, size: int) -> tuple[Scene, Image.Image]:
    """A fresh scene drawn by painter "A" or "B" at size x size pixels."""
    if painter not in PAINTERS:
        raise ValueError(f"unknown painter {painter!r}, expected one of {sorted(PAINTERS)}")
    scene = sample_scene(rng, SIZE_RANGES[painter])
    return scene, PAINTERS[painter](scene, size, rng)
