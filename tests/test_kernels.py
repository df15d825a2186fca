"""Matrix products of every weight type on every instruction set this machine supports.

- Every SIMD path equals the scalar path bit for bit (integer dot products are exact, and each output
  follows the same float operation order on every path; see csrc/kernels/matmul_impl.h).
- Results do not depend on the thread count.
- Values: against a float64 reference built independently in numpy. For quantized weights the
  reference multiplies the dequantized weights by the dequantized int8 activations (Q8_0 from
  gguf-py's quantizer, Q8_K from the numpy quantizer below), so only float32 accumulation rounding
  remains: |y - ref| <= 2e-6 * sum|w||x| + 1e-6. Against unquantized weights and activations the
  relative error must stay within each format's quantization error (REL_ERROR_VS_FLOAT).
"""
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize as gg_dequantize  # noqa: E402
from gguf.quants import quantize as gg_quantize  # noqa: E402

from tinygptv_native import ModelError, _core  # noqa: E402

ISAS = [s for s in ("scalar", "avx2", "avx512") if _core.isa_supported(s)]
SIMD = [s for s in ISAS if s != "scalar"]
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"]
BLOCK = {"F32": 1, "F16": 1, "BF16": 1, "Q8_0": 32, "Q4_0": 32, "Q4_K": 256, "Q6_K": 256}
NS = [1, 2, 3, 7, 16, 33]
# Error of y against unquantized float64 weights and activations, relative to |x| @ |w|.T
# (Frobenius norms): the quantization error of each format. ggml's own dot-product limit is
# checked in test_quants.py.
REL_ERROR_VS_FLOAT = {"F32": 1e-6, "F16": 5e-4, "BF16": 4e-3, "Q8_0": 0.01, "Q4_0": 0.08, "Q4_K": 0.06, "Q6_K": 0.02}


@pytest.fixture(autouse=True)
def restore_isa():
    yield
    _core.set_isa(_core.isa_best())


def n_ins(ty):
    b = BLOCK[ty]
    return [256, 768] if b == 256 else [32, 96, 512]


def run(ty, isa, wq, n_out, n_in, x, bias, threads=2):
    _core.set_isa(isa)
    return _core.matmul_test(ty, wq, n_out, n_in, x, bias, threads)


def q8k_numpy(x):
    """Independent Q8_K activation quantizer: per 256 values, scale = max/-127 where max is the
    value of largest magnitude; q = round-half-even(x * -127/max), capped at 127."""
    x = x.astype(np.float32).reshape(-1, 256)
    idx = np.argmax(np.abs(x), axis=1)
    mx = x[np.arange(x.shape[0]), idx]
    out = np.zeros_like(x)
    nz = mx != 0
    iscale = (np.float32(-127.0) / mx[nz]).astype(np.float32)
    q = np.minimum(np.rint((iscale[:, None] * x[nz]).astype(np.float32)), 127)
    out[nz] = q * (np.float32(1.0) / iscale)[:, None]
    return out


def dequant_acts(ty, x):
    if ty in ("Q8_0", "Q4_0"):
        return gg_dequantize(gg_quantize(x, T.Q8_0), T.Q8_0).reshape(x.shape)
    if ty in ("Q4_K", "Q6_K"):
        return q8k_numpy(x).reshape(x.shape)
    return x


def make(ty, n_out, n_in, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n_out, n_in)) * 0.5).astype(np.float32)
    wq = _core.quantize(ty, w)
    wd = _core.dequantize(ty, wq, (n_out, n_in)).astype(np.float64)
    return w, wq, wd


@pytest.mark.parametrize("ty", TYPES)
def test_values_against_numpy(ty):
    rng = np.random.default_rng(5)
    for n_in in n_ins(ty):
        for n_out in (1, 17, 45):
            w, wq, wd = make(ty, n_out, n_in, n_in + n_out)
            for n in NS:
                x = rng.standard_normal((n, n_in)).astype(np.float32)
                bias = rng.standard_normal(n_out).astype(np.float32) if n % 2 else None
                xd = dequant_acts(ty, x).astype(np.float64)
                ref = xd @ wd.T + (bias if bias is not None else 0)
                tol = 2e-6 * (np.abs(xd) @ np.abs(wd).T) + 1e-6
                ref_f = x.astype(np.float64) @ w.astype(np.float64).T + (bias if bias is not None else 0)
                mag = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
                for isa in ISAS:
                    y = run(ty, isa, wq, n_out, n_in, x, bias)
                    assert y.shape == (n, n_out) and y.dtype == np.float32
                    err = np.abs(y - ref)
                    assert np.all(err <= tol), f"{ty}/{isa} n={n} {n_out}x{n_in}: max err {err.max()}"
                    rel = np.linalg.norm(y - ref_f) / np.linalg.norm(mag)
                    assert rel < REL_ERROR_VS_FLOAT[ty], f"{ty}/{isa} n={n} {n_out}x{n_in}: relative error {rel}"


