"""The Python face of the engine context: one Model answering many threads at once (decoded together,
each with the answers it gets alone), the messages entry point that reuses what a sequence's cache holds,
and no growth over many mixed requests."""
from __future__ import annotations

import base64
import gc
import os
import threading
import time

import numpy as np
import pytest
from fixtures.tiny_model import tiny_gguf  # noqa: F401

import tinygptv_native as tg


@pytest.fixture(scope="module")
def model(tiny_gguf):  # noqa: F811
    return tg.Model(tiny_gguf[0], n_threads=2, n_ctx=512, n_parallel=4)


@pytest.fixture(scope="module")
def image(tiny_gguf):  # noqa: F811
    return tiny_gguf[1]


def _data_url(path):
    return "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()


def test_messages_reuse_the_cache_and_match_a_fresh_model():
    """The embedded demo model (trained: its answers are ordinary text, tokenized again as generated)."""
    from tinygptv_native.demo import demo_image_path, demo_model_path
    demo = tg.Model(demo_model_path(), n_threads=2)
    image = demo_image_path()
    kw = dict(temperature=0, max_new_tokens=16)
    c = demo.new_chat()
    a1 = c.ask("How many shapes are there?", image=image, **kw)
    a2 = c.ask("Is there a red circle?", **kw)
    r3 = c.ask("What colour is the square?", return_result=True, **kw)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "How many shapes are there?"},
                                         {"type": "image_url", "image_url": {"url": _data_url(image)}}]},
            {"role": "assistant", "content": a1},
            {"role": "user", "content": "Is there a red circle?"},
            {"role": "assistant", "content": a2},
            {"role": "user", "content": "What colour is the square?"}]
    r = demo.chat_completion(msgs, **kw)
    assert r.token_ids == r3.token_ids and r.text == r3.text
    # everything but the last two positions came from the cache: the image was not encoded again
    n = sum(1 if isinstance(t, int) else len(t) for t in c.tokens(c.prompt_positions))
    assert r.cached_tokens == n - 2 and r.prompt_tokens == 2
    # a model that never saw the conversation evaluates it all and answers the same
    other = tg.Model(demo_model_path(), n_threads=1)
    f = other.chat_completion(msgs, **kw)
    assert f.cached_tokens == 0 and f.token_ids == r.token_ids
    s = other.chat_completion(msgs, stream=True, **kw)
    assert "".join(s) == r.text and s.result.token_ids == r.token_ids


def test_chat_from_messages_generates_nothing(model, image):
    msgs = [{"role": "system", "content": "You look at pictures."},
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "hello"}]
    c = tg.Chat.from_messages(model, msgs)
    assert [(h.role, h.text, h.image) for h in c.history] == [("user", "Hi", True), ("assistant", "hello", False)]
    assert c.last is None and c.template.system == "You look at pictures."
    toks = c.tokens()
    assert sum(isinstance(t, np.ndarray) for t in toks) == 1
    text = model.detokenize([t for t in toks if not isinstance(t, np.ndarray)])
    assert text.startswith("You look at pictures.") and "hello###" in text


@pytest.mark.parametrize("msgs, err", [
    ([], "last message must be the user's"),
    ([{"role": "assistant", "content": "x"}], "last message must be the user's"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "user", "content": "b"}],
     "message 1: a system message may only come first"),
    ([{"role": "robot", "content": "a"}, {"role": "user", "content": "b"}], "unknown role 'robot'"),
    ([{"role": "user", "content": [{"type": "audio"}]}], "unknown part type 'audio'"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}],
     "cannot fetch"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}],
     "not valid base64"),
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], "must follow a user message"),
    ([{"role": "user", "content": 5}], "content must be a string or a list"),
])
def test_bad_messages(model, msgs, err):
    with pytest.raises(ValueError, match=err):
        model.chat_completion(msgs, max_new_tokens=2)


def test_two_images_in_one_message_are_refused(model, image):
    part = {"type": "image", "image": image}
    with pytest.raises(ValueError, match="2 images in one user message"):
        model.chat_completion([{"role": "user", "content": [part, part]}, {"role": "user", "content": "q"}])


def test_eight_threads_get_their_serial_answers(model, image):
    """8 threads on one Model (4 sequences: the rest wait for a free one) get the answers each gets alone."""
    def work(i):
        if i % 2:
            return model.generate([3 + i, 7, 11, 13], max_new_tokens=12, temperature=1.0, seed=i)
        c = model.new_chat()
        a = c.ask(f"question {i}", image=image if i % 4 == 0 else None, seed=i, temperature=1.0, max_new_tokens=10)
        return a, c.ask("more?", seed=50 + i, temperature=1.0, max_new_tokens=10)

    serial = [work(i) for i in range(8)]
    out, errors = [None] * 8, []
    active = []
    stop = threading.Event()

    def watch():  # how many sequences the engine decodes together
        while not stop.is_set():
            active.append(model.engine.gen.n_active)

    def run(i):
        try:
            out[i] = work(i)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    w = threading.Thread(target=watch)
    w.start()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    stop.set()
    w.join()
    assert not errors and out == serial
    assert max(active) >= 2, "the threads were never decoded together"


