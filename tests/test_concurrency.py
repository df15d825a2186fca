"""One Model shared by many Python threads, each with its own Context: the results equal the serial
ones bit for bit, the calls really run at the same time (the GIL is released during compute), and
the logits do not depend on a Context's thread count."""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import gguf_builder as gb  # noqa: E402
from tinygptv_native import _core  # noqa: E402

N_THREADS = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    p = tmp_path_factory.mktemp("conc") / "phi2.gguf"
    gb.phi2_builder(n_embd=64, n_head=4, n_layer=2, n_ff=128, n_rot=8, seed=11).write(p)
    return _core.Model(str(p))


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """Large enough that one prefill takes a good fraction of a second."""
    p = tmp_path_factory.mktemp("conc") / "phi2_big.gguf"
    gb.phi2_builder(n_embd=256, n_head=8, n_layer=4, n_ff=1024, n_rot=16, n_ctx=512, seed=12, scale=0.05).write(p)
    return _core.Model(str(p))


def _prompts(k, n_vocab):
    rng = np.random.default_rng(k)
    return [rng.integers(0, n_vocab, int(rng.integers(3, 40))).astype(np.int32) for _ in range(3)]


def _run_chat(model, k, n_threads=1, kv_f16=True):
    """A small conversation: a prefill, then token-by-token decode, then a rewind and a second turn.
    Returns every logits array produced."""
    s = _core.Context(model, 128, 1, n_threads, kv_f16)
    out = []
    p1, p2, p3 = _prompts(k, model.n_vocab)
    out.append(s.eval_tokens(0, p1, True))
    tok = int(np.argmax(out[-1][-1]))
    for _ in range(6):
        out.append(s.eval_tokens(0, np.array([tok], np.int32)))
        tok = int(np.argmax(out[-1]))
    s.truncate(0, len(p1))
    out.append(s.eval_tokens(0, p2, True))
    out.append(s.eval_tokens(0, p3))
    return out


