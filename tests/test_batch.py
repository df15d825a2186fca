"""The engine context with several sequences: a sequence decoded inside any batch gives, bit for bit,
the logits and tokens it gives alone, whatever the thread count; sequence operations agree with a fresh
forward; the image-embedding cache returns the same embeddings and stays within its bound.

The reference for a sequence is the same model run on that sequence alone, one call per prompt and one
per generated token (a Context of one sequence, one thread)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import gguf_builder as gb  # noqa: E402
from tinygptv_native import _core  # noqa: E402

N_CTX = 96


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    p = tmp_path_factory.mktemp("batch") / "phi2.gguf"
    gb.phi2_builder(n_embd=64, n_head=4, n_layer=3, n_ff=128, n_rot=8, n_ctx=N_CTX, seed=21).write(p)
    return _core.Model(str(p), 1)


def _prompt(k, n_vocab, n):
    return np.random.default_rng(100 + k).integers(0, n_vocab, n).astype(np.int32)


def _alone(model, prompt, n_dec, kv_f16):
    """Logits of every prompt row and of each greedy step, the sequence alone."""
    ctx = _core.Context(model, N_CTX, 1, 1, kv_f16)
    rows = [ctx.eval_tokens(0, prompt, True)]
    tok = int(np.argmax(rows[-1][-1]))
    for _ in range(n_dec):
        rows.append(ctx.eval_tokens(0, np.array([tok], np.int32), True))
        tok = int(np.argmax(rows[-1][-1]))
    return np.concatenate(rows)


def _chunks(rng, n):
    """n prompt rows cut into random pieces of at least two rows (one row takes the row path)."""
    out = []
    while n:
        k = n if n <= 3 else int(rng.integers(2, n - 1)) if n > 4 else 2
        out.append(k)
        n -= k
    return out


def _batched(model, specs, n_threads, kv_f16, seed):
    """Runs several sequences through one Context: they start at different steps, their prompts go in
    random pieces beside other sequences' decode steps, and the order of sequences in each batch is
    shuffled. specs: (prompt, n_dec, start_step). Returns each sequence's logits rows."""
    rng = np.random.default_rng(seed)
    ctx = _core.Context(model, N_CTX, len(specs), n_threads, kv_f16)
    state = [dict(chunks=_chunks(rng, len(p)), done=0, left=d, tok=None, rows=[]) for p, d, _ in specs]
    step = 0
    while any(s["chunks"] or (s["tok"] is not None and s["left"] > 0) for s in state):
        b = _core.Batch()
        order = [i for i in rng.permutation(len(specs)) if specs[i][2] <= step]
        plan = []
        for i in order:
            s, prompt = state[i], specs[i][0]
            if s["chunks"]:
                k = s["chunks"].pop(0)
                for j in range(k):
                    b.add_token(int(prompt[s["done"] + j]), int(i), s["done"] + j, True)
                plan.append((i, k))
                s["done"] += k
            elif s["tok"] is not None and s["left"] > 0:
                b.add_token(s["tok"], int(i), ctx.n_past(int(i)), True)
                plan.append((i, 1))
                s["left"] -= 1
        step += 1
        if not plan:
            continue
        logits = ctx.decode(b)
        r = 0
        for i, k in plan:
            state[i]["rows"].append(logits[r:r + k])
            state[i]["tok"] = int(np.argmax(logits[r + k - 1]))
            r += k
        assert r == len(logits)
    return [np.concatenate(s["rows"]) for s in state]


@pytest.mark.parametrize("kv_f16", [True, False])
@pytest.mark.parametrize("n_seq", [1, 2, 4, 8])
def test_batched_equals_alone(model, n_seq, kv_f16):
    specs = []
    for k in range(n_seq):
        # different prompt lengths; one sequence finishes early, others start late
        specs.append((_prompt(k, model.n_vocab, 5 + 7 * k % 23), 3 if k == 1 else 9, (k * 3) % 5))
    want = [_alone(model, p, d, kv_f16) for p, d, _ in specs]
    for n_threads in (1, 2, 3):
        got = _batched(model, specs, n_threads, kv_f16, seed=n_seq * 10 + n_threads)
        for k in range(n_seq):
            assert got[k].shape == want[k].shape
            assert np.array_equal(got[k].view(np.uint32), want[k].view(np.uint32)), \
                f"sequence {k} of {n_seq} differs with {n_threads} threads"


