"""Quantizers and dequantizers against gguf-py (byte-exact for Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 on random data,
bit-exact dequantization of every type), against ggml's own C reference quantizers when
llama-cpp-python is installed (byte-exact for every type, adversarial rows included except for
Q8_0/Q4_0, which follow gguf-py there), and against ggml's test-quantize-fns error limits.

ggml's metric: array_rmse(a, b) = sqrt(sum((a - b)^2)) / n (not an RMSE), on 0.1 + 2*cos(i + offset)
with n = 4096; MAX_QUANTIZATION_TOTAL_ERROR = 0.002, MAX_DOT_PRODUCT_ERROR = 0.02 (|dot_q - dot| / n).
"""
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize as gg_dequantize  # noqa: E402
from gguf.quants import quantize as gg_quantize  # noqa: E402

from tinygptv_native import ModelError, _core  # noqa: E402
from tinygptv_native._core import _testing  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # gguf-py on inf/huge inputs

MAX_QUANTIZATION_TOTAL_ERROR = 0.002
MAX_QUANTIZATION_TOTAL_ERROR_2BITS = 0.0075
MAX_QUANTIZATION_TOTAL_ERROR_3BITS = 0.004
MAX_DOT_PRODUCT_ERROR = 0.02
MAX_DOT_PRODUCT_ERROR_LOWBIT = 0.04
BLOCK = {"Q8_0": 32, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q2_K": 256, "Q3_K": 256, "Q4_K": 256,
         "Q5_K": 256, "Q6_K": 256, "IQ4_NL": 32, "IQ4_XS": 256}
# ggml's test-quantize-fns limits for the types below 4 bits
QUANT_ERROR_LIMIT = {"Q2_K": MAX_QUANTIZATION_TOTAL_ERROR_2BITS, "Q3_K": MAX_QUANTIZATION_TOTAL_ERROR_3BITS}
DOT_ERROR_LIMIT = {"Q2_K": MAX_DOT_PRODUCT_ERROR_LOWBIT, "Q3_K": MAX_DOT_PRODUCT_ERROR_LOWBIT}
QUANTS = list(BLOCK)


def ggml_data(n=4096, offset=0.0):
    return (0.1 + 2 * np.cos(np.arange(n, dtype=np.float64) + offset)).astype(np.float32)


def ggml_rmse(a, b):
    return float(np.sqrt(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2)) / a.size)


def adversarial_rows(block):
    rng = np.random.default_rng(1234)
    rows = [
        np.zeros(block),                                     # all zero
        np.full(block, 0.75),                                # constant
        np.full(block, -3.0),                                # constant negative
        np.where(np.arange(block) % 2 == 0, 3.0, -3.0),      # equal |max| of both signs
        np.where(np.arange(block) % 2 == 0, -3.0, 3.0),
        rng.standard_normal(block) * 1e20,                   # huge
        rng.standard_normal(block) * 1e-20,                  # tiny (normal floats)
        rng.standard_normal(block) * 60000.0,                # near the fp16 range
        np.concatenate([[127.0], (np.arange(block - 1) % 50 - 25) + 0.5]),   # Q8_0 halfway cases
        np.concatenate([[-8.0], (np.arange(block - 1) % 32) * 0.25 - 4.0]),  # Q4_0 halfway cases
        np.concatenate([[1.0], np.zeros(block - 1)]),         # one spike
        np.concatenate([np.zeros(block - 1), [-1e-3]]),
        np.array([(-1.0) ** i * (i + 1) for i in range(block)]),
        np.full(block, -0.0),
    ]
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_bytes_match_gguf_random(name):
    rng = np.random.default_rng(0)
    for scale in (1.0, 0.02, 300.0):
        x = (rng.standard_normal((48, 32 * 24)) * scale).astype(np.float32)
        ours = _core.quantize(name, x)
        ref = gg_quantize(x, getattr(T, name))
        assert ours.shape == ref.shape
        bad = np.flatnonzero(np.any(ours != ref, axis=1))
        assert bad.size == 0, f"{name}: rows {bad[:10]} differ from gguf-py"


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0"])
def test_bytes_match_gguf_adversarial(name):
    x = adversarial_rows(32)
    ours = _core.quantize(name, x)
    ref = gg_quantize(x, getattr(T, name))
    for i in range(x.shape[0]):
        assert np.array_equal(ours[i], ref[i]), f"{name}: adversarial row {i} ({x[i][:4]}...) differs"
    # Many blocks per row, mixed content.
    xx = x.reshape(1, -1)
    assert np.array_equal(_core.quantize(name, xx), gg_quantize(xx, getattr(T, name)))


