"""Draws the bundled example picture: a red circle, a green triangle and a blue square.

    python tools/demo/make_example.py --out tinygptv_native/demo_assets/example.png

256 x 256 pixels, drawn by its own small rasteriser (the picture the shipped model, trained on a 4 x 4
board of shapes, was first shown with; kept so that its answers and the tests built on them stay):
hard pixel-centre edges, an off-white background, a darker outline on some shapes. The engine resizes
it to the model's input size like any other picture.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

# (kind, colour name, centre x, centre y, half extent), normalised to the picture side
EXAMPLE = (("circle", "red", 0.125, 0.375, 0.100),
           ("triangle", "green", 0.380, 0.630, 0.105),
           ("square", "blue", 0.870, 0.130, 0.095))
FILL = {"red": (205, 25, 50), "green": (45, 150, 70), "blue": (45, 85, 205)}
SIZE = 256


def _inside(kind, cx, cy, r, px, py):
    """Signed-distance-like inside test in normalised units (>= 0 inside); a triangle has its apex at
    (cx, cy - r) and its base from (cx - r, cy + r) to (cx + r, cy + r)."""
    dx, dy = px - cx, py - cy
    if kind == "circle":
        return r - np.sqrt(dx * dx + dy * dy)
    if kind == "square":
        return r - np.maximum(np.abs(dx), np.abs(dy))
    slant = ((py - (cy - r)) - 2.0 * np.abs(dx)) / np.sqrt(5.0)
    return np.minimum((cy + r) - py, slant)


def paint(size: int, rng: np.random.Generator) -> Image.Image:
    img = np.full((size, size, 3), int(rng.integers(238, 256)), dtype=np.uint8)
    c = (np.arange(size) + 0.5) / size
    py, px = np.meshgrid(c, c, indexing="ij")
    for kind, colour, cx, cy, r in EXAMPLE:
        jitter = rng.integers(-20, 21, size=3)
        fill = np.array([int(np.clip(v + j, 0, 255)) for v, j in zip(FILL[colour], jitter)], dtype=np.float64)
        d = _inside(kind, cx, cy, r, px, py)
        inside = d >= 0
        img[inside] = fill.astype(np.uint8)
        if rng.random() < 0.5:
            edge = inside & (d < float(rng.uniform(0.8, 1.6)) / size)
            img[edge] = (fill * 0.6).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    img = paint(SIZE, np.random.default_rng(7))
    tmp = args.out + ".tmp.png"
    img.save(tmp, optimize=True)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
