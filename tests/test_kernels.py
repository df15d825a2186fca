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
from tinygptv_native._core import _testing  # noqa: E402

ISAS = [s for s in ("scalar", "avx2", "avx512", "neon") if _testing.isa_supported(s)]
# AVX2 with AVX-VNNI's kernels (vpdpbusd in place of pmaddubsw + pmaddwd) is a path of its own where the
# CPU has it; plain "avx2" then means they are off.
if _testing.avx_vnni_supported():
    ISAS.insert(ISAS.index("avx2") + 1, "avx2+vnni")
# AVX-512 with AMX tiles (the prompt products of Q8_0, Q4_0 and IQ4_NL from 16 rows) likewise; plain
# "avx512" then means the tiles are off.
if _testing.amx_supported():
    ISAS.append("avx512+amx")
SIMD = [s for s in ISAS if s != "scalar"]
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL",
         "IQ4_XS"]
QUANTS = [t for t in TYPES if t not in ("F32", "F16", "BF16")]
BLOCK = {"F32": 1, "F16": 1, "BF16": 1, "Q8_0": 32, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32,
         "Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "IQ4_NL": 32, "IQ4_XS": 256}
NS = [1, 2, 3, 7, 9, 16, 33]
# Error of y against unquantized float64 weights and activations, relative to |x| @ |w|.T
# (Frobenius norms): the quantization error of each format. ggml's own dot-product limit is
# checked in test_quants.py.
REL_ERROR_VS_FLOAT = {"F32": 1e-6, "F16": 5e-4, "BF16": 4e-3, "Q8_0": 0.01, "Q4_0": 0.08, "Q4_1": 0.08,
                      "Q5_0": 0.04, "Q5_1": 0.04, "Q2_K": 0.08, "Q3_K": 0.06, "Q4_K": 0.06, "Q5_K": 0.03, "Q6_K": 0.02, "IQ4_NL": 0.07,
                      "IQ4_XS": 0.07}


def set_path(isa):
    """An entry of ISAS: the instruction set, and where the CPU has them whether AVX-VNNI's kernels and
    the AMX tiles are on."""
    _testing.set_isa(isa.split("+")[0])
    if _testing.avx_vnni_supported():
        _testing.set_avx_vnni(isa.endswith("+vnni"))
    if _testing.amx_supported():
        _testing.set_amx(isa.endswith("+amx"))


@pytest.fixture(autouse=True)
def restore_isa():
    yield
    _testing.set_isa(_testing.isa_best())
    if _testing.avx_vnni_supported():
        _testing.set_avx_vnni(True)
    if _testing.amx_supported():
        _testing.set_amx(True)


def n_ins(ty):
    b = BLOCK[ty]
    return [256, 768] if b == 256 else [32, 96, 512]


def run(ty, isa, wq, n_out, n_in, x, bias, threads=2):
    set_path(isa)
    return _testing.matmul_test(ty, wq, n_out, n_in, x, bias, threads)


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


def q8_groups_numpy(x, group):
    """Independent int8 activation quantizer with one scale per `group` blocks of 32 (the last group
    shorter), by ggml's Q8_0 rule: d = fp16(max|x| / 127), q = round-half-away(x * 127 / max|x|),
    all zero where the fp16 scale is 0. Returns (dequantized x, scales [n, groups])."""
    x = x.astype(np.float32)
    n, k = x.shape
    out, ds = np.zeros_like(x), []
    for c0 in range(0, k, 32 * group):
        v = x[:, c0:c0 + 32 * group]
        dd = np.abs(v).max(1) / np.float32(127)
        d = dd.astype(np.float16).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            idd = np.where(dd != 0, np.float32(1) / dd, np.float32(0)).astype(np.float32)
        t = (v * idd[:, None]).astype(np.float32)
        q = np.where(d[:, None] != 0, np.sign(t) * np.floor(np.abs(t).astype(np.float64) + 0.5), 0)
        out[:, c0:c0 + 32 * group] = q * d[:, None]
        ds.append(d)
    return out, np.stack(ds, 1)


def dequant_acts(ty, x):
    if ty in ("Q8_0", "Q5_0", "IQ4_NL"):
        return gg_dequantize(gg_quantize(x, T.Q8_0), T.Q8_0).reshape(x.shape)
    if ty in ("Q4_0", "Q4_1", "Q5_1"):  # one activation scale per 4 blocks (matmul_impl.h, kActGroupQ4_0)
        return q8_groups_numpy(x, 4)[0]
    if ty in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"):
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


@pytest.mark.skipif(not SIMD, reason="no SIMD path on this machine")
@pytest.mark.parametrize("ty", QUANTS)
def test_extreme_blocks_bit_identical(ty):
    """Blocks whose integer dot products are as large as the formats allow (every weight and
    activation at the end of its range, same or opposite signs, one outlier per block): the SIMD
    paths' int32 -> float steps must stay exact there, equal to the scalar path."""
    n_in = 512
    k = np.arange(n_in)
    rows = [np.ones(n_in), -np.ones(n_in), np.where(k % 2, 1.0, -1.0), np.where(k % 32 == 0, 1.0, 1e-3),
            np.where(k % 32 == 5, -1.0, 0.9), np.where(k % 256 < 128, 1.0, -1.0)]
    w = np.array(rows * 3, np.float32) * np.float32(3.0)
    wq = _core.quantize(ty, w)
    x = np.array(rows[:4] + [-r for r in rows[:3]], np.float32) * np.float32(7.0)
    x = np.concatenate([x, x[::-1], x, x[:1]])  # 22 rows: AMX tiles take 16 at a time
    ys = run(ty, "scalar", wq, w.shape[0], n_in, x, None)
    big = np.abs(ys).max()
    assert big > 0.5 * 21 * n_in  # the sums really are at the top of the range
    for isa in SIMD:
        for n in (1, x.shape[0]):
            y = run(ty, isa, wq, w.shape[0], n_in, x[:n], None)
            assert np.array_equal(y.view(np.uint32), ys[:n].view(np.uint32)), f"{ty}/{isa} n={n}"


def test_activation_quantizer_blocks():
    """The int8 activation blocks of the Q8_0/Q4_0 products (the AVX-512 path takes up to 16 blocks at
    a time): the same bytes as gguf-py's Q8_0 quantizer on finite blocks (except that a block whose
    fp16 scale rounds to 0 gets all-zero values), block sums that match, and every path equal to the
    scalar one on every block, NaN, inf and fp16-overflow blocks included."""
    rng = np.random.default_rng(21)
    n, nb = 12, 45  # two groups of 16 blocks and a tail of 13
    x = rng.standard_normal((n, nb, 32)).astype(np.float32)
    x *= rng.choice([1e-3, 1.0, 40.0], size=(n, 1, 1)).astype(np.float32)
    x[0, 3] = np.arange(32) - np.float32(15.5)   # exact ties: scale 1 (max 127), values k + 0.5
    x[0, 3, 0] = 127
    x[0, 33] = -x[0, 3]
    x[1, 20] = 0                                 # all zero
    x[2, 5] *= np.float32(1e-30)                 # fp16 scale underflows to 0: all-zero values
    x[3, 40] = np.float32(127 * 3.0e-8) * np.sign(x[3, 40])  # smallest nonzero fp16 scale
    x[4, 16] = 65504 * 127 * np.float32(0.999)   # largest finite fp16 scale
    x[5, 31, 7] = -np.float32(3.0e38)            # a block maximum near the float32 limit
    finite_rows = 6
    x[6, 2, 9] = np.nan
    x[7, 17, 0] = np.inf
    x[8, 44, 31] = -np.inf
    x[9, 30] *= np.float32(1e7)                  # fp16 scale overflows to inf
    x[10, 15, 3], x[10, 16, 4] = np.nan, np.inf  # specials on both sides of a 16-block boundary
    x = x.reshape(n, nb * 32)

    _testing.set_isa("scalar")
    qs0, d0, s0 = _testing.quantize_act_q8(x)
    assert np.array_equal(s0, qs0.reshape(n, nb, 32).astype(np.int32).sum(2))
    with np.errstate(over="ignore"):  # row 5's scale is inf in fp16, as ours
        ref = np.frombuffer(gg_quantize(x[:finite_rows], T.Q8_0).tobytes(), np.uint8).reshape(finite_rows, nb, 34)
    ref_d = ref[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    ref_q = ref[:, :, 2:].view(np.int8)
    zero = ref_d == 0
    assert zero[1, 20] and zero[2, 5] and not zero[3, 40]
    np.testing.assert_array_equal(d0[:finite_rows], ref_d)
    np.testing.assert_array_equal(qs0[:finite_rows].reshape(finite_rows, nb, 32)[~zero], ref_q[~zero])
    assert not qs0[:finite_rows].reshape(finite_rows, nb, 32)[zero].any()
    assert list(qs0[0, 3 * 32:4 * 32:8]) == [127, -8, 1, 9] and list(qs0[0, 33 * 32 + 1:33 * 32 + 4]) == [15, 14, 13]
    for isa in SIMD:
        set_path(isa)
        qs, d, s = _testing.quantize_act_q8(x)
        assert np.array_equal(qs, qs0), f"{isa}: values differ in blocks {np.argwhere((qs != qs0).reshape(n, nb, 32).any(2))[:5]}"
        assert np.array_equal(d.view(np.uint32), d0.view(np.uint32)) or np.array_equal(d, d0, equal_nan=True), isa
        assert np.array_equal(s, s0), isa

    # One scale per 4 blocks (Q4_0 products): 45 blocks = 11 groups and a group of 1; the same
    # special rows spread their value over the whole group.
    _testing.set_isa("scalar")
    qs0, d0, s0 = _testing.quantize_act_q8(x, 4)
    assert d0.shape == (n, 12) and np.array_equal(s0, qs0.reshape(n, nb, 32).astype(np.int32).sum(2))
    with np.errstate(over="ignore", invalid="ignore"):  # row 5's scale is inf in fp16 (0 * inf: NaN on both sides)
        ref_x, ref_d = q8_groups_numpy(x[:finite_rows], 4)
        np.testing.assert_array_equal(d0[:finite_rows], ref_d)
        np.testing.assert_array_equal(qs0[:finite_rows] * np.repeat(d0[:finite_rows], 128, 1)[:, :nb * 32], ref_x)
    assert list(qs0[0, 3 * 32:4 * 32:8]) == [127, -8, 1, 9]  # the group's maximum is that block's 127
    for isa in SIMD:
        set_path(isa)
        qs, d, s = _testing.quantize_act_q8(x, 4)
        assert np.array_equal(qs, qs0), f"{isa}: values differ in blocks {np.argwhere((qs != qs0).reshape(n, nb, 32).any(2))[:5]}"
        assert np.array_equal(d.view(np.uint32), d0.view(np.uint32)) or np.array_equal(d, d0, equal_nan=True), isa
        assert np.array_equal(s, s0), isa
    with pytest.raises(ModelError, match="group must be 1"):
        _testing.quantize_act_q8(x, 3)


@pytest.mark.skipif(not SIMD, reason="no SIMD path on this machine")
@pytest.mark.parametrize("ty", TYPES)
def test_decode_streams_bit_identical(ty):
    """Decode (n = 1) walks several parts of each thread's rows side by side: enough row groups that
    every thread count below has full sets of streams plus a remainder."""
    rng = np.random.default_rng(11)
    n_in = 256 if BLOCK[ty] == 256 else 96
    for n_out in (16 * 37 + 5, 16 * 64):
        _, wq, _ = make(ty, n_out, n_in, 7 + n_out)
        x = rng.standard_normal((1, n_in)).astype(np.float32)
        bias = rng.standard_normal(n_out).astype(np.float32)
        ys = run(ty, "scalar", wq, n_out, n_in, x, bias)
        for isa in SIMD:
            for threads in (1, 2, 3):
                y = run(ty, isa, wq, n_out, n_in, x, bias, threads=threads)
                diff = np.flatnonzero(y.view(np.uint32) != ys.view(np.uint32))
                assert diff.size == 0, f"{ty}/{isa} {n_out}x{n_in} threads={threads}: {diff.size} outputs differ"


@pytest.mark.skipif(not SIMD, reason="no SIMD path on this machine")
@pytest.mark.parametrize("ty", TYPES)
def test_long_prompt_in_activation_chunks(ty):
    """Enough rows of a wide input that the SIMD prompt kernels take them in several chunks (about
    384 KB of activations each, whole tiles): every row still equals the scalar path's."""
    rng = np.random.default_rng(13)
    n, n_in, n_out = 203, 4096, 37
    _, wq, _ = make(ty, n_out, n_in, 17)
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    ys = run(ty, "scalar", wq, n_out, n_in, x, None)
    for isa in SIMD:
        y = run(ty, isa, wq, n_out, n_in, x, None)
        diff = np.flatnonzero(y.view(np.uint32) != ys.view(np.uint32))
        assert diff.size == 0, f"{ty}/{isa}: {diff.size} outputs differ, first rows {np.unique(diff // n_out)[:5]}"


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
            # repacking on several threads gives the same layout
            pw = _testing.PreparedWeight(ty, wq, n_out, n_in, prepare_threads=3)
            assert np.array_equal(pw.matmul(x, None, 2), ys[0]), f"{ty}/{isa} n={n} (threaded prepare)"
            # a weight that was never prepared is repacked on the fly: same results
            pw = _testing.PreparedWeight(ty, wq, n_out, n_in, prepared=False)
            assert not pw.repacked
            assert np.array_equal(pw.matmul(x, None, 2), ys[0]), f"{ty}/{isa} n={n} (unprepared)"
            # each output row is the same whatever the batch it is computed in
            rows = np.concatenate([run(ty, isa, wq, n_out, n_in, x[i:i + 1], None) for i in range(n)])
            assert np.array_equal(rows, ys[0]), f"{ty}/{isa} n={n} (row by row)"


def _row_bytes(ty, n_in):
    if ty in ("F32", "F16", "BF16"):
        return n_in * (4 if ty == "F32" else 2)
    block, size = gguf.constants.GGML_QUANT_SIZES[T[ty]]
    return n_in // block * size


@pytest.mark.skipif(not SIMD, reason="no SIMD path on this machine")
@pytest.mark.parametrize("ty", TYPES)
def test_repack_bytes_equal_reference(ty):
    """The load's repack (fast paths, chunks taken in turn by 1, 2 or 3 threads) writes exactly the bytes
    of the plain element-by-element repack: a weight of about 7 MB (several of the chunks the threads
    take), a last group of 5 rows, an odd number of blocks per row, and for 16-bit weights rows whose
    length is not a multiple of 8 (the reference then runs). Random bytes: the repack moves bits."""
    rng = np.random.default_rng(11)
    shapes = {1: [200, 196], 32: [160], 256: [768]}[BLOCK[ty]]
    for isa in SIMD:
        set_path(isa)
        for n_in in shapes:
            rb = _row_bytes(ty, n_in)
            n_out = 16 * (7 * 2**20 // (16 * rb)) + 5
            wq = rng.integers(0, 256, n_out * rb, dtype=np.uint8)
            if ty in ("F16", "BF16", "F32"):  # finite values (NaN payloads would pass as well)
                wq = rng.standard_normal(n_out * rb // 4).astype(np.float32).view(np.uint8)[: n_out * rb].copy()
            ref = None
            for t in (1, 2, 3):
                pw = _testing.PreparedWeight(ty, wq, n_out, n_in, prepare_threads=t)
                if not pw.repacked:
                    break
                if ref is None:
                    ref = pw.reference_bytes()
                    assert ref.size > 0
                got = pw.repacked_bytes()
                assert got.size == ref.size and np.array_equal(got, ref), f"{ty}/{isa} [{n_out}, {n_in}] {t} threads"


@pytest.mark.parametrize("ty", QUANTS)
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
    x[1] *= 1e25 if ty in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS") else 1e5
    x[2] *= 1e-25
    x[3, :256] = 0
    ys = run(ty, "scalar", wq, n_out, n_in, x, None)
    assert np.all(np.isfinite(ys))
    assert np.all(ys[:, 3] == 0)
    for isa in SIMD:
        assert np.array_equal(run(ty, isa, wq, n_out, n_in, x, None).view(np.uint32), ys.view(np.uint32))


# The paths on which a type has SIMD kernels (and a repacked copy); elsewhere the scalar kernel runs.
SIMD_PATHS = {"Q4_1": ("avx2", "avx512", "neon"), "Q5_1": ("avx2", "avx512", "neon"), "Q5_K": ("avx2", "avx512", "neon"),
              "Q5_0": ("avx2", "avx512", "neon"), "Q3_K": ("avx2", "avx512", "neon"),
              "Q2_K": ("avx2", "avx512", "neon"),
              "IQ4_NL": ("avx2", "avx512", "neon"), "IQ4_XS": ("avx2", "avx512", "neon")}


@pytest.mark.parametrize("ty", ["Q4_1", "Q5_1", "Q5_K", "Q3_K", "Q2_K", "IQ4_NL", "IQ4_XS"])
def test_repacked_only_where_simd_kernels_exist(ty):
    """The new types build a repacked copy exactly on the paths that have their SIMD kernels and compute
    there exactly what the scalar path computes (a type without a path's kernels would run the scalar
    kernel over the file's layout there)."""
    rng = np.random.default_rng(8)
    n_in, n_out = 512, 40
    _, wq, _ = make(ty, n_out, n_in, 5)
    x = rng.standard_normal((3, n_in)).astype(np.float32)
    _testing.set_isa("scalar")
    ys = _testing.PreparedWeight(ty, wq, n_out, n_in).matmul(x, None, 2)
    for isa in ISAS:
        set_path(isa)
        pw = _testing.PreparedWeight(ty, wq, n_out, n_in, prepare_threads=2)
        assert pw.repacked == (isa.split("+")[0] in SIMD_PATHS[ty]), f"{ty}/{isa}"
        assert np.array_equal(pw.matmul(x, None, 2).view(np.uint32), ys.view(np.uint32)), f"{ty}/{isa}"


def test_q5_0_runs_on_the_q8_0_kernels():
    """Q5_0 is widened to Q8_0's repacked layout on every SIMD path (and then equals the scalar path bit
    for bit, tested with the other types above); its products equal those of the same values stored
    as Q8_0 blocks."""
    rng = np.random.default_rng(12)
    n_in, n_out = 512, 40
    _, wq, wd = make("Q5_0", n_out, n_in, 6)
    # the same weights as Q8_0 blocks: scale d, values q - 16
    blocks = wq.reshape(n_out, -1, 22)
    u = np.concatenate([blocks[:, :, 6:] & 15, blocks[:, :, 6:] >> 4], axis=2).astype(np.int16)
    qh = blocks[:, :, 2:6].copy().view(np.uint32)
    u |= (((qh >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.int16)
    q8 = np.concatenate([blocks[:, :, :2], (u - 16).astype(np.int8).view(np.uint8)], axis=2).reshape(n_out, -1)
    assert np.array_equal(_core.dequantize("Q8_0", q8, (n_out, n_in)), wd.astype(np.float32))
    x = rng.standard_normal((5, n_in)).astype(np.float32)
    for isa in ISAS:
        set_path(isa)
        pw = _testing.PreparedWeight("Q5_0", wq, n_out, n_in, prepare_threads=2)
        assert pw.repacked == (isa != "scalar"), isa
        for n in (1, 5):
            y5 = pw.matmul(x[:n], None, 2)
            y8 = _testing.matmul_test("Q8_0", q8, n_out, n_in, x[:n])
            assert np.array_equal(y5.view(np.uint32), y8.view(np.uint32)), f"{isa} n={n}"


def test_q3_k_runs_on_the_q6_k_kernels():
    """Q3_K is widened to Q6_K's repacked layout on every SIMD path; its products equal those of the
    same values stored as Q6_K blocks (values q - 4 and scales sc - 32, the same d)."""
    rng = np.random.default_rng(14)
    n_in, n_out = 512, 40
    _, wq, wd = make("Q3_K", n_out, n_in, 9)
    blocks = wq.reshape(n_out, -1, 110)
    hmask, qs, sc, d = blocks[..., :32], blocks[..., 32:96], blocks[..., 96:108], blocks[..., 108:]
    e = np.arange(256)
    low = (qs[..., 32 * (e // 128) + e % 32] >> (2 * ((e % 128) // 32))).astype(np.int16) & 3
    high = (hmask[..., e % 32] >> (e // 32)).astype(np.int16) & 1
    q = low - 4 * (1 - high)                                       # -4..3
    j = np.arange(16)
    lo = np.where(j < 8, sc[..., j % 8] & 15, sc[..., j % 8] >> 4).astype(np.int16)
    scales = (lo | (((sc[..., 8 + j % 4] >> (2 * (j // 4))) & 3).astype(np.int16) << 4)) - 32
    # Q6_K block: ql[128], qh[64], scales[16] int8, d; value u = q + 32 (ggml's packing)
    u = (q + 32).astype(np.uint8).reshape(n_out, -1, 2, 4, 32)     # [half][quarter][l]
    ql = np.concatenate([(u[:, :, :, 0] & 15) | ((u[:, :, :, 2] & 15) << 4),
                         (u[:, :, :, 1] & 15) | ((u[:, :, :, 3] & 15) << 4)], axis=3)
    qh = (u[:, :, :, 0] >> 4) | ((u[:, :, :, 1] >> 4) << 2) | ((u[:, :, :, 2] >> 4) << 4) | ((u[:, :, :, 3] >> 4) << 6)
    q6 = np.concatenate([ql.reshape(n_out, -1, 128), qh.reshape(n_out, -1, 64),
                         scales.astype(np.int8).view(np.uint8), d], axis=2).reshape(n_out, -1)
    assert np.array_equal(_core.dequantize("Q6_K", q6, (n_out, n_in)), wd.astype(np.float32))
    x = rng.standard_normal((5, n_in)).astype(np.float32)
    for isa in ISAS:
        set_path(isa)
        pw = _testing.PreparedWeight("Q3_K", wq, n_out, n_in, prepare_threads=2)
        assert pw.repacked == (isa != "scalar"), isa
        for n in (1, 5):
            y3 = pw.matmul(x[:n], None, 2)
            y6 = _testing.matmul_test("Q6_K", q6, n_out, n_in, x[:n])
            assert np.array_equal(y3.view(np.uint32), y6.view(np.uint32)), f"{isa} n={n}"


def test_iq4_nl_computes_as_q8_0():
    """IQ4_NL keeps Q4_0's 4-bit layout and looks its indices up in the grid before Q8_0's arithmetic:
    its products equal those of the same values (the grid values the indices name) stored as Q8_0
    blocks, on every path."""
    rng = np.random.default_rng(13)
    n_in, n_out = 512, 40
    _, wq, wd = make("IQ4_NL", n_out, n_in, 7)
    grid = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
    blocks = wq.reshape(n_out, -1, 18)
    idx = np.concatenate([blocks[:, :, 2:] & 15, blocks[:, :, 2:] >> 4], axis=2)
    q8 = np.concatenate([blocks[:, :, :2], grid[idx].view(np.uint8)], axis=2).reshape(n_out, -1)
    assert np.array_equal(_core.dequantize("Q8_0", q8, (n_out, n_in)), wd.astype(np.float32))
    x = rng.standard_normal((5, n_in)).astype(np.float32)
    for isa in ISAS:
        set_path(isa)
        pw = _testing.PreparedWeight("IQ4_NL", wq, n_out, n_in, prepare_threads=2)
        for n in (1, 5):
            y4 = pw.matmul(x[:n], None, 2)
            y8 = _testing.matmul_test("Q8_0", q8, n_out, n_in, x[:n])
            assert np.array_equal(y4.view(np.uint32), y8.view(np.uint32)), f"{isa} n={n}"


def test_bad_arguments():
    wq = _core.quantize("Q8_0", np.zeros((4, 64), np.float32))
    with pytest.raises(ModelError, match="needs"):
        _testing.matmul_test("Q8_0", wq[:, :-1], 4, 64, np.zeros((1, 64), np.float32))
    with pytest.raises(ModelError, match=r"shape \[n, 64\]"):
        _testing.matmul_test("Q8_0", wq, 4, 64, np.zeros((1, 32), np.float32))
    with pytest.raises(ModelError, match="bias"):
        _testing.matmul_test("Q8_0", wq, 4, 64, np.zeros((1, 64), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ModelError, match="IQ2_XXS is not supported"):
        _testing.matmul_test("IQ2_XXS", np.zeros(66, np.uint8), 1, 256, np.zeros((1, 256), np.float32))
    with pytest.raises(ModelError, match="multiple of 32"):
        _testing.matmul_test("Q4_0", np.zeros(18, np.uint8), 1, 48, np.zeros((1, 48), np.float32))
    with pytest.raises(ModelError, match="unknown instruction set"):
        _testing.set_isa("sse9")


def test_isa_reporting():
    assert _testing.isa() in ISAS
    assert _testing.isa_best() == ISAS[-1].split("+")[0]
    for isa in ISAS:
        set_path(isa)
        assert _testing.isa() == isa.split("+")[0]
        assert _testing.amx() == isa.endswith("+amx")
        assert _testing.avx_vnni() == isa.endswith("+vnni")
        path = _testing.kernel_path()
        assert path.split("+")[0] == isa.split("+")[0]
        assert ("avx-vnni" in path) == isa.endswith("+vnni") and ("amx" in path) == isa.endswith("+amx"), path
    if not _testing.amx_supported():
        with pytest.raises(ModelError, match="AMX tiles are not available"):
            _testing.set_amx(True)
    if not _testing.avx_vnni_supported():
        with pytest.raises(ModelError, match="AVX-VNNI is not available"):
            _testing.set_avx_vnni(True)
    for isa in ("avx2", "avx512", "neon"):
        if not _testing.isa_supported(isa):
            with pytest.raises(ModelError, match="not supported"):
                set_path(isa)


# ---- tinygptv quantize ----------------------------------------------------------------------

def _write_gguf(path, tensors, extra_kv=True):
    w = gguf.GGUFWriter(str(path), "phi2")
    if extra_kv:
        w.add_uint32("phi2.block_count", 8)
        w.add_string("general.name", "tiny test model")
        w.add_float32("phi2.attention.layer_norm_epsilon", 1e-5)
        w.add_bool("tokenizer.ggml.add_bos_token", False)
        w.add_array("tokenizer.ggml.tokens", ["a", "b", "<|endoftext|>"])
        w.add_array("tokenizer.ggml.token_type", [1, 1, 3])
        w.add_array("tinygptv.image.mean", [0.48145466, 0.4578275, 0.40821073])
        w.add_uint32("general.file_type", 1)
    for name, arr, raw in tensors:
        if raw is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tiny_model(rng):
    t = [("token_embd.weight", rng.standard_normal((12, 256)).astype(np.float16), None)]
    for i in range(8):
        t += [
            (f"blk.{i}.attn_norm.weight", rng.standard_normal(256).astype(np.float32), None),
            (f"blk.{i}.attn_qkv.weight", rng.standard_normal((96, 256)).astype(np.float16), None),
            (f"blk.{i}.attn_qkv.bias", rng.standard_normal(96).astype(np.float16), None),
            (f"blk.{i}.ffn_down.weight", rng.standard_normal((256, 512)).astype(np.float32), None),
            (f"blk.{i}.attn_output.weight", rng.standard_normal((32, 256)).astype(np.float16), None),
        ]
    t += [
        ("output.weight", rng.standard_normal((12, 256)).astype(np.float32), None),
        ("v.patch_embd.weight", rng.standard_normal((16, 588)).astype(np.float16), None),
        ("v.blk.0.ffn_up.weight", rng.standard_normal((64, 1408)).astype(np.float16), None),
        ("qf.query", rng.standard_normal((4, 64)).astype(np.float32), None),
    ]
    return t


def _fields(path):
    r = gguf.GGUFReader(str(path))
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    return kv, {t.name: t for t in r.tensors}


def expected_type(name, target):
    from tinygptv_native.quantize import use_more_bits
    if name.endswith(("norm.weight", ".bias")):
        return "F32"
    if name == "qf.query":
        return "F32"
    if name == "v.patch_embd.weight":
        return "F16"  # rows of 588 values: no block size divides them
    if target == "f16":
        return "F16"
    if target == "q4_0" and name == "output.weight":  # llama.cpp's Q4_0 mix (rows of 256 here)
        return "Q6_K"
    if target in ("q8_0", "q4_0"):
        return target.upper()
    if name.startswith("v."):
        return "Q8_0"
    if target == "q2_k":  # llama.cpp's mix for phi2 (no grouped-query attention)
        if name == "output.weight":
            return "Q6_K"
        if name.endswith(("attn_qkv.weight", "ffn_down.weight", "attn_output.weight")):
            return "Q3_K"
        return "Q2_K"
    if target in ("q3_k_s", "q3_k_m", "q3_k_l"):  # llama.cpp's mixes for phi2 (8 layers here: L/16 = 0)
        if name == "output.weight":
            return "Q6_K"
        if name.startswith("blk.") and target != "q3_k_s":
            layer = int(name.split(".")[1])
            if target == "q3_k_l" and name.endswith(("attn_qkv.weight", "ffn_down.weight", "attn_output.weight")):
                return "Q5_K"
            if name.endswith("attn_qkv.weight"):
                return "Q5_K" if layer < 2 else "Q4_K"
            if name.endswith(("ffn_down.weight", "attn_output.weight")):
                return "Q4_K"
        return "Q3_K"
    if target in ("q4_k_s", "q4_1", "q5_0", "q5_1", "q5_k_s", "q5_k_m", "q6_k", "iq4_nl",
                  "iq4_xs"):  # llama.cpp's mixes for phi2, no imatrix
        base = {"q4_k_s": "Q4_K", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1", "q6_k": "Q6_K",
                "iq4_nl": "IQ4_NL", "iq4_xs": "IQ4_XS"}.get(target, "Q5_K")
        if name == "output.weight":
            return "Q6_K"
        if name.startswith("blk."):
            layer = int(name.split(".")[1])
            if target == "q5_k_m" and name.endswith(("ffn_down.weight", "attn_qkv.weight")) and use_more_bits(layer, 8):
                return "Q6_K"
            if target == "q4_k_s" and ((name.endswith("attn_qkv.weight") and layer < 4) or
                                       (name.endswith("ffn_down.weight") and layer < 1)):
                return "Q5_K"
            if target in ("iq4_nl", "iq4_xs") and name.endswith("ffn_down.weight") and layer < 1:
                return "Q5_K"
        return base
    if name == "output.weight":
        return "Q6_K"
    if name.startswith("blk."):
        layer = int(name.split(".")[1])
        if name.endswith(("ffn_down.weight", "attn_qkv.weight")) and use_more_bits(layer, 8):
            return "Q6_K"
    return "Q4_K"


@pytest.mark.parametrize("target", ["f16", "q8_0", "q4_0", "q4_k_m", "q4_k_s", "q4_1", "q5_0", "q5_1", "q5_k_s", "q5_k_m", "q6_k",
                                    "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "iq4_nl",
                                    "iq4_xs"])
def test_quantize_file_round_trip(tmp_path, target):
    from tinygptv_native.quantize import FILE_TYPE, quantize_file
    rng = np.random.default_rng(21)
    tensors = _tiny_model(rng)
    src = tmp_path / "in.gguf"
    dst = tmp_path / f"out-{target}.gguf"
    _write_gguf(src, tensors)
    quantize_file(str(src), str(dst), target, progress=False)
    kv_in, _ = _fields(src)
    kv_out, t_out = _fields(dst)
    assert kv_out.pop("general.file_type") == FILE_TYPE[target]
    kv_in.pop("general.file_type")
    if target != "f16":
        assert kv_out.pop("general.quantization_version") == 2
    assert kv_in.keys() == kv_out.keys()
    for k in kv_in:
        if isinstance(kv_in[k], list) and kv_in[k] and isinstance(kv_in[k][0], float):
            assert np.allclose(kv_in[k], kv_out[k], rtol=0, atol=0), k
        else:
            assert kv_in[k] == kv_out[k], k
    assert list(t_out) == [n for n, _, _ in tensors]  # order kept
    for name, arr, _ in tensors:
        t = t_out[name]
        want = expected_type(name, target)
        assert t.tensor_type.name == want, f"{name}: {t.tensor_type.name} != {want}"
        assert [int(d) for d in t.shape] == list(reversed(arr.shape)), name
        x = arr.astype(np.float32).reshape(-1, arr.shape[-1])
        raw = np.asarray(t.data).view(np.uint8).reshape(-1)
        if want in ("F32", "F16"):
            got = raw.view(np.float32 if want == "F32" else np.float16).astype(np.float32).reshape(x.shape)
            assert np.array_equal(got, x.astype(np.float16).astype(np.float32) if want == "F16" else x), name
        else:
            assert np.array_equal(raw, _core.quantize(want, x).reshape(-1)), name
            if want in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"):
                assert np.array_equal(raw, gg_quantize(x, getattr(T, want)).reshape(-1)), name


@pytest.mark.parametrize("target,base", [("iq4_nl", "IQ4_NL"), ("iq4_xs", "IQ4_XS")])
def test_iq4_mixes_choose_as_llamacpp(target, base):
    """llama.cpp's IQ4_NL / IQ4_XS mixes for phi2 without an importance matrix (32 layers): Q5_K for the
    first L/8 ffn_down weights, Q6_K for output.weight, the base type elsewhere; rows that are not a
    multiple of 256 fall back (IQ4_XS -> IQ4_NL, Q5_K -> Q5_1, Q6_K -> Q8_0); the image path Q8_0."""
    from tinygptv_native.quantize import choose_type
    assert choose_type("blk.3.attn_qkv.weight", [2560, 7680], "F32", target, 32) == base
    assert choose_type("blk.3.ffn_down.weight", [10240, 2560], "F32", target, 32) == "Q5_K"
    assert choose_type("blk.4.ffn_down.weight", [10240, 2560], "F32", target, 32) == base
    assert choose_type("output.weight", [2560, 51200], "F32", target, 32) == "Q6_K"
    assert choose_type("token_embd.weight", [2560, 51200], "F32", target, 32) == base
    assert choose_type("blk.5.ffn_up.weight", [96, 8], "F32", target, 32) == "IQ4_NL"
    assert choose_type("blk.0.ffn_down.weight", [96, 8], "F32", target, 32) == "Q5_1"
    assert choose_type("output.weight", [96, 8], "F32", target, 32) == "Q8_0"
    assert choose_type("blk.5.ffn_up.weight", [40, 8], "F16", target, 32) == "F16"
    assert choose_type("v.blk.0.ffn_up.weight", [1408, 64], "F16", target, 32) == "Q8_0"


def test_quantize_file_errors_leave_no_output(tmp_path):
    from tinygptv_native import GGUFError
    from tinygptv_native.quantize import QuantizeError, main, quantize_file
    rng = np.random.default_rng(1)
    src = tmp_path / "in.gguf"
    # An IQ2_XXS weight can be copied but not converted: quantizing to q8_0 must fail cleanly.
    iq2 = rng.integers(0, 255, size=(4, 66), dtype=np.uint8)
    _write_gguf(src, [("blk.0.ffn_up.weight", iq2, T.IQ2_XXS)])
    dst = tmp_path / "out.gguf"
    with pytest.raises(QuantizeError, match=r"blk\.0\.ffn_up\.weight.*IQ2_XXS"):
        quantize_file(str(src), str(dst), "q8_0", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf"]
    with pytest.raises(QuantizeError, match="q3_k"):
        quantize_file(str(src), str(dst), "q3_k", progress=False)
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        quantize_file(str(tmp_path / "missing.gguf"), str(dst), "q8_0", progress=False)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOTGGUF" + bytes(100))
    with pytest.raises(GGUFError, match="bad.gguf"):
        quantize_file(str(bad), str(dst), "q8_0", progress=False)
    assert not dst.exists()
    assert main([str(bad), str(dst), "q4_0", "--quiet"]) == 1
    with pytest.raises(SystemExit):
        main([str(src), str(dst), "q9"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "in.gguf"]


def test_isa_environment_variable():
    import os
    import subprocess
    import sys
    from fixtures.proc import CHILD_CWD, child_env
    code = "from tinygptv_native._core import _testing; print(_testing.isa(), _testing.amx(), _testing.avx_vnni())"
    env = child_env()
    for isa in ISAS:
        env["TINYGPTV_ISA"] = isa.split("+")[0]
        env["TINYGPTV_AMX"] = "1" if isa.endswith("+amx") else "0"
        env["TINYGPTV_AVX_VNNI"] = "1" if isa.endswith("+vnni") else "0"
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=CHILD_CWD, capture_output=True, text=True,
                             timeout=60)
        want = [isa.split("+")[0], str(isa.endswith("+amx")), str(isa.endswith("+vnni"))]
        assert out.returncode == 0 and out.stdout.split() == want, out.stderr
    del env["TINYGPTV_AMX"], env["TINYGPTV_AVX_VNNI"]
    env["TINYGPTV_ISA"] = "sse9"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=CHILD_CWD, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "unknown instruction set 'sse9'" in out.stderr


def test_quantize_file_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    import tinygptv_native.quantize as qmod
    rng = np.random.default_rng(8)
    src = tmp_path / "in.gguf"
    _write_gguf(src, _tiny_model(rng))
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"previous contents")
    calls = {"n": 0}
    real = _core.quantize

    def failing(ty, x):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return real(ty, x)

    monkeypatch.setattr(_core, "quantize", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        qmod.quantize_file(str(src), str(dst), "q4_0", progress=False, n_threads=1)
    assert dst.read_bytes() == b"previous contents"  # the old output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf", "out.gguf"]