def test_a_sequence_freed_by_a_step_goes_to_the_next_request_only_after_its_events(model):
    """A request that ends in a step frees its sequence before the step's events are delivered; a
    request submitted in between may take that sequence. Each must still get its own answer and its
    end (many short requests from 8 threads on 4 sequences make that hand-over frequent)."""
    prompts = {i: [3 + i % 50, 7, 11 + i % 13] for i in range(400)}
    serial = {i: model.generate(p, max_new_tokens=1 + i % 3, temperature=0) for i, p in prompts.items()}
    out, errors = {}, []

    def run(k):
        try:
            for i in range(k, 400, 8):
                out[i] = model.generate(prompts[i], max_new_tokens=1 + i % 3, temperature=0)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    ts = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(8)]
    for t in ts:
        t.start()
    deadline = time.time() + 60
    for t in ts:
        t.join(max(0.0, deadline - time.time()))
    assert not any(t.is_alive() for t in ts), "a request never got its end"
    assert not errors and out == serial
    assert model.engine.gen.n_active == 0


def test_interrupted_stream_frees_its_sequence(model):
    streams = [model.generate([5, 6, 7], max_new_tokens=50, temperature=0, stream=True) for _ in range(6)]
    for s in streams:  # more streams than sequences: the later ones wait, then run
        next(s)
        s.close()
    assert model.generate([5, 6, 7], max_new_tokens=3, temperature=0) == \
        model.generate([5, 6, 7], max_new_tokens=3, temperature=0)
    assert model.engine.gen.n_active == 0


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_no_growth_over_500_mixed_requests(model, image):
    """Chats, one-shot questions with and without an image, text generation, streams closed early and
    messages: after a warm-up, 500 more requests leave the process's memory where it was."""
    rng = np.random.default_rng(0)

    def one(k):
        kind = k % 5
        if kind == 0:
            c = model.new_chat()
            c.ask("hi", image=image, max_new_tokens=4, seed=k)
            c.ask("and?", max_new_tokens=3, seed=k)
        elif kind == 1:
            model.chat("what?", image=image if k % 2 else None, max_new_tokens=4, seed=k)
        elif kind == 2:
            model.generate(list(map(int, rng.integers(0, 200, 5))), max_new_tokens=5, seed=k)
        elif kind == 3:
            s = model.generate([1, 2, 3], max_new_tokens=30, stream=True, seed=k)
            next(s, None)
            s.close()
        else:
            model.chat_completion([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yo"},
                                   {"role": "user", "content": f"n{k}"}], max_new_tokens=3, seed=k)

    for k in range(100):
        one(k)
    gc.collect()
    before = _rss_mb()
    for k in range(500):
        one(k)
    gc.collect()
    grown = _rss_mb() - before
    # (not under AddressSanitizer, whose quarantine keeps freed memory on purpose; leaks are its own report there)
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        assert grown < 8, f"RSS grew by {grown:.1f} MB over 500 requests"
    assert model.engine.gen.n_active == 0


def test_logprobs_are_the_models_log_softmax(model):
    """n_probs: each answer token's log-probability and the most probable ids, from the logits (before
    penalties and sampling settings), against numpy's log-softmax of a fresh forward."""
    ids = [5, 9, 14, 3]
    r = model.generate(ids, max_new_tokens=4, temperature=0, n_probs=5, return_result=True)
    assert len(r.logprobs) == len(r.token_ids) == 4
    lg = model.logits(ids + r.token_ids[:-1]).astype(np.float64)
    for k, (tok, lp, top) in enumerate(r.logprobs):
        row = lg[len(ids) - 1 + k]
        ref = row - row.max() - np.log(np.exp(row - row.max()).sum())
        assert tok == r.token_ids[k] and abs(lp - ref[tok]) < 1e-4
        order = np.argsort(-ref, kind="stable")[:5]
        assert [i for i, _ in top] == list(order)
        np.testing.assert_allclose([p for _, p in top], ref[order], atol=1e-4)
    with pytest.raises(tg.ModelError, match="n_probs 21 must be in"):
        model.generate(ids, max_new_tokens=1, n_probs=21)


def test_score_ranks_by_the_models_likelihood(model, image):
    """score(): the sum of log-softmax over each continuation's tokens, against Model.logits."""
    prompt = [5, 9, 14, 3]
    cands = [[7], [7, 8, 9], [100, 3]]
    got = model.score(prompt, cands)
    for c, g in zip(cands, got):
        lg = model.logits(prompt + c).astype(np.float64)
        lp = lg - lg.max(axis=1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(axis=1, keepdims=True))
        want = sum(lp[len(prompt) - 1 + j, t] for j, t in enumerate(c))
        assert abs(g - want) < 1e-3 * max(1.0, abs(want))
    # as a chat answer about an image: the best candidate is the greedy answer's first token
    r = model.chat("What is it?", image=image, temperature=0, max_new_tokens=1, return_result=True, ignore_eos=True)
    scores = model.score("What is it?", [[r.token_ids[0]], [(r.token_ids[0] + 1) % 200]], image=image, chat=True)
    assert scores[0] > scores[1]
    with pytest.raises(ValueError, match="at least one token"):
        model.score(prompt, [[]])