@pytest.mark.skipif(not SIMD, reason="no SIMD path on this machine")
@pytest.mark.parametrize("ty", TYPES)
def test_simd_bit_identical_to_scalar(ty):
    rng = np.random.default_rng(9)
    for n_in in n_ins(ty):
        for n_out in (3, 16, 45, 70):
            _, wq, _ = make(ty, n_out, n_in, 100 + n_out)
            for n in NS:
                x = (rng.standard_normal((n, n_in)) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
                bias = rng.standard_normal(n_out).astype(np.float32)
                ys = run(ty, "scalar", wq, n_out, n_in, x, bias)
                for isa in SIMD:
                    y = run(ty, isa, wq, n_out, n_in, x, bias)
                    diff = np.flatnonzero(y.view(np.uint32) != ys.view(np.uint32))
                    assert diff.size == 0, f"{ty}/{isa} n={n} {n_out}x{n_in}: {diff.size} outputs differ from scalar"


@pytest.mark.parametrize("ty", TYPES)
def test_thread_count_invariance(ty):
    rng = np.random.default_rng(2)
    n_in = 512 if BLOCK[ty] <= 32 else 768
    n_out = 83
    _, wq, _ = make(ty, n_out, n_in, 3)
    for n in (1, 5, 33):
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        for isa in ISAS:
            ys = [run(ty, isa, wq, n_out, n_in, x, None, threads=t) for t in (1, 2, 3)]
            assert np.array_equal(ys[0], ys[1]) and np.array_equal(ys[0], ys[2]), f"{ty}/{isa} n={n}"


@pytest.mark.parametrize("ty", ["Q8_0", "Q4_0", "Q4_K", "Q6_K"])
def test_extreme_weights_and_activations(ty):
    # Q8_0 weights of -128 (legal in files, never produced by the quantizer), zero rows, huge and
    # tiny activations, all-zero activation blocks.
    n_in = 512
    n_out = 19
    rng = np.random.default_rng(4)
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    w[3] = 0
    wq = _core.quantize(ty, w)
    if ty == "Q8_0":
        blocks = wq.reshape(n_out, -1, 34)
        blocks[5, :, 2:] = 0x80  # int8 -128
    x = rng.standard_normal((4, n_in)).astype(np.float32)
    # Q8_0 activation scales are fp16 (as in ggml), so block maxima stay below 65504 * 127.
    x[1] *= 1e25 if ty in ("Q4_K", "Q6_K") else 1e5
    x[2] *= 1e-25
    x[3, :256] = 0
    ys = run(ty, "scalar", wq, n_out, n_in, x, None)
    assert np.all(np.isfinite(ys))
    assert np.all(ys[:, 3] == 0)
    for isa in SIMD:
        assert np.array_equal(run(ty, isa, wq, n_out, n_in, x, None).view(np.uint32), ys.view(np.uint32))


def test_bad_arguments():
    wq = _core.quantize("Q8_0", np.zeros((4, 64), np.float32))
    with pytest.raises(ModelError, match="needs"):
        _core.matmul_test("Q8_0", wq[:, :-1], 4, 64, np.zeros((1, 64), np.float32))
    with pytest.raises(ModelError, match=r"shape \[n, 64\]"):
        _core.matmul_test("Q8_0", wq, 4, 64, np.zeros((1, 32), np.float32))
    with pytest.raises(ModelError, match="bias"):
        _core.matmul_test("Q8_0", wq, 4, 64, np.zeros((1, 64), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ModelError, match="not supported"):
        _core.matmul_test("Q5_K", np.zeros(176, np.uint8), 1, 256, np.zeros((1, 256), np.float32))
    with pytest.raises(ModelError, match="multiple of 32"):
        _core.matmul_test("Q4_0", np.zeros(18, np.uint8), 1, 48, np.zeros((1, 48), np.float32))
    with pytest.raises(ModelError, match="unknown instruction set"):
        _core.set_isa("sse9")


def test_isa_reporting():
    assert _core.isa() in ISAS
    assert _core.isa_best() == ISAS[-1]
    for isa in ISAS:
        _core.set_isa(isa)
        assert _core.isa() == isa
    for isa in ("avx2", "avx512"):
        if not _core.isa_supported(isa):
            with pytest.raises(ModelError, match="not supported"):
                _core.set_isa(isa)