@pytest.mark.parametrize("name", QUANTS)
def test_zero_blocks_have_zero_scale(name):
    blk = BLOCK[name]
    x = np.zeros((3, blk * 2), np.float32)
    q = _core.quantize(name, x)
    d = _core.dequantize(name, q, x.shape)
    assert np.all(d == 0) and not np.any(np.isnan(d))
    if name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"):  # fp16 scale first; Q4_0 gives -0.0 exactly as gguf-py (0 / -8)
        scale = q[:, :2].copy().view(np.float16).astype(np.float32)
        assert np.all(scale == 0), "the scale of an all-zero block must be 0"
        assert np.array_equal(q, gg_quantize(x, getattr(T, name)))


@pytest.mark.parametrize("name", QUANTS)
def test_dequantize_bit_exact_vs_gguf(name):
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.standard_normal((8, 512)), adversarial_rows(256)[:, :256].repeat(2, axis=1)]).astype(np.float32)
    q = _core.quantize(name, x)
    ours = _core.dequantize(name, q, x.shape)
    ref = gg_dequantize(q, getattr(T, name)).reshape(x.shape)
    assert np.array_equal(ours.view(np.uint32), ref.astype(np.float32).view(np.uint32))
    # Random bytes too (any bit pattern a file may hold), with finite fp16 scales.
    raw = rng.integers(0, 256, size=(4, q.shape[1]), dtype=np.uint8)
    ours = _core.dequantize(name, raw, (4, x.shape[1]))
    ref = gg_dequantize(raw, getattr(T, name)).reshape(4, -1).astype(np.float32)
    fin = np.isfinite(ref)
    assert np.array_equal(np.isfinite(ours), fin)
    assert np.array_equal(ours[fin].view(np.uint32), ref[fin].view(np.uint32))


@pytest.mark.parametrize("name", ["F16", "BF16"])
def test_float_conversions_match_gguf(name):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal((4, 64)) * s for s in (1, 1e-6, 1e4, 1e6)]).astype(np.float32)
    ours = _core.quantize(name, x)
    if name == "F16":
        ref = x.astype(np.float16).view(np.uint8).reshape(x.shape[0], -1)
    else:
        ref = gg_quantize(x, T.BF16).view(np.uint8).reshape(x.shape[0], -1)
    assert np.array_equal(ours, ref)
    back = _core.dequantize(name, ours, x.shape)
    if name == "F16":
        want = x.astype(np.float16).astype(np.float32)
    else:
        want = gg_dequantize(ref.copy().view(np.uint8), T.BF16).reshape(x.shape)
    assert np.array_equal(back, np.asarray(want, np.float32))


@pytest.mark.parametrize("name", QUANTS)
def test_quantization_error_ggml_limit(name):
    for offset in (0.0, 1.0, 7.5):
        x = ggml_data(4096, offset).reshape(1, -1)
        d = _core.dequantize(name, _core.quantize(name, x), x.shape)
        err = ggml_rmse(d, x)
        assert err < QUANT_ERROR_LIMIT.get(name, MAX_QUANTIZATION_TOTAL_ERROR), f"{name} offset {offset}: error {err}"


