"""The embedded demo model answers through the whole native pipeline (a fast subset of
benchmarks/bench_demo.py). A wrong kernel, quantizer, tokenizer, image splice or chat history breaks
these answers.

Chats of three questions about pictures of the training generator and of the independent painter
(tests/demo_painter.py, never trained on); the second and third questions are asked with the model's
own answers before them in context. The shipped model was trained on shapes on a 4 x 4 board in one
phrasing per question, so it is asked only its own question types in their canonical phrasing
(chat_eval.CANONICAL); it answers most pictures of other hands wrongly (tools/demo/README.md,
"Results"). The thresholds are set just below what it measures on these 40 chats per painter
(first questions 50.0% / 48.4%, follow-ups 32.3% / 33.3%, answers with boxes 2 of 23 per painter):
they catch regressions of the pipeline, and a better model raises them.
"""
import os
import sys

import pytest

from tinygptv_native import Model
from tinygptv_native.demo import demo_image_path, demo_model_path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools", "demo"))
from chat_eval import make_chats, run_engine  # noqa: E402

# per painter: first questions exact, follow-ups exact, answers with boxes (all turns)
THRESHOLDS = {"gen": (0.40, 0.27, 0.04), "indep": (0.40, 0.27, 0.04)}


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
    c = demo.new_chat()                     # a follow-up question reads the picture again
    assert c.ask("What color is the triangle?", image=img, temperature=0) == "green"
    assert c.ask("What color is the circle?", temperature=0) == "red"


@pytest.mark.parametrize("painter", ["gen", "indep"])
def test_chats_about_fresh_pictures(demo, painter):
    t = run_engine(demo, make_chats(painter, 40, seed=2024 + len(painter), canonical=True))
    first, later, boxes = THRESHOLDS[painter]
    assert t.rate("first", "exact") >= first, t.summary()
    assert t.rate("later", "exact") >= later, t.summary()
    assert t.rate("all", "boxes") >= boxes, t.summary()
