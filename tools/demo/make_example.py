"""Draws the bundled example picture: a red circle, a green triangle and a blue square.

    python tools/demo/make_example.py --out tinygptv_native/demo_assets/example.png

Drawn by painter B (the painter the model never saw in training) at 256 x 256 pixels; the engine
resizes it to the model's 64 x 64 like any other picture.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from shapes import Scene, Shape, paint_b  # noqa: E402

# one shape per board cell (4 x 4 cells of 0.25), as the generator places them
EXAMPLE = Scene((
    Shape("circle", "red", 0.125, 0.375, 0.100),
    Shape("triangle", "green", 0.380, 0.630, 0.105),
    Shape("square", "blue", 0.870, 0.130, 0.095),
))
SIZE = 256


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    img = paint_b(EXAMPLE, SIZE, np.random.default_rng(7))
    tmp = args.out + ".tmp.png"
    img.save(tmp, optimize=True)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
