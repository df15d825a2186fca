"""Chats about fresh pictures and their scoring, shared by evaluate.py (PyTorch), the native-engine
benchmark (benchmarks/bench_demo.py) and tests/test_demo.py.

Each picture gets one chat of three questions (question types equally likely, random phrasings);
the second and third questions are asked with the model's own earlier answers in context, as in a
real chat. Answers without boxes count when exactly right; answers with boxes ([refer], [detection],
[grounding]) when the text around the boxes is right and every box has IoU >= 0.5.

Pictures come from the training generator ("gen", seeds it never uses) or from the independent
painter of tests/demo_painter.py ("indep").
"""
from __future__ import annotations

import os
import sys
from collections import defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from questions import BOX_TYPES, is_right, sample_chat  # noqa: E402
from shapes import draw_sample  # noqa: E402

TURNS = 3
MAX_NEW_TOKENS = 64


def painter(name: str):
    """rng -> (scene, picture) of the named painter."""
    if name == "gen":
        return draw_sample
    if name == "indep":
        sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))
        import demo_painter
        return demo_painter.draw
    raise ValueError(f"unknown painter {name!r}, expected 'gen' or 'indep'")


# The question types of the first demo model, asked in their one canonical phrasing: a fair
# comparison with it.
CANONICAL = {"color": 1, "shape": 1, "count": 1, "exists": 1, "describe": 1, "refer": 1}


def make_chats(painter_name: str, n: int, seed: int, turns: int = TURNS, canonical: bool = False):
    """n (picture, [(qtype, question, answer)] * turns), deterministic in seed; all question types in
    random phrasings, or with `canonical` those of CANONICAL in their canonical phrasing."""
    draw = painter(painter_name)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene, img = draw(rng)
        out.append((img, sample_chat(scene, rng, turns, CANONICAL if canonical else None, not canonical)))
    return out


class Tally:
    """Right/asked per turn group (first question / follow-ups), kind (exact / boxes) and type."""

    def __init__(self):
        self.counts = defaultdict(lambda: [0, 0])
        self.misses: list[tuple[int, str, str, str]] = []

    def add(self, turn: int, qtype: str, question: str, expected: str, predicted: str) -> bool:
        ok = is_right(qtype, predicted, expected)
        group = "first" if turn == 0 else "later"
        kind = "boxes" if qtype in BOX_TYPES else "exact"
        for key in ((group, kind), ("all", kind), ("type", qtype)):
            self.counts[key][0] += ok
            self.counts[key][1] += 1
        if not ok:
            self.misses.append((turn, question, expected, predicted))
        return ok

    def rate(self, group: str, kind: str) -> float:
        r, n = self.counts[(group, kind)]
        return r / n if n else float("nan")

    def summary(self) -> str:
        head = "  ".join(f"{g} {k} {100 * self.rate(g, k):.1f}% ({self.counts[(g, k)][1]})"
                         for g in ("first", "later") for k in ("exact", "boxes"))
        types = " ".join(f"{k[1]} {v[0]}/{v[1]}" for k, v in sorted(self.counts.items()) if k[0] == "type")
        return head + "\n    " + types


def run_engine(model, chats, tally: Tally | None = None) -> Tally:
    """Asks every chat through the native engine (tinygptv_native.Model), greedy."""
    tally = tally or Tally()
    for img, turns in chats:
        chat = model.new_chat()
        for i, (qtype, q, a) in enumerate(turns):
            p = chat.ask(q, image=img if i == 0 else None, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)
            tally.add(i, qtype, q, a, p.strip())
    return tally
