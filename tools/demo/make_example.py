"""Draws the bundled example picture: a red circle, a green triangle and a blue square.

    python tools/demo/make_example.py --out tinygptv_native/demo_assets/example.png

Drawn by the independent painter of tests/demo_painter.py (the hand the model never saw in training)
at 256 x 256 pixels; the engine resizes it to the model's input size like any other picture.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))

from demo_painter import paint  # noqa: E402
from shapes import Scene, Shape  # noqa: E402

EXAMPLE = Scene((
    Shape("circle", "red", 0.08, 0.22, 0.27, 0.41),
    Shape("triangle", "green", 0.36, 0.56, 0.55, 0.74, apex=0.4),
    Shape("square", "blue", 0.70, 0.12, 0.88, 0.30),
))
SIZE = 256


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    img = paint(EXAMPLE, SIZE, np.random.default_rng(7))
    tmp = args.out + ".tmp.png"
    img.save(tmp, optimize=True)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
