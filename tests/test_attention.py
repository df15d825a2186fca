"""The engine's multi-head attention (csrc/kernels/attention.cpp) on every instruction set this
machine supports, through both of its paths: the blocked one (several query rows: the vision tower,
the Q-Former, a decoder prompt, causal or not, float32 or half-precision K/V) and the row one (one
query row: decode).

- Values: against softmax(q k^T * scale) v computed in float64 numpy from the same (float32 or
  float16) inputs: |out - ref| <= 4e-6 * max|v|.
- Every SIMD path equals the scalar path bit for bit, and 1, 2 and 3 threads give the same bits.
"""
import numpy as np
import pytest

from tinygptv_native import ModelError, _core

ISAS = [s for s in ("scalar", "avx2", "avx512") if _core.isa_supported(s)]


@pytest.fixture(autouse=True)
def restore_isa():
    yield
    _core.set_isa(_core.isa_best())


def reference(q, k, v, n_head, n_head_kv, scale, causal, pos0):
    T, n = q.shape[0], k.shape[0]
    hd = q.shape[1] // n_head
    q = q.astype(np.float64).reshape(T, n_head, hd)
    k = k.astype(np.float64).reshape(n, n_head_kv, hd)
    v = v.astype(np.float64).reshape(n, n_head_kv, hd)
    g = n_head // n_head_kv
    out = np.zeros((T, n_head, hd))
    for h in range(n_head):
        s = q[:, h] @ k[:, h // g].T * scale
        if causal:
            s[np.arange(n)[None, :] > pos0 + np.arange(T)[:, None]] = -np.inf
        p = np.exp(s - s.max(1, keepdims=True))
        out[:, h] = (p / p.sum(1, keepdims=True)) @ v[:, h // g]
    return out.reshape(T, n_head * hd)


CASES = [  # T, n_kv, n_head, n_head_kv, hd, causal, kv dtype
    (257, 257, 2, 2, 88, False, np.float32),   # the vision tower at 224 px (2 of its 16 heads)
    (97, 97, 1, 1, 88, False, np.float32),     # two full tiles of 48 rows and one row more
    (32, 257, 3, 3, 64, False, np.float32),    # Q-Former cross-attention
    (32, 32, 2, 2, 64, False, np.float32),     # Q-Former self-attention
    (9, 50, 4, 2, 20, False, np.float32),      # grouped K/V heads, odd head size
    (9, 50, 2, 2, 88, False, np.float16),      # non-causal with a half-precision cache
    (1, 40, 4, 4, 80, False, np.float32),      # one query row
    (6, 40, 4, 4, 80, True, np.float32),       # prefill after 34 cached positions
    (6, 40, 4, 4, 80, True, np.float16),
    (1, 77, 4, 2, 80, True, np.float16),       # decode with a half cache and grouped heads
    (17, 17, 2, 2, 33, True, np.float32),      # a whole causal prompt
    (97, 97, 2, 2, 80, True, np.float16),      # a causal prompt over three tiles of query rows
    (60, 130, 2, 1, 80, True, np.float16),     # a second chat turn after 70 cached positions
]


@pytest.mark.parametrize("T,n_kv,n_head,n_head_kv,hd,causal,kv_type", CASES)
def test_attention(T, n_kv, n_head, n_head_kv, hd, causal, kv_type):
    rng = np.random.default_rng(T * 1000 + n_kv)
    q = rng.standard_normal((T, n_head * hd)).astype(np.float32)
    k = rng.standard_normal((n_kv, n_head_kv * hd)).astype(kv_type)
    v = (3 * rng.standard_normal((n_kv, n_head_kv * hd))).astype(kv_type)
    scale = 1 / np.sqrt(hd)
    pos0 = n_kv - T if causal else 0
    ref = reference(q, k, v, n_head, n_head_kv, scale, causal, pos0)
    first = None
    for isa in ISAS:
        _core.set_isa(isa)
        for threads in (1, 2, 3):
            out = _core.attention_test(q, k, v, n_head, n_head_kv, scale, causal, pos0, threads)
            if first is None:
                first = out
                err = np.abs(out - ref).max()
                assert err <= 4e-6 * np.abs(v.astype(np.float64)).max(), f"max error {err}"
            else:
                assert np.array_equal(out.view(np.uint32), first.view(np.uint32)), f"{isa}, {threads} threads"


def test_peaked_and_flat_scores():
    # large scores (a near one-hot softmax) and all-equal scores (a plain mean of v)
    rng = np.random.default_rng(5)
    T, n, hd = 50, 60, 16
    v = rng.standard_normal((n, hd)).astype(np.float32)
    k = rng.standard_normal((n, hd)).astype(np.float32)
    q = (40 * rng.standard_normal((T, hd))).astype(np.float32)
    out = _core.attention_test(q, k, v, 1, 1, 1.0)
    assert np.abs(out - reference(q, k, v, 1, 1, 1.0, False, 0)).max() < 1e-5
    out = _core.attention_test(np.zeros((T, hd), np.float32), k, v, 1, 1, 1.0)
    assert np.abs(out - v.astype(np.float64).mean(0)).max() < 1e-6


def test_bad_arguments():
    q = np.zeros((4, 32), np.float32)
    k = np.zeros((5, 32), np.float32)
    with pytest.raises(ModelError, match="n_kv"):
        _core.attention_test(q, k[:, :16], k[:, :16], 2, 2, 1.0)
    with pytest.raises(ModelError, match="float16"):
        _core.attention_test(q, k, k.astype(np.float16), 2, 2, 1.0)
    with pytest.raises(ModelError, match="pos0"):
        _core.attention_test(q, k, k, 2, 2, 1.0, True, 3)
    with pytest.raises(ModelError, match="n_head_kv"):
        _core.attention_test(q, k, k, 2, 3, 1.0)
