"""The engine's multi-head attention (csrc/kernels/attention.cpp) on every instruction set this
machine supports, through both of its paths: the blocked one (several query rows: the vision tower,
the Q-Former, a decoder prompt, causal or not, float32 or half-precision K/V) and the row one (one
query row: decode).

- Values: against softmax(q k^T * scale) v computed in float64 numpy from the same (float32 or
  float16) inputs: |out - ref| <= 4e-6 * max|v|.
- Every SIMD path equals the scalar path bit for bit, and 1, 2 and 3 threads give the same bits.
- The bf16 variant (a vision tower with 4-bit weights): within bf16 rounding of the float64
  reference, and bit-identical across paths (AVX512_BF16's vdpbf16ps where the CPU has it, two fmas
  per step elsewhere) and thread counts, zeros, tiny values and NaN included.
"""
import numpy as np
import pytest

from tinygptv_native import ModelError
from tinygptv_native._core import _testing

ISAS = [s for s in ("scalar", "avx2", "avx512", "neon") if _testing.isa_supported(s)]


@pytest.fixture(autouse=True)
def restore_isa():
    yield
    _testing.set_isa(_testing.isa_best())


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
        _testing.set_isa(isa)
        for threads in (1, 2, 3):
            out = _testing.attention_test(q, k, v, n_head, n_head_kv, scale, causal, pos0, threads)
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
    out = _testing.attention_test(q, k, v, 1, 1, 1.0)
    assert np.abs(out - reference(q, k, v, 1, 1, 1.0, False, 0)).max() < 1e-5
    out = _testing.attention_test(np.zeros((T, hd), np.float32), k, v, 1, 1, 1.0)
    assert np.abs(out - v.astype(np.float64).mean(0)).max() < 1e-6


def test_bad_arguments():
    q = np.zeros((4, 32), np.float32)
    k = np.zeros((5, 32), np.float32)
    with pytest.raises(ModelError, match="n_kv"):
        _testing.attention_test(q, k[:, :16], k[:, :16], 2, 2, 1.0)
    with pytest.raises(ModelError, match="float16"):
        _testing.attention_test(q, k, k.astype(np.float16), 2, 2, 1.0)
    with pytest.raises(ModelError, match="pos0"):
        _testing.attention_test(q, k, k, 2, 2, 1.0, True, 3)
    with pytest.raises(ModelError, match="n_head_kv"):
        _testing.attention_test(q, k, k, 2, 3, 1.0)


def bf16_round(x):
    """The engine's float32 -> bfloat16 rounding (fp16.h bf16_round), as float32 values."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    a = u & 0x7FFFFFFF
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    r = np.where(a < 0x26800000, 0, r)  # |x| < 2^-50 -> +0
    r = np.where(a > 0x7F800000, ((u >> 16) | 0x40) & 0xFFFF, r)
    return (r.astype(np.uint32) << 16).view(np.float32)


BF16_CASES = [  # T, n_kv, n_head, n_head_kv, hd, causal
    (257, 257, 2, 2, 88, False),  # the vision tower at 224 px
    (97, 97, 1, 1, 88, False),    # odd key count: the last key pair is padded
    (9, 50, 4, 2, 21, False),     # grouped heads, odd head size
    (17, 17, 2, 2, 33, True),     # causal
    (32, 257, 3, 3, 64, False),
    (6, 6, 2, 2, 40, False),      # fewer keys than dimensions (the packing row holds hd + 1 values)
]


@pytest.mark.parametrize("T,n_kv,n_head,n_head_kv,hd,causal", BF16_CASES)
def test_bf16_attention(T, n_kv, n_head, n_head_kv, hd, causal):
    rng = np.random.default_rng(T * 7 + n_kv)
    q = rng.standard_normal((T, n_head * hd)).astype(np.float32)
    k = rng.standard_normal((n_kv, n_head_kv * hd)).astype(np.float32)
    v = (3 * rng.standard_normal((n_kv, n_head_kv * hd))).astype(np.float32)
    scale = 1 / np.sqrt(hd)
    pos0 = n_kv - T if causal else 0
    vmax = np.abs(v).max()
    exact = reference(q, k, v, n_head, n_head_kv, scale, causal, pos0)
    rounded = reference(bf16_round(q), bf16_round(k), bf16_round(v), n_head, n_head_kv, scale, causal, pos0)
    first = None
    for isa in ISAS:
        _testing.set_isa(isa)
        for threads in (1, 2, 3):
            out = _testing.attention_test(q, k, v, n_head, n_head_kv, scale, causal, pos0, threads, bf16=True)
            if first is None:
                first = out
                # only the softmax weights' rounding separates us from the rounded-input reference
                assert np.abs(out - rounded).max() <= 2e-3 * vmax
                assert np.abs(out - exact).max() <= 5e-3 * vmax
            else:
                assert np.array_equal(out.view(np.uint32), first.view(np.uint32)), f"{isa}, {threads} threads"
    f32 = _testing.attention_test(q, k, v, n_head, n_head_kv, scale, causal, pos0)
    assert not np.array_equal(f32, first)  # it is another computation


def test_bf16_attention_special_values():
    """Zeros, values below 2^-50 (flushed to zero), float32 denormals, huge values and a NaN take the
    same path on every instruction set."""
    rng = np.random.default_rng(11)
    T, hd = 40, 24
    q = rng.standard_normal((T, hd)).astype(np.float32)
    k = rng.standard_normal((T, hd)).astype(np.float32)
    v = rng.standard_normal((T, hd)).astype(np.float32)
    q[3, :5] = 0
    q[4, :] = 1e-30
    k[5, :7] = np.float32(1e-40)  # denormal
    v[6, :] = 2.0 ** -51
    v[7, 3] = 3e38
    q[8, 2] = np.nan
    outs = []
    for isa in ISAS:
        _testing.set_isa(isa)
        outs.append(_testing.attention_test(q, k, v, 1, 1, 0.2, False, 0, 2, bf16=True))
    for o in outs[1:]:
        assert np.array_equal(o.view(np.uint32), outs[0].view(np.uint32))
    assert np.isnan(outs[0][8]).all() and np.isfinite(np.delete(outs[0], 8, axis=0)).all()
    # a query row of 1e-30 rounds to zero: equal scores, the plain mean of the (rounded) values
    np.testing.assert_allclose(outs[0][4], bf16_round(v).astype(np.float64).mean(0), rtol=1e-5, atol=1e-5)


def test_bf16_needs_float_kv():
    q = np.zeros((4, 16), np.float32)
    k = np.zeros((4, 16), np.float16)
    with pytest.raises(ModelError, match="bf16 attention takes float32"):
        _testing.attention_test(q, k, k, 1, 1, 1.0, bf16=True)
