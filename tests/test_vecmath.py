"""The engine's float32 exp, erf, exact GELU and softmax (csrc/kernels/vecmath.h) on every
instruction set this machine supports.

- Every SIMD path equals the scalar path bit for bit (same operations in the same order).
- exp: within 2 ulp of float64 numpy for normal results, within 1 unit of 2^-149 in the subnormal
  range; 0 below -104, inf above 88.73, NaN stays NaN.
- erf: within 2e-7 absolute (and 3 ulp) of float64 math.erf; +-1 at +-inf, NaN stays NaN.
- gelu_erf: within 2e-7 * (1 + |x|) of the float64 formula; gelu_tanh within 4e-7 * (1 + |x|);
  softmax: within 1e-6 relative.
- to_f16 (the half-precision K/V cache's conversion): the same bits as numpy's float16 cast (round to
  nearest even, overflow to inf, subnormals) for every non-NaN input; NaN stays NaN with its sign.
  from_f16: every one of the 65536 halves gives numpy's float32 value, except that a signalling NaN
  comes back quiet (as F16C converts it), on every path.
"""
import math

import numpy as np
import pytest

from tinygptv_native import ModelError
from tinygptv_native._core import _testing

ISAS = [s for s in ("scalar", "avx2", "avx512", "neon") if _testing.isa_supported(s)]
F32 = np.finfo(np.float32)


@pytest.fixture(autouse=True)
def restore_isa():
    yield
    _testing.set_isa(_testing.isa_best())


def on_every_isa(fn, x):
    """fn on every path; asserts they agree bit for bit and returns the result."""
    ys = []
    for isa in ISAS:
        _testing.set_isa(isa)
        ys.append(_testing.vec_math(fn, x))
    for isa, y in zip(ISAS[1:], ys[1:]):
        diff = np.flatnonzero(y.view(np.uint32) != ys[0].view(np.uint32))
        assert diff.size == 0, f"{fn}/{isa} differs from scalar at x = {x.ravel()[diff[:5]]}"
    return ys[0]


def ulp_error(y, ref):
    return np.abs(y.astype(np.float64) - ref) / np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)


def test_exp_accuracy():
    rng = np.random.default_rng(0)
    # the whole range densely (odd lengths leave a scalar tail on every path), plus random points
    x = np.concatenate([np.linspace(-110, 95, 1_000_003, dtype=np.float32),
                        np.linspace(-1, 1, 100_001, dtype=np.float32),
                        (rng.standard_normal(50_001) * 20).astype(np.float32)])
    y = on_every_isa("exp", x)
    ref = np.exp(x.astype(np.float64))
    normal = (ref >= F32.tiny) & (ref <= F32.max)
    assert ulp_error(y[normal], ref[normal]).max() <= 2.0
    sub = ref < F32.tiny
    assert np.abs(y[sub] - ref[sub]).max() <= 2.0 ** -149
    assert np.all(y[x < -104] == 0) and np.all(np.isinf(y[x > 88.73]))


def test_exp_special_values():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -1e30, 1e30, 88.72, -87.5, -103.9], np.float32)
    y = on_every_isa("exp", x)
    assert np.isnan(y[0]) and y[1] == np.inf and y[2] == 0 and y[3] == 1 and y[4] == 1
    assert y[5] == 0 and y[6] == np.inf
    assert ulp_error(y[7:8], np.exp(np.float64(x[7]))).max() <= 2  # largest finite results
    assert 0 < y[8] < F32.tiny and 0 < y[9] < 1e-44  # subnormal, not flushed


def test_erf_accuracy():
    rng = np.random.default_rng(1)
    x = np.concatenate([np.linspace(-6, 6, 300_007, dtype=np.float32),
                        np.linspace(0.8, 0.95, 20_001, dtype=np.float32),  # around the branch change
                        (10.0 ** rng.uniform(-30, 1, 20_001) * rng.choice([-1, 1], 20_001)).astype(np.float32)])
    y = on_every_isa("erf", x)
    ref = np.array([math.erf(float(v)) for v in x])
    assert np.abs(y - ref).max() < 2e-7
    assert ulp_error(y[ref != 0], ref[ref != 0]).max() <= 3.0
    assert np.array_equal(np.sign(y), np.sign(x))  # odd, exact sign


def test_erf_special_values():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 4.0, 1e-30], np.float32)
    y = on_every_isa("erf", x)
    assert np.isnan(y[0]) and y[1] == 1 and y[2] == -1 and y[5] == 1 and y[6] == -1 and y[7] == 1
    assert y[3] == 0 and not np.signbit(y[3]) and y[4] == 0 and np.signbit(y[4])
    assert abs(y[8] - 2 / math.sqrt(math.pi) * 1e-30) < 1e-36


