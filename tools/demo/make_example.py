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

EXAMPLE = Scene((
    Shape("circle", "red", 0.20, 0.30, 0.14),
    Shape("triangle", "green", 0.50, 0.70, 0.15),
    Shape("square", "blue", 0.80, 0.32, 0.13),
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
