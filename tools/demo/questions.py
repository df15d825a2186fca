"""Questions with deterministic, unambiguous answers about a shapes scene, and the chat template.

Only questions whose answer is unambiguous are asked: "What color is the circle?" only when the
scene holds exactly one circle, "[refer] where is the green triangle?" only when exactly one green
triangle exists, and so on. Boxes are TinyGPT-V's `{<x1><y1><x2><y2>}` on the 0..100 grid.
"""
from __future__ import annotations

import numpy as np

from shapes import COLORS, KINDS, Scene, Shape

# TinyGPT-V stage-4 chat template (demo_v2.py): no BOS, "<s>" is plain text.
PROMPT_TEMPLATE = "<s>[INST] <Img><ImageHere></Img> {prompt} [/INST]"
IMAGE_MARK = "<ImageHere>"
END_SYM = "###"

QTYPES = ("color", "shape", "count", "exists", "describe", "refer")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


def prompt_segments(question: str) -> tuple[str, str]:
    """The text before and after the image embeddings."""
    before, after = PROMPT_TEMPLATE.format(prompt=question).split(IMAGE_MARK)
    return before, after


def box_of(s: Shape) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = s.bbox()
    return tuple(int(np.clip(round(v * 100), 0, 100)) for v in (x0, y0, x1, y1))


def format_box(box) -> str:
    return "{" + "".join(f"<{v}>" for v in box) + "}"


def parse_box(text: str):
    """Parses `{<x1><y1><x2><y2>}`; returns None when the text is not such a box."""
    t = text.strip()
    if not (t.startswith("{<") and t.endswith(">}")):
        return None
    parts = t[2:-2].split("><")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def describe(scene: Scene) -> str:
    """Canonical sentence: the shapes from left to right."""
    parts = [f"a {s.color} {s.kind}" for s in sorted(scene.shapes, key=lambda s: s.cx)]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def candidates(scene: Scene, qtype: str) -> list[tuple[str, str]]:
    """Every unambiguous (question, answer) of one type for the scene."""
    sh = scene.shapes
    out: list[tuple[str, str]] = []
    if qtype == "color":
        for k in KINDS:
            m = [s for s in sh if s.kind == k]
            if len(m) == 1:
                out.append((f"What color is the {k}?", m[0].color))
    elif qtype == "shape":
        for c in COLORS:
            m = [s for s in sh if s.color == c]
            if len(m) == 1:
                out.append((f"What shape is the {c} object?", m[0].kind))
    elif qtype == "count":
        out.append(("How many shapes are there?", NUMBER_WORDS[len(sh)]))
    elif qtype == "exists":
        present = {(s.color, s.kind) for s in sh}
        for c in COLORS:
            for k in KINDS:
                out.append((f"Is there a {c} {k}?", "yes" if (c, k) in present else "no"))
    elif qtype == "describe":
        out.append(("Describe the image.", describe(scene)))
    elif qtype == "refer":
        for s in sh:
            if sum(1 for o in sh if o.color == s.color and o.kind == s.kind) == 1:
                out.append((f"[refer] where is the {s.color} {s.kind}?", format_box(box_of(s))))
    else:
        raise ValueError(f"unknown question type {qtype!r}, expected one of {QTYPES}")
    return out


def sample_question(scene: Scene, rng: np.random.Generator, weights=None) -> tuple[str, str, str]:
    """(qtype, question, answer) drawn over the question types available for the scene.
    Yes/no questions are balanced: half ask about a shape that is there."""
    types = [t for t in QTYPES if candidates(scene, t)]
    w = np.array([1.0 if weights is None else weights.get(t, 1.0) for t in types])
    qtype = types[int(rng.choice(len(types), p=w / w.sum()))]
    cands = candidates(scene, qtype)
    if qtype == "exists":
        want = "yes" if rng.random() < 0.5 else "no"
        cands = [c for c in cands if c[1] == want]
    q, a = cands[int(rng.integers(len(cands)))]
    return qtype, q, a