def test_kquant_error_ordering_random():
    # Q6_K must be clearly better than Q4_K, and both close to the data on gaussian weights.
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((16, 1024)) * 0.05).astype(np.float32)
    rel = {}
    for name in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        d = _core.dequantize(name, _core.quantize(name, x), x.shape)
        rel[name] = float(np.sqrt(np.mean((d - x) ** 2)) / np.sqrt(np.mean(x ** 2)))
    assert rel["Q6_K"] < 0.5 * rel["Q4_K"], rel
    assert rel["Q4_K"] < rel["Q4_0"], rel  # the min/scale search must beat plain absmax
    assert rel["Q8_0"] < 0.01 and rel["Q4_K"] < 0.12, rel
    # one more bit halves the error; a minimum per block beats a symmetric scale
    assert rel["Q6_K"] < rel["Q5_K"] < 0.6 * rel["Q4_K"], rel
    assert rel["Q5_0"] < 0.6 * rel["Q4_0"] and rel["Q5_1"] < 0.6 * rel["Q4_1"], rel
    assert rel["Q4_1"] < rel["Q4_0"] and rel["Q5_1"] < rel["Q5_0"], rel
    assert rel["Q4_K"] < 0.6 * rel["Q3_K"] and rel["Q3_K"] < 0.25, rel
    assert rel["Q3_K"] < 0.75 * rel["Q2_K"] and rel["Q2_K"] < 0.4, rel


def test_iq4_error_random():
    # The non-linear grid fits gaussian weights better than Q4_0's even one; IQ4_XS's 6-bit sub-block
    # scales cost little against IQ4_NL's fp16 ones.
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((16, 1024)) * 0.05).astype(np.float32)
    rel = {}
    for name in ("Q4_0", "IQ4_NL", "IQ4_XS"):
        d = _core.dequantize(name, _core.quantize(name, x), x.shape)
        rel[name] = float(np.sqrt(np.mean((d - x) ** 2)) / np.sqrt(np.mean(x ** 2)))
    assert rel["IQ4_NL"] < 0.9 * rel["Q4_0"], rel
    assert rel["IQ4_XS"] < 1.05 * rel["IQ4_NL"], rel


