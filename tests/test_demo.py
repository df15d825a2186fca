"""The embedded demo model answers through the whole native pipeline (a fast subset of
benchmarks/bench_demo.py). A wrong kernel, quantizer, tokenizer or image splice breaks these answers.

The thresholds are set below what the shipped model measures (benchmarks/bench_demo.py, 500 questions
per painter: 99.3% / 98.5% exact, boxes with IoU >= 0.5 89.5% / 86.7%), so they catch regressions, not
noise: on 60 questions a model at 98% falls below 90% with a probability under 0.2%.
"""
import os
import sys

import numpy as np
import pytest

from tinygptv_native import Model
from tinygptv_native.demo import demo_image_path, demo_model_path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools", "demo"))
from questions import candidates, iou, parse_box, sample_question  # noqa: E402
from shapes import draw_sample  # noqa: E402


@pytest.fixture(scope="module")
def demo():
    return Model(n_threads=2)


def test_demo_model_is_shipped_small_and_q8_0(demo):
    assert os.path.getsize(demo_model_path()) <= 20 * 1024 * 1024
    assert demo.metadata["general.file_type"] == 7  # MOSTLY_Q8_0
    assert demo.metadata["tokenizer.ggml.model"] == "llama"
    assert demo.has_vision and demo.n_image_tokens == 16


def test_example_picture(demo):
    img = str(demo_image_path())
    assert demo.chat("How many shapes are there?", image=img, temperature=0) == "three"
    assert demo.chat("Is there a green triangle?", image=img, temperature=0) == "yes"


@pytest.mark.parametrize("painter", ["A", "B"])
def test_fresh_pictures(demo, painter):
    rng = np.random.default_rng(2024 + ord(painter))
    right = {"count": [0, 0], "exists": [0, 0], "color": [0, 0], "all": [0, 0]}
    for _ in range(60):
        scene, img = draw_sample(rng, painter, 256)
        qtype, q, a = sample_question(scene, rng)
        if qtype == "refer":
            continue
        ok = demo.chat(q, image=img, temperature=0, max_new_tokens=24).strip() == a
        for k in (qtype, "all"):
            if k in right:
                right[k][0] += ok
                right[k][1] += 1
    assert right["count"][1] >= 5 and right["count"][0] == right["count"][1], right
    assert right["exists"][0] >= 0.8 * right["exists"][1], right
    assert right["color"][0] >= 0.8 * right["color"][1], right
    assert right["all"][0] >= 0.9 * right["all"][1], right


@pytest.mark.parametrize("painter", ["A", "B"])
def test_grounding_boxes(demo, painter):
    rng = np.random.default_rng(77 + ord(painter))
    hits = n = 0
    while n < 30:
        scene, img = draw_sample(rng, painter, 256)
        cands = candidates(scene, "refer")
        if not cands:
            continue
        q, a = cands[int(rng.integers(len(cands)))]
        box = parse_box(demo.chat(q, image=img, temperature=0, max_new_tokens=24))
        hits += box is not None and iou(box, parse_box(a)) >= 0.5
        n += 1
    assert hits >= 0.7 * n, (hits, n)
