"""An independent painter of coloured-shape pictures, for evaluating the demo model (never trained on).

It shares nothing with the training generator (tools/demo/shapes.py) but the scene description
(shapes.Shape: kind, colour name, box) that the questions are asked about. Its own choices:

* placement: centres drawn uniformly over the middle of the picture, kept only when the new shape
  clears every other by 4% of the side (boxes) and 6% (centres in x);
* sizes: the longer side of a box 7-22% of the picture side, drawn uniformly in area, not in side;
* geometry: every shape is a polygon (a circle is a 40-gon), rasterised in numpy by half-plane tests
  at 3 x 3 samples per pixel (supersampled, not PIL); squares 0.9-1.1 wide/high, triangles
  0.7-1.4 high/wide with the apex anywhere over the base, right-angled ones included;
* colours: its own shades of each name, +-15 jitter, a rim of a darker shade on a third of the shapes;
* background: a light vertical gradient between two random light colours;
* size: 150-320 pixels square, saved as PNG.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "demo"))
from shapes import Scene, Shape  # noqa: E402

SHADES = {
    "red": ((196, 40, 40), (228, 52, 72), (160, 22, 32)),
    "green": ((40, 170, 70), (10, 140, 20), (110, 200, 90)),
    "blue": ((0, 80, 200), (70, 90, 235), (30, 35, 175)),
    "yellow": ((245, 200, 50), (255, 232, 0), (228, 212, 40)),
}
KINDS = ("circle", "square", "triangle")
SUB = 3   # samples per pixel side


def _polygon(kind: str, box, apex: float) -> np.ndarray:
    """Vertices (counter-clockwise in image coordinates) of a shape filling box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    if kind == "circle":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        # 40 is a multiple of 4: vertices at the four extremes, so the polygon touches its box
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    if kind == "square":
        return np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0]])
    return np.array([[x0 + apex * (x1 - x0), y0], [x0, y1], [x1, y1]])


def _coverage(poly: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """1 where (px, py) is inside the convex polygon (either orientation), else 0."""
    inside_pos = np.ones(px.shape, bool)
    inside_neg = np.ones(px.shape, bool)
    for (ax, ay), (bx, by) in zip(poly, np.roll(poly, -1, axis=0)):
        cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
        inside_pos &= cross >= 0
        inside_neg &= cross <= 0
    return (inside_pos | inside_neg).astype(np.float32)


def sample_scene(rng: np.random.Generator) -> Scene:
    n = int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4]))
    shapes: list[Shape] = []
    while len(shapes) < n:
        kind = KINDS[int(rng.integers(3))]
        side = float(np.sqrt(rng.uniform(0.07 ** 2, 0.22 ** 2)))
        if kind == "circle":
            w = h = side
        else:
            aspect = float(rng.uniform(0.9, 1.1) if kind == "square" else rng.uniform(0.7, 1.4))  # h / w
            w, h = (side, side * aspect) if aspect <= 1 else (side / aspect, side)
        cx, cy = rng.uniform(0.15, 0.85, size=2)
        x0, y0 = float(np.clip(cx - w / 2, 0.02, 0.98 - w)), float(np.clip(cy - h / 2, 0.02, 0.98 - h))
        apex = float(rng.uniform(0.0, 1.0))
        s = Shape(kind, ("red", "green", "blue", "yellow")[int(rng.integers(4))], x0, y0, x0 + w, y0 + h, apex)
        clear = all((s.x1 + 0.04 <= o.x0 or o.x1 + 0.04 <= s.x0 or s.y1 + 0.04 <= o.y0 or o.y1 + 0.04 <= s.y0)
                    and abs(s.cx - o.cx) >= 0.06 for o in shapes)
        if clear:
            shapes.append(s)
    return Scene(tuple(shapes))


def paint(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    top = rng.uniform(215, 255, size=3)
    bottom = rng.uniform(215, 255, size=3)
    t = ((np.arange(size) + 0.5) / size)[:, None, None]
    img = np.broadcast_to(top * (1 - t) + bottom * t, (size, size, 3)).astype(np.float32).copy()
    for s in scene.shapes:
        fill = np.clip(np.array(SHADES[s.color][int(rng.integers(3))]) + rng.integers(-15, 16, size=3), 0, 255)
        rim = rng.random() < 0.33
        # only the pixels of the shape's box (plus one) are rasterised
        x0, y0 = max(0, int(s.x0 * size) - 1), max(0, int(s.y0 * size) - 1)
        x1, y1 = min(size, int(np.ceil(s.x1 * size)) + 1), min(size, int(np.ceil(s.y1 * size)) + 1)
        off = (np.arange(SUB) + 0.5) / SUB
        xs = ((np.arange(x0, x1)[:, None] + off[None]).ravel()) / size
        ys = ((np.arange(y0, y1)[:, None] + off[None]).ravel()) / size
        py, px = np.meshgrid(ys, xs, indexing="ij")
        poly = _polygon(s.kind, s.bbox(), s.apex)
        cover = _coverage(poly, px, py)
        colour = np.broadcast_to(fill.astype(np.float32), cover.shape + (3,)).copy()
        if rim:
            # the polygon shrunk towards its centroid by 2 pixels keeps the fill; the rest is the rim
            c = poly.mean(0)
            k = max(0.0, 1 - 2.0 / size / max(1e-6, 0.5 * min(s.x1 - s.x0, s.y1 - s.y0)))
            inner = _coverage(c + (poly - c) * k, px, py)
            colour[inner == 0] = fill * 0.55
        # average the SUB x SUB samples of each pixel
        hgt, wid = y1 - y0, x1 - x0
        a = cover.reshape(hgt, SUB, wid, SUB).mean((1, 3))[..., None]
        col = (colour * cover[..., None]).reshape(hgt, SUB, wid, SUB, 3).sum((1, 3)) / np.maximum(
            cover.reshape(hgt, SUB, wid, SUB).sum((1, 3)), 1e-6)[..., None]
        region = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = region * (1 - a) + col * a
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def draw(rng: np.random.Generator) -> tuple[Scene, Image.Image]:
    """A fresh scene and its picture at a random size of 150-320 pixels."""
    scene = sample_scene(rng)
    return scene, paint(scene, int(rng.integers(150, 321)), rng)