def test_generator_tokens_do_not_depend_on_company(model):
    """The token loop in the core: sampled answers (seeded) are the same alone and among 7 others."""
    tok = _core.tokenizer_from_model(model)
    kw = dict(temperature=1.0, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.1, penalty_last_n=64,
              stop_ids=[], stop_strings=[], use_eos=False)

    def run(ks, n_threads):
        ctx = _core.Context(model, N_CTX, 8, n_threads)
        gen = _core.Generator(ctx, tok, 16)  # small n_batch: prompts go in several steps
        seqs, out = {}, {k: [] for k in ks}
        pending = list(ks)
        while pending or gen.n_active:
            if pending:  # one new request per step: they start at different times
                k = pending.pop(0)
                s, cached, _ = gen.submit([list(map(int, _prompt(k, model.n_vocab, 6 + 5 * k)))], 10 + k, seed=k, **kw)
                seqs[s] = k
            for s, t, text, finished, reason, *_ in gen.step():
                if t >= 0:
                    out[seqs[s]].append(t)
        return out

    alone = {k: run([k], 1)[k] for k in range(8)}
    for n_threads in (1, 3):
        together = run(list(range(8)), n_threads)
        assert together == alone
    assert all(len(v) == 10 + k for k, v in alone.items())


def test_truncate_and_copy_agree_with_a_fresh_forward(model):
    p = _prompt(1, model.n_vocab, 30)
    fresh = _core.Context(model, N_CTX, 1, 1).eval_tokens(0, p, True)
    ctx = _core.Context(model, N_CTX, 3, 2)
    ctx.eval_tokens(0, _prompt(2, model.n_vocab, 20), True)
    # truncate: the first 12 positions kept, a different continuation, then the right one
    ctx.truncate(0, 0)
    ctx.eval_tokens(0, p[:12], True)
    ctx.eval_tokens(0, _prompt(3, model.n_vocab, 9), True)
    ctx.truncate(0, 12)
    assert ctx.n_past(0) == 12 and ctx.tokens(0) == list(map(int, p[:12]))
    got = ctx.eval_tokens(0, p[12:], True)
    assert np.array_equal(got, fresh[12:])
    # copy: sequence 2 takes the first 20 positions of sequence 0 and continues on its own
    ctx.copy(0, 2, 20)
    assert ctx.tokens(2) == list(map(int, p[:20])) and ctx.n_past(0) == 30
    assert np.array_equal(ctx.eval_tokens(2, p[20:], True), fresh[20:])
    assert ctx.longest_prefix(list(map(int, p[:25])) + [0]) == (0, 25)
    with pytest.raises(_core.ModelError, match="cannot cut sequence 0 at position 31"):
        ctx.truncate(0, 31)
    with pytest.raises(_core.ModelError, match="cannot copy 40 positions of sequence 0"):
        ctx.copy(0, 1, 40)
    with pytest.raises(_core.ModelError, match="sequence 3 is outside"):
        ctx.n_past(3)


def test_bad_batches_change_nothing(model):
    ctx = _core.Context(model, 16, 2, 1)
    ctx.eval_tokens(0, _prompt(4, model.n_vocab, 4))
    cases = [
        ([(1, 0, 5)], "position 5 for sequence 0, which holds 4"),
        ([(1, 2, 0)], "sequence 2 is outside"),
        ([(model.n_vocab, 1, 0)], f"token id {model.n_vocab} is outside the vocabulary"),
        ([(1, 0, 4), (1, 1, 0), (1, 0, 5)], "rows of sequence 0 are not contiguous"),
    ]
    for rows, msg in cases:
        b = _core.Batch()
        for t, s, pos in rows:
            b.add_token(t, s, pos, True)
        with pytest.raises(_core.ModelError, match=msg):
            ctx.decode(b)
        assert ctx.n_past(0) == 4 and ctx.n_past(1) == 0
    b = _core.Batch()
    for i in range(13):
        b.add_token(1, 0, 4 + i)
    with pytest.raises(_core.ContextOverflowError, match="sequence 0 holds 4 positions; 13 more exceed n_ctx = 16"):
        ctx.decode(b)
    with pytest.raises(_core.ModelError, match="at least one row"):
        ctx.decode(_core.Batch())
    assert ctx.n_past(0) == 4