@pytest.mark.parametrize("name", ["IQ4_NL", "IQ4_XS"])
def test_iq4_values_on_the_grid(name):
    # Every dequantized value is a scale times one of the 16 grid values; a zero row stays zero.
    grid = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    q = _core.quantize(name, x)
    d = _core.dequantize(name, q, x.shape).reshape(4, -1, 32)
    blk = 18 if name == "IQ4_NL" else 136
    b = q.reshape(-1, blk)
    scale = b[:, :2].copy().view(np.float16).astype(np.float32).reshape(-1)
    if name == "IQ4_NL":
        sub = scale.reshape(4, -1)
    else:
        ls = np.stack([((b[:, 4 + j // 2] >> (4 * (j % 2))) & 15) | (((b[:, 2:4].copy().view(np.uint16)[:, 0] >> (2 * j)) & 3) << 4)
                       for j in range(8)], 1).astype(np.float32) - 32
        sub = (scale[:, None] * ls).reshape(4, -1)
    ratio = d / sub[:, :, None]
    assert np.all(np.isin(ratio, grid)), "a value off the grid"


@pytest.mark.parametrize("name", QUANTS)
def test_dot_product_error_ggml_limit(name):
    w = ggml_data(4096, 0.0).reshape(1, -1)
    x = ggml_data(4096, 1.0).reshape(1, -1)
    wq = _core.quantize(name, w)
    ref = float((w.astype(np.float64) @ x.astype(np.float64).T)[0, 0])
    for isa in ("scalar", "avx2", "avx512", "neon"):
        if not _testing.isa_supported(isa):
            continue
        _testing.set_isa(isa)
        y = float(_testing.matmul_test(name, wq, 1, 4096, x)[0, 0])
        assert abs(y - ref) / 4096 < DOT_ERROR_LIMIT.get(name, MAX_DOT_PRODUCT_ERROR), f"{name}/{isa}: {y} vs {ref}"
    _testing.set_isa(_testing.isa_best())


def test_bad_input_errors():
    with pytest.raises(ModelError, match="multiple of 32"):
        _core.quantize("Q8_0", np.zeros((2, 40), np.float32))
    with pytest.raises(ModelError, match="unknown tensor type 'Q9_9'"):
        _core.quantize("Q9_9", np.zeros((2, 32), np.float32))
    with pytest.raises(ModelError, match="2-D"):
        _core.quantize("Q8_0", np.zeros(32, np.float32))
    with pytest.raises(ModelError, match="needs 68 bytes"):
        _core.dequantize("Q8_0", np.zeros(60, np.uint8), (2, 32))
    with pytest.raises(ModelError, match="IQ2_XXS"):
        _core.quantize("IQ2_XXS", np.zeros((1, 256), np.float32))


def _ggml_base_library():
    """ggml's C library as shipped inside the llama-cpp-python package (optional)."""
    import ctypes
    import glob
    import os
    try:
        import llama_cpp
    except Exception:
        return None
    root = os.path.dirname(llama_cpp.__file__)
    for path in sorted(glob.glob(os.path.join(root, "**", "libggml-base.*"), recursive=True)):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


@pytest.mark.parametrize("name,fn,block_bytes,block", [
    ("Q4_K", "quantize_row_q4_K_ref", 144, 256), ("Q6_K", "quantize_row_q6_K_ref", 210, 256),
    ("Q8_0", "quantize_row_q8_0_ref", 34, 32), ("Q4_0", "quantize_row_q4_0_ref", 18, 32),
    ("Q4_1", "quantize_row_q4_1_ref", 20, 32), ("Q5_0", "quantize_row_q5_0_ref", 22, 32),
    ("Q5_1", "quantize_row_q5_1_ref", 24, 32), ("Q5_K", "quantize_row_q5_K_ref", 176, 256),
    ("Q3_K", "quantize_row_q3_K_ref", 110, 256), ("Q2_K", "quantize_row_q2_K_ref", 84, 256),
    # IQ4: llama.cpp's file quantizer (quantize_row_iq4_*_ref of some versions tries fewer scales)
    ("IQ4_NL", "quantize_iq4_nl", 18, 32), ("IQ4_XS", "quantize_iq4_xs", 136, 256)])
def test_bytes_match_ggml_reference(name, fn, block_bytes, block):
    import ctypes
    lib = _ggml_base_library()
    if lib is None or not hasattr(lib, fn):
        pytest.skip("llama-cpp-python (ggml's reference quantizers) is not installed")
    f = getattr(lib, fn)
    if fn.startswith("quantize_row_"):
        f.restype = None
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    else:  # size_t quantize_*(src, dst, nrow, n_per_row, quant_weights)
        f.restype = ctypes.c_size_t
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    rng = np.random.default_rng(17)
    inputs = [rng.standard_normal((16, 1024)), ggml_data(16 * 1024).reshape(16, -1),
              np.where(rng.random((16, 1024)) < 0.02, rng.standard_normal((16, 1024)) * 10, 0)]
    if name not in ("Q8_0", "Q4_0"):  # those follow gguf-py on the edge cases (all -0.0: scale +0.0)
        inputs.append(adversarial_rows(block))
    for x in inputs:
        x = np.ascontiguousarray(x, dtype=np.float32)
        ref = np.zeros(x.size // block * block_bytes, np.uint8)
        if fn.startswith("quantize_row_"):
            f(x.ctypes.data, ref.ctypes.data, x.size)
        else:
            f(x.ctypes.data, ref.ctypes.data, x.shape[0], x.shape[1], None)
        ours = _core.quantize(name, x).reshape(-1, block_bytes)
        bad = np.flatnonzero(np.any(ours != ref.reshape(-1, block_bytes), axis=1))
        assert bad.size == 0, f"{name}: {bad.size} of {ours.shape[0]} blocks differ from ggml"