def test_gelu_erf():
    x = np.concatenate([np.linspace(-12, 12, 100_003, dtype=np.float32), np.array([0.0, -0.0], np.float32)])
    y = on_every_isa("gelu_erf", x)
    xd = x.astype(np.float64)
    ref = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in xd])
    assert np.all(np.abs(y - ref) <= 2e-7 * (1 + np.abs(xd)))
    y2 = on_every_isa("gelu_erf", x[:50 * 187].reshape(50, 187))  # shape kept, same values
    assert np.array_equal(y2.ravel(), y[:50 * 187])


def test_gelu_tanh():
    """gelu_new of the decoder MLP: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = np.concatenate([np.linspace(-12, 12, 100_003, dtype=np.float32),
                        np.array([0.0, -0.0, 1e20, -1e20, F32.max, -F32.max, np.inf], np.float32)])
    with np.errstate(over="ignore", invalid="ignore"):
        y = on_every_isa("gelu_tanh", x)
        xd = x.astype(np.float64)
        ref = 0.5 * xd * (1 + np.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)))
    big = np.abs(x) > 1e19
    assert np.array_equal(y[big & (x > 0)], x[big & (x > 0)])
    assert np.all(y[big & (x < 0)] == 0)
    fin = ~big
    assert np.all(np.abs(y[fin] - ref[fin]) <= 4e-7 * (1 + np.abs(xd[fin]))), np.max(np.abs(y[fin] - ref[fin]))
    assert np.isnan(on_every_isa("gelu_tanh", np.array([np.nan], np.float32)))[0]


def test_softmax():
    rng = np.random.default_rng(2)
    for n in (1, 5, 16, 17, 257, 1025):
        x = (rng.standard_normal((7, n)) * 8).astype(np.float32)
        if n > 1:
            x[0, 0] = -np.inf  # a masked entry
        y = on_every_isa("softmax", x)
        xd = x.astype(np.float64)
        ref = np.exp(xd - xd.max(1, keepdims=True))
        ref /= ref.sum(1, keepdims=True)
        assert np.all(np.abs(y - ref) <= 1e-6 * ref + 1e-12), n
        assert y[0, 0] == 0 or n == 1


def test_bad_function_name():
    with pytest.raises(ModelError, match="tanh"):
        _testing.vec_math("tanh", np.zeros(3, np.float32))


def test_to_f16_matches_numpy():
    rng = np.random.default_rng(11)
    # every float16 value, the midpoints between neighbours (ties), one float32 ulp either side of
    # them, the overflow threshold, the subnormal range and random float32 bit patterns
    h = np.arange(0, 1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    h = h[np.isfinite(h)].astype(np.float64)
    h.sort()
    mid = ((h[1:] + h[:-1]) / 2).astype(np.float32)
    near = np.concatenate([np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf))])
    special = np.array([0.0, -0.0, np.inf, -np.inf, 65504, 65519.99, 65520, -65520, 1e-8, -3e-8, 2.9802322e-08,
                        2.9802326e-08, 5.96e-8, 6.1e-5, F32.max, F32.tiny, F32.smallest_subnormal], np.float32)
    bits = rng.integers(0, 1 << 32, size=200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([h.astype(np.float32), mid, near, special, bits[~np.isnan(bits)]]).astype(np.float32)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    for isa in ISAS:
        _testing.set_isa(isa)
        got = _testing.to_f16(x)
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, f"{isa}: x = {x[bad[:5]]} -> {got[bad[:5]]}, numpy {want[bad[:5]]}"
    nan = np.array([np.nan, -np.nan], np.float32)
    for isa in ISAS:
        _testing.set_isa(isa)
        got = _testing.to_f16(nan).view(np.float16)
        assert np.isnan(got).all() and list(np.signbit(got)) == [False, True], isa


def test_from_f16_every_half():
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    want = h.view(np.float16).astype(np.float32).view(np.uint32)
    nan = np.isnan(h.view(np.float16))
    want = np.where(nan, want | np.uint32(0x400000), want)  # quiet NaN, payload and sign kept
    for isa in ISAS:
        _testing.set_isa(isa)
        got = _testing.from_f16(h).view(np.uint32)
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, f"{isa}: halves {[hex(v) for v in h[bad[:4]]]} -> {[hex(v) for v in got[bad[:4]]]}"