def test_image_rows_in_a_batch_and_the_image_cache(tmp_path):
    from fixtures.tiny_model import build_tiny_tinygptv
    m = _core.Model(build_tiny_tinygptv(str(tmp_path)), 1)
    S = m.image_size
    rng = np.random.default_rng(5)
    pics = [rng.standard_normal((3, S, S)).astype(np.float32) for _ in range(3)]
    ctx = _core.Context(m, 64, 2, 2, image_cache_mb=1.0)
    a = ctx.encode_image(pics[0])
    again = ctx.encode_image(pics[0].copy())
    assert again.hash == a.hash and np.array_equal(again.numpy(), a.numpy())
    info = ctx.image_cache_info()
    assert info["hits"] == 1 and info["misses"] == 1 and info["entries"] == 1
    # the same embeddings as a context that never saw the picture
    assert np.array_equal(_core.Context(m, 8, 1, 1).encode_image(pics[0]).numpy(), a.numpy())
    # image rows spliced between text rows, beside another sequence: as the splice fed alone
    ids = [3, 5, 7]
    alone = _core.Context(m, 64, 1, 1)
    want = alone.eval_embeddings(0, np.concatenate([m.embed_tokens(np.array(ids[:1], np.int32)), a.numpy(),
                                                    m.embed_tokens(np.array(ids[1:], np.int32))]), True)
    b = _core.Batch()
    b.add_token(9, 1, 0, True)
    b.add_token(10, 1, 1, True)
    b.add_token(ids[0], 0, 0, True)
    for r in range(a.n_rows):
        b.add_image_row(a, r, 0, 1 + r, True)
    for j, t in enumerate(ids[1:]):
        b.add_token(t, 0, 1 + a.n_rows + j, True)
    got = ctx.decode(b)[2:]
    assert np.array_equal(got, want)
    assert ctx.tokens(0) == [ids[0]] + [-1] * a.n_rows + ids[1:]
    # bounded in bytes: least recently used out first
    per = a.n_rows * a.n_embd * 4
    ctx.set_image_cache_mb(2.5 * per / (1 << 20))
    for p in pics:
        ctx.encode_image(p)
    info = ctx.image_cache_info()
    assert info["entries"] == 2 and info["bytes"] == 2 * per <= info["max_bytes"]
    before = ctx.image_cache_info()["misses"]
    ctx.encode_image(pics[2])  # most recent: still there
    assert ctx.image_cache_info()["misses"] == before
    ctx.encode_image(pics[0])  # evicted: encoded again
    assert ctx.image_cache_info()["misses"] == before + 1
    with pytest.raises(_core.ModelError, match="image row 99 is outside"):
        _core.Batch().add_image_row(a, 99, 0, 0)


def test_decode_from_several_threads_returns_each_its_own_logits(model):
    """Calls on one Context are serialised, and each returns the logits of its own batch (the context's
    logits buffer is copied before the next call may reuse it)."""
    import threading
    ctx = _core.Context(model, N_CTX, 4, 1)
    prompts = [_prompt(30 + k, model.n_vocab, 8) for k in range(4)]
    got, errors = [None] * 4, []

    def work(k):
        try:
            rows = []
            for i, t in enumerate(prompts[k]):
                b = _core.Batch()
                b.add_token(int(t), k, i, True)
                rows.append(ctx.decode(b))
            got[k] = np.concatenate(rows)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    for k in range(4):  # one row at a time: the row path, so the reference goes row by row too
        alone = _core.Context(model, N_CTX, 1, 1)
        ref = np.concatenate([alone.eval_tokens(0, prompts[k][i:i + 1], True) for i in range(len(prompts[k]))])
        assert np.array_equal(got[k], ref), k
