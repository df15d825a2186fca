"""The embedded demo model: a tiny TinyGPT-V trained on synthetic pictures of coloured shapes.

It ships inside the package (models/demo-q8_0.gguf) so the whole pipeline can be tried offline,
and so that tests exercise every component end to end. tools/demo/ rebuilds it from scratch.
"""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
DEMO_MODEL = _HERE / "models" / "demo-q8_0.gguf"
DEMO_IMAGE = _HERE / "demo_assets" / "example.png"


def demo_model_path() -> Path:
    if not DEMO_MODEL.is_file():
        raise FileNotFoundError(f"the embedded demo model is missing from this installation ({DEMO_MODEL})")
    return DEMO_MODEL


def demo_image_path() -> Path:
    if not DEMO_IMAGE.is_file():
        raise FileNotFoundError(f"the demo picture is missing from this installation ({DEMO_IMAGE})")
    return DEMO_IMAGE