def test_threads_share_model_and_match_serial(model):
    serial = [_run_chat(model, k, n_threads=1 + k % 2) for k in range(N_THREADS)]
    results = [None] * N_THREADS
    errors = []
    barrier = threading.Barrier(N_THREADS)

    def work(k):
        try:
            barrier.wait()
            for _ in range(3):  # repeat so the threads interleave at many points
                r = _run_chat(model, k, n_threads=1 + k % 2)
                if results[k] is None:
                    results[k] = r
                else:
                    for a, b in zip(results[k], r):
                        np.testing.assert_array_equal(a, b)
        except BaseException as e:  # noqa: BLE001
            errors.append((k, e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(N_THREADS):
        assert len(results[k]) == len(serial[k])
        for i, (a, b) in enumerate(zip(results[k], serial[k])):
            assert np.array_equal(a, b), f"thread {k}, call {i}: concurrent logits differ from the serial run"


def test_gil_released_during_compute(big_model):
    """A pure-Python ticker keeps running while another thread is inside eval_tokens."""
    s = _core.Context(big_model, 512, 1, 1, False)
    ids = np.arange(256, dtype=np.int32) % big_model.n_vocab
    t0 = time.perf_counter()
    s.eval_tokens(0, ids)
    single = time.perf_counter() - t0
    s.truncate(0, 0)

    ticks = [0]
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.0005)

    th = threading.Thread(target=ticker)
    th.start()
    try:
        time.sleep(0.05)
        results = {}

        def call():  # long enough to tell on a fast machine: several prefills back to back
            before = ticks[0]
            a = time.perf_counter()
            results["calls"] = 0
            while time.perf_counter() - a < 0.25:
                s.truncate(0, 0)
                s.eval_tokens(0, ids)
                results["calls"] += 1
            results["dt"] = time.perf_counter() - a
            results["ticks"] = ticks[0] - before

        c = threading.Thread(target=call)
        c.start()
        c.join()
    finally:
        stop.set()
        th.join()
    # With the GIL held during each call the ticker could run only between calls (a tick or two per
    # call); released, it ticks throughout (about one tick per 0.5-1 ms).
    assert results["dt"] > 0.05, f"the workload is too small to tell ({results['dt']:.3f} s, single {single:.3f} s)"
    expected = results["dt"] / 0.002
    assert results["ticks"] > max(10, 3 * results["calls"], 0.1 * expected), \
        f"only {results['ticks']} ticks during a {results['dt']:.3f} s call: the GIL seems to be held"


def test_getters_wait_for_a_decode_without_the_gil(big_model):
    """A thread asking a busy context for its state waits for the lock without holding the GIL: the
    other Python threads (a server's event loop) keep running while a decode holds the context."""
    s = _core.Context(big_model, 512, 2, 1, False)
    ids = np.arange(256, dtype=np.int32) % big_model.n_vocab
    ticks = [0]
    stop = threading.Event()
    results = {"asks": 0}

    def ticker():
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.0005)

    def decoder():
        while not stop.is_set():
            s.truncate(0, 0)
            s.eval_tokens(0, ids)

    def asker():  # each call waits for the decode in progress to end
        while not stop.is_set():
            s.n_past(0), s.tokens(1), s.kv_reserved_bytes, s.image_cache_info()
            results["asks"] += 1

    threads = [threading.Thread(target=f) for f in (decoder, asker)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    th = threading.Thread(target=ticker)
    th.start()
    a = time.perf_counter()
    time.sleep(0.4)
    stop.set()
    dt = time.perf_counter() - a
    for t in threads + [th]:
        t.join()
    # Held while waiting, the GIL reaches the ticker only between one decode and the next wait: about 30
    # ticks in 0.4 s where a free GIL gives about 600.
    assert results["asks"] >= 1
    assert ticks[0] > 0.25 * dt / 0.002, f"only {ticks[0]} ticks in {dt:.3f} s: a getter held the GIL while waiting"


def test_contexts_overlap_in_time(big_model):
    """Two threads' eval calls are in flight at the same moment (each records when it is inside). One
    call each, so that a held GIL would leave the probe no chance to see both inside: the call is made
    long (500 positions, ~25 ms here) and the probe samples every 0.2 ms."""
    ids = np.arange(500, dtype=np.int32) % big_model.n_vocab
    contexts = [_core.Context(big_model, 512, 1, 1, False) for _ in range(2)]
    inside = [0]
    both = [0]  # probe samples that saw both calls in flight
    lock = threading.Lock()
    barrier = threading.Barrier(2)
    stop = threading.Event()

    def probe():  # samples how many calls are in flight
        while not stop.is_set():
            with lock:
                both[0] += inside[0] == 2
            time.sleep(0.0002)

    def work(s):
        barrier.wait()
        with lock:
            inside[0] += 1
        s.eval_tokens(0, ids)
        with lock:
            inside[0] -= 1

    pr = threading.Thread(target=probe)
    pr.start()
    ts = [threading.Thread(target=work, args=(s,)) for s in contexts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    stop.set()
    pr.join()
    # Held GIL: both counters could be seen only in a switch interval before a call starts.
    assert both[0] >= 10, f"the two evaluations were seen in flight together only {both[0]} times"


@pytest.mark.parametrize("kv_f16", [False, True])
def test_thread_count_invariance(model, big_model, kv_f16):
    for m in (model, big_model):
        ref = None
        for n_threads in (1, 2, 3):
            got = _run_chat(m, 5, n_threads=n_threads, kv_f16=kv_f16)
            if ref is None:
                ref = got
                continue
            for i, (a, b) in enumerate(zip(ref, got)):
                assert np.array_equal(a, b), f"{n_threads} threads: call {i} differs from 1 thread"


def test_context_from_many_threads_is_serialised(model):
    """One Context hit by several threads at once never corrupts its state: each call is atomic, so
    the final KV length is the sum of all tokens and a replay gives the same last logits."""
    s = _core.Context(model, 256, 1, 2, False)
    chunks = [np.full(5, k, np.int32) for k in range(8)]
    ths = [threading.Thread(target=s.eval_tokens, args=(0, c)) for c in chunks]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert s.n_past(0) == 40
