"""The Vulkan backend: device listing, transfers, command replay and every shader against the CPU kernels
or float64 numpy references, with the validation layer on (any message it sends fails the test).

Where the backend was not built or no Vulkan device exists these tests skip with the reason; with
TINYGPTV_REQUIRE_VULKAN=1 (CI, on Mesa's lavapipe) that is a failure instead. The tests of a machine
without the loader run everywhere.
"""
import math
import os
import subprocess
import sys

# Read when the process's Vulkan instance is made (on first use, never at import): before any test runs.
os.environ.setdefault("TINYGPTV_VK_VALIDATION", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tinygptv_native as tg  # noqa: E402
from fixtures.proc import CHILD_CWD, child_env  # noqa: E402
from tinygptv_native import _core  # noqa: E402
from tinygptv_native._core import _testing  # noqa: E402

from fixtures.vulkan import vk  # noqa: E402,F401  (the fixture)


def rng(seed):
    return np.random.default_rng(seed)


# ---- the device and its plumbing ------------------------------------------------------------------

def test_validation_layer_is_on(vk):
    assert _testing.vk_validation(), "TINYGPTV_VK_VALIDATION=1 was set before the instance was made"


def test_devices_describe_themselves(vk):
    devs = tg.vulkan_devices()
    assert devs and [d["index"] for d in devs] == list(range(len(devs)))
    for d in devs:
        assert d["name"] and d["type"] in ("discrete", "integrated", "virtual", "cpu", "other")
        assert d["subgroup_size"] >= 1 and d["subgroup_size"] & (d["subgroup_size"] - 1) == 0
        assert d["memory_heaps"] and all(h["size"] > 0 for h in d["memory_heaps"])
        # VK_EXT_memory_budget's numbers where the driver offers it (lavapipe of Mesa 22 does not), else None
        for h in d["memory_heaps"]:
            if d["memory_budget"]:
                assert 0 < h["budget"] <= h["size"] and h["usage"] >= 0
            else:
                assert h["budget"] is None and h["usage"] is None
        assert d["max_storage_buffer_range"] >= 2**27  # what the Vulkan spec guarantees at least
        for k in ("fp16", "int8", "cooperative_matrix", "storage_16bit", "storage_8bit", "memory_budget"):
            assert isinstance(d[k], bool)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 4097, 3 * 2**20 + 1])
def test_upload_download_roundtrip(vk, n):
    data = rng(n).integers(0, 256, n, dtype=np.uint8)
    back = _testing.vk_roundtrip(data)
    assert back.dtype == np.uint8 and np.array_equal(back, data)


def test_a_recorded_sequence_replays(vk):
    # y += b, recorded once and submitted 3 times: each submission runs it again on the result of the last.
    a = rng(1).standard_normal((5, 33)).astype(np.float32)
    b = rng(2).standard_normal(33).astype(np.float32)
    out = _testing.vk_add(a, b, replay=3)
    np.testing.assert_allclose(out, a + 3 * b, rtol=1e-6, atol=1e-6)
    # a residual add (b as long as a)
    c = rng(3).standard_normal((5, 33)).astype(np.float32)
    np.testing.assert_array_equal(_testing.vk_add(a, c), a + c)


def test_bad_calls_raise_the_typed_error(vk):
    w = _core.quantize("Q8_0", np.ones((4, 64), np.float32))
    with pytest.raises(tg.VulkanError, match="device 99 does not exist"):
        _testing.vk_matmul("Q8_0", w.ravel(), 4, 64, np.ones((1, 64), np.float32), device=99)
    with pytest.raises(tg.VulkanError, match="needs 272"):
        _testing.vk_matmul("Q8_0", w.ravel()[:-1], 4, 64, np.ones((1, 64), np.float32))
    with pytest.raises(tg.VulkanError, match="no matrix product for Q5_1"):
        q = _core.quantize("Q5_1", np.ones((4, 64), np.float32))
        _testing.vk_matmul("Q5_1", q.ravel(), 4, 64, np.ones((1, 64), np.float32))
    with pytest.raises(tg.VulkanError, match="add"):
        _testing.vk_add(np.ones(10, np.float32), np.ones(3, np.float32))
    with pytest.raises(tg.VulkanError, match="outside the table"):
        cs = np.ones((4, 2), np.float32)
        _testing.vk_rope_neox(np.ones((1, 8), np.float32), 1, 8, 4, np.array([4], np.int32), cs, cs)
    assert isinstance(tg.VulkanError("x"), RuntimeError)


# ---- matrix products ------------------------------------------------------------------------------

# (type, n_in): uneven lengths where the type allows them; 3 blocks for Q8_0/Q4_0, 2 super-blocks for K.
SHAPES = [("F32", 37), ("F16", 70), ("Q8_0", 96), ("Q4_0", 96), ("Q4_K", 512), ("Q6_K", 512)]


def weights(typ, n_out, n_in, seed):
    w = (rng(seed).standard_normal((n_out, n_in)) * 0.5).astype(np.float32)
    data = _core.quantize(typ, w)
    return data.ravel(), _core.dequantize(typ, data, [n_out, n_in]).astype(np.float64)


@pytest.mark.parametrize("typ,n_in", SHAPES)
@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 33])
def test_matmul_matches_float64(vk, typ, n_in, rows):
    assert _testing.vk_matmul_supports(typ)
    n_out = 45
    data, w = weights(typ, n_out, n_in, seed=rows * 7 + n_in)
    x = rng(rows).standard_normal((rows, n_in)).astype(np.float32)
    y = _testing.vk_matmul(typ, data, n_out, n_in, x)
    ref = x.astype(np.float64) @ w.T
    # float32 sums of n_in products in another order than float64's: well within 1e-5 of the row's scale
    scale = np.abs(x).astype(np.float64) @ np.abs(w).T
    assert y.shape == (rows, n_out) and y.dtype == np.float32
    assert np.all(np.abs(y - ref) <= 1e-5 * scale + 1e-6), np.max(np.abs(y - ref) / scale)


@pytest.mark.parametrize("typ,n_in", SHAPES)
def test_matmul_bias_and_replay(vk, typ, n_in):
    n_out, rows = 17, 3
    data, w = weights(typ, n_out, n_in, seed=5)
    x = rng(6).standard_normal((rows, n_in)).astype(np.float32)
    bias = rng(7).standard_normal(n_out).astype(np.float32)
    y = _testing.vk_matmul(typ, data, n_out, n_in, x, bias=bias)
    ref = x.astype(np.float64) @ w.T + bias
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    # a replayed product writes the same output again: the same bits
    np.testing.assert_array_equal(_testing.vk_matmul(typ, data, n_out, n_in, x, bias=bias, replay=3), y)


def test_matmul_f32_matches_the_cpu_kernel(vk):
    n_out, n_in, rows = 29, 83, 5
    w = rng(8).standard_normal((n_out, n_in)).astype(np.float32)
    x = rng(9).standard_normal((rows, n_in)).astype(np.float32)
    cpu = _testing.matmul_test("F32", w.view(np.uint8).ravel(), n_out, n_in, x)
    gpu = _testing.vk_matmul("F32", w.view(np.uint8).ravel(), n_out, n_in, x)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-5)


def test_matmul_more_outputs_than_one_dispatch_holds(vk):
    # More outputs than a grid dimension allows on many devices (65535): split over dispatches.
    n_out, n_in = 65600, 32
    data, w = weights("Q8_0", n_out, n_in, seed=10)
    x = rng(11).standard_normal((2, n_in)).astype(np.float32)
    y = _testing.vk_matmul("Q8_0", data, n_out, n_in, x)
    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T, rtol=1e-4, atol=1e-4)


# ---- the tiled product (matmul.comp) --------------------------------------------------------------

# Several K per type: not multiples of the shader's 32-value step where the type allows it (F32, F16), 1 to 5
# blocks, 1 to 3 super-blocks.
TILED_K = [("F32", 37), ("F32", 64), ("F32", 200), ("F16", 70), ("F16", 96), ("Q8_0", 32), ("Q8_0", 96),
           ("Q8_0", 160), ("Q4_0", 64), ("Q4_0", 96), ("Q4_K", 256), ("Q4_K", 768), ("Q6_K", 256), ("Q6_K", 512)]
# Each sum is float32 over n_in products in another order than float64's (and than matvec's): within 1e-5 of
# the row's scale sum_i |x_i w_i|, as test_matmul_matches_float64 states for matvec; the two shaders are then
# within 2e-5 of it of each other.
TILED_TOL = 1e-5


def _within(y, ref, scale, tol):
    err = np.abs(y.astype(np.float64) - ref)
    return np.all(err <= tol * scale + 1e-6), float(np.max(err / (scale + 1e-30)))


def test_the_tiled_shader_takes_products_from_16_rows(vk, monkeypatch):
    assert _testing.vk_tiled_min_rows() == 16
    monkeypatch.setenv("TINYGPTV_VK_TILED_ROWS", "3")
    assert _testing.vk_tiled_min_rows() == 3
    monkeypatch.setenv("TINYGPTV_VK_TILED_ROWS", "0")
    with pytest.raises(tg.VulkanError, match="TINYGPTV_VK_TILED_ROWS=0"):
        _testing.vk_tiled_min_rows()
    with pytest.raises(tg.VulkanError, match="kernel 'mm'"):
        _testing.vk_matmul("F32", np.ones(16, np.uint8), 1, 4, np.ones((1, 4), np.float32), kernel="mm")


@pytest.mark.parametrize("typ,n_in", TILED_K)
@pytest.mark.parametrize("rows", [1, 16, 17, 33, 100, 257])
def test_tiled_matmul_matches_float64_and_matvec(vk, typ, n_in, rows):
    """Rows and outputs not multiples of the 64 x 64 tile, with a bias, into columns 5.. of rows wider than
    the product (the other columns untouched): against float64 on the dequantized weights and against
    matvec on the same inputs."""
    n_out = 75 if rows % 2 else 130
    data, w = weights(typ, n_out, n_in, seed=rows + n_in)
    x = rng(rows + 1).standard_normal((rows, n_in)).astype(np.float32)
    bias = rng(rows + 2).standard_normal(n_out).astype(np.float32)
    ref = x.astype(np.float64) @ w.T + bias
    scale = np.abs(x).astype(np.float64) @ np.abs(w).T + np.abs(bias)
    kw = dict(bias=bias, y_stride=n_out + 9, y_col0=5)
    yt = _testing.vk_matmul(typ, data, n_out, n_in, x, kernel="tiled", **kw)
    yv = _testing.vk_matmul(typ, data, n_out, n_in, x, kernel="matvec", **kw)
    assert yt.shape == (rows, n_out + 9)
    assert np.isnan(yt[:, :5]).all() and np.isnan(yt[:, 5 + n_out:]).all()
    ok, err = _within(yt[:, 5:5 + n_out], ref, scale, TILED_TOL)
    assert ok, (typ, n_in, rows, err)
    ok, err = _within(yt[:, 5:5 + n_out], yv[:, 5:5 + n_out].astype(np.float64), scale, 2 * TILED_TOL)
    assert ok, (typ, n_in, rows, err)
    # auto: matvec below 16 rows, the tiled shader from 16 (the same bits as the kernel forced)
    ya = _testing.vk_matmul(typ, data, n_out, n_in, x, **kw)
    assert np.array_equal(ya, yt if rows >= 16 else yv, equal_nan=True)


@pytest.mark.parametrize("typ,n_in", [("F16", 70), ("Q4_0", 64), ("Q4_K", 256), ("Q6_K", 256)])
def test_tiled_matmul_of_a_tensor_part(vk, typ, n_in):
    """Outputs 70..199 from a buffer holding only those weight rows (a tensor split over buffers): the
    shader reads row o at o - 70 of its buffer and the bias at o; columns before 70 stay untouched."""
    n_out, o_begin, rows = 200, 70, 40
    data, w = weights(typ, n_out, n_in, seed=3)
    part = data.reshape(n_out, -1)[o_begin:].ravel()
    x = rng(4).standard_normal((rows, n_in)).astype(np.float32)
    bias = rng(5).standard_normal(n_out).astype(np.float32)
    y = _testing.vk_matmul(typ, part, n_out, n_in, x, bias=bias, kernel="tiled", o_begin=o_begin)
    assert np.isnan(y[:, :o_begin]).all()
    ref = x.astype(np.float64) @ w[o_begin:].T + bias[o_begin:]
    scale = np.abs(x).astype(np.float64) @ np.abs(w[o_begin:]).T + np.abs(bias[o_begin:])
    ok, err = _within(y[:, o_begin:], ref, scale, TILED_TOL)
    assert ok, err


def test_a_tiled_rows_result_does_not_depend_on_the_other_rows(vk):
    """Each row sums in order of K whichever tile it lands in: rows 37..53 alone give the bits they give
    inside 100 rows (so a batch's rows equal each alone, as long as both take the tiled shader)."""
    n_out, n_in = 90, 96
    data, _ = weights("Q8_0", n_out, n_in, seed=12)
    x = rng(13).standard_normal((100, n_in)).astype(np.float32)
    whole = _testing.vk_matmul("Q8_0", data, n_out, n_in, x, kernel="tiled")
    part = _testing.vk_matmul("Q8_0", data, n_out, n_in, np.ascontiguousarray(x[37:54]), kernel="tiled")
    assert np.array_equal(whole[37:54], part)


def test_tiled_matmul_of_many_outputs(vk):
    # 65600 outputs (past 65535, the grid dimension of many devices, were it a workgroup per output): 1025
    # tiles of 64 outputs, the last with one.
    n_out, n_in, rows = 65600, 32, 20
    data, w = weights("Q8_0", n_out, n_in, seed=14)
    x = rng(15).standard_normal((rows, n_in)).astype(np.float32)
    y = _testing.vk_matmul("Q8_0", data, n_out, n_in, x, kernel="tiled")
    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T, rtol=1e-4, atol=1e-4)


# ---- norms, activations, softmax, rotary ----------------------------------------------------------

@pytest.mark.parametrize("rows,n", [(1, 1), (1, 37), (9, 300), (33, 64)])
def test_layernorm(vk, rows, n):
    x = (rng(n).standard_normal((rows, n)) * 3 + 1).astype(np.float32)
    w = rng(n + 1).standard_normal(n).astype(np.float32)
    b = rng(n + 2).standard_normal(n).astype(np.float32)
    eps = 1e-5
    x64 = x.astype(np.float64)
    norm = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + eps)
    np.testing.assert_allclose(_testing.vk_layernorm(x, w, b, eps), norm * w + b, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(_testing.vk_layernorm(x, eps=eps), norm, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("rows,n", [(1, 1), (2, 37), (33, 130)])
def test_rmsnorm(vk, rows, n):
    x = (rng(n).standard_normal((rows, n)) * 2).astype(np.float32)
    w = rng(n + 1).standard_normal(n).astype(np.float32)
    eps = 1e-6
    x64 = x.astype(np.float64)
    norm = x64 / np.sqrt((x64 * x64).mean(1, keepdims=True) + eps)
    np.testing.assert_allclose(_testing.vk_rmsnorm(x, w, eps), norm * w, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(_testing.vk_rmsnorm(x, eps=eps), norm, rtol=2e-5, atol=2e-5)


def gelu_inputs():
    x = np.concatenate([np.linspace(-12, 12, 2001), rng(12).standard_normal(3000) * 3, [-100.0, -30.0, 0.0, 30.0, 100.0]])
    return x.astype(np.float32)


def test_gelu_exact(vk):
    x = gelu_inputs()
    ref = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64)])
    gpu = _testing.vk_gelu(x)
    np.testing.assert_allclose(gpu, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gpu, _testing.vec_math("gelu_erf", x), rtol=1e-5, atol=1e-6)


def test_gelu_tanh(vk):
    x = gelu_inputs()
    x64 = x.astype(np.float64)
    ref = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    gpu = _testing.vk_gelu(x, tanh=True)
    np.testing.assert_allclose(gpu, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gpu, _testing.vec_math("gelu_tanh", x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows,n", [(1, 1), (3, 77), (33, 256)])
def test_softmax(vk, rows, n):
    x = (rng(n).standard_normal((rows, n)) * 8).astype(np.float32)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(1, keepdims=True))
    gpu = _testing.vk_softmax(x)
    np.testing.assert_allclose(gpu, e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gpu, _testing.vec_math("softmax", x), rtol=1e-5, atol=1e-7)


def rope_tables(n_pos, n_rot, base=10000.0):
    # as the decoder's scratch builds them (csrc/model/phi.cpp), in float32
    half = n_rot // 2
    inv = (1.0 / np.power(np.float32(base), np.arange(half, dtype=np.float32) * 2 / np.float32(n_rot))).astype(np.float32)
    ang = np.arange(n_pos, dtype=np.float32)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


@pytest.mark.parametrize("rows,n_head,head_dim,n_rot,extra", [(1, 1, 8, 8, 0), (5, 3, 10, 4, 0), (33, 4, 80, 32, 7)])
def test_rope_neox(vk, rows, n_head, head_dim, n_rot, extra):
    # extra: floats after the heads in each row (a fused row whose tail is not rotated)
    width = n_head * head_dim + extra
    x = rng(rows).standard_normal((rows, width)).astype(np.float32)
    cos, sin = rope_tables(64, n_rot)
    pos = rng(rows + 1).integers(0, 64, rows).astype(np.int32)
    ref = x.astype(np.float64).copy()
    half = n_rot // 2
    for r in range(rows):
        c, s = cos[pos[r]].astype(np.float64), sin[pos[r]].astype(np.float64)
        for h in range(n_head):
            o = h * head_dim
            a, b = ref[r, o:o + half].copy(), ref[r, o + half:o + n_rot].copy()
            ref[r, o:o + half] = a * c - b * s
            ref[r, o + half:o + n_rot] = b * c + a * s
    out = _testing.vk_rope_neox(x, n_head, head_dim, n_rot, pos, cos, sin)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    # the dims past n_rot of each head and the row's tail pass through untouched
    keep = np.ones(width, bool)
    for h in range(n_head):
        keep[h * head_dim:h * head_dim + n_rot] = False
    np.testing.assert_array_equal(out[:, keep], x[:, keep])


# ---- the image path's shaders: full attention, the patch gather, its norms ------------------------

def full_attention_ref(q, k, v, n_head, head_dim, scale):
    """float64 softmax(q k^T * scale) v per head, no mask: q [n_q, H*D], k and v [n_kv, H*D]."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    out = np.empty((q.shape[0], n_head * head_dim))
    for h in range(n_head):
        c = slice(h * head_dim, (h + 1) * head_dim)
        s = q[:, c] @ k[:, c].T * scale
        p = np.exp(s - s.max(1, keepdims=True))
        out[:, c] = (p / p.sum(1, keepdims=True)) @ v[:, c]
    return out


# (n_q, n_kv, n_head, head_dim): one key; keys past a tile of 64 (uneven); queries fewer than keys and more;
# the ViT's 88-wide heads over 257 tokens (EVA ViT-g at 224 px: 1 + 16^2)
ATTN_SHAPES = [(1, 1, 1, 1), (3, 70, 2, 5), (17, 9, 3, 16), (5, 257, 2, 88)]


@pytest.mark.parametrize("n_q,n_kv,n_head,head_dim", ATTN_SHAPES)
def test_full_attention_separate_buffers(vk, n_q, n_kv, n_head, head_dim):
    """Cross-attention's layout: q, k and v in buffers of their own, each row wider than its heads (the
    head columns at an offset), scores spread wide enough that the online softmax rescales."""
    W = n_head * head_dim
    g = rng(n_q * 31 + n_kv)
    q = (g.standard_normal((n_q, W + 3)) * 2).astype(np.float32)
    k = (g.standard_normal((n_kv, W + 5)) * 2).astype(np.float32)
    v = g.standard_normal((n_kv, W + 1)).astype(np.float32)
    scale = 1 / math.sqrt(head_dim)
    out = _testing.vk_attention_full(q, k, v, n_head, head_dim, scale, q_off=3, k_off=5, v_off=1)
    ref = full_attention_ref(q[:, 3:], k[:, 5:], v[:, 1:], n_head, head_dim, scale)
    assert out.shape == (n_q, W)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-6)
    cpu = _testing.attention_test(np.ascontiguousarray(q[:, 3:]), np.ascontiguousarray(k[:, 5:]),
                                  np.ascontiguousarray(v[:, 1:]), n_head, n_head, scale)
    np.testing.assert_allclose(out, cpu, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("n,n_head,head_dim", [(1, 1, 8), (17, 3, 16), (70, 2, 24)])
def test_full_attention_over_one_qkv_buffer(vk, n, n_head, head_dim):
    """Self-attention's layout: [q | k | v] rows of one buffer, bound three times at offsets 0, W and 2W."""
    W = n_head * head_dim
    qkv = rng(n + head_dim).standard_normal((n, 3 * W)).astype(np.float32)
    scale = 0.3
    out = _testing.vk_attention_full(qkv, None, None, n_head, head_dim, scale, q_off=0, k_off=W, v_off=2 * W)
    ref = full_attention_ref(qkv[:, :W], qkv[:, W:2 * W], qkv[:, 2 * W:], n_head, head_dim, scale)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-6)


def test_full_attention_bad_shapes_raise(vk):
    q = np.ones((2, 8), np.float32)
    with pytest.raises(tg.VulkanError, match="attention_full: 2 queries against 2 keys, 1 heads of 300"):
        _testing.vk_attention_full(q, q, q, 1, 300, 1.0)
    with pytest.raises(tg.VulkanError, match="attention_full keys: the buffer holds 64 bytes, the operation needs 72"):
        _testing.vk_attention_full(q, q, q, 2, 4, 1.0, k_off=2)  # k_off 2 + 8 values runs past the last row


@pytest.mark.parametrize("size,patch", [(12, 4), (10, 5), (7, 7), (6, 1)])
def test_patches_gather_in_the_conv_kernels_order(vk, size, patch):
    pix = rng(size).standard_normal((3, size, size)).astype(np.float32)
    g = size // patch
    # [c, gy, ky, gx, kx] -> [gy, gx, c, ky, kx]: row gy * g + gx, columns (c, ky, kx)
    ref = pix.reshape(3, g, patch, g, patch).transpose(1, 3, 0, 2, 4).reshape(g * g, 3 * patch * patch)
    np.testing.assert_array_equal(_testing.vk_patches(pix, patch), ref)
    with pytest.raises(tg.VulkanError, match="not a whole number"):
        _testing.vk_patches(np.ones((3, 5, 5), np.float32), 2)


@pytest.mark.parametrize("eps", [1e-6, 1e-12])
def test_layernorm_takes_the_image_paths_eps(vk, eps):
    """The ViT's blocks norm with eps 1e-6 and the Q-Former with 1e-12: rows of tiny variance (1e-10),
    where eps moves the result, against float64 with that eps."""
    x = (1 + 1e-5 * rng(3).standard_normal((9, 300))).astype(np.float64)
    x32 = x.astype(np.float32)
    x64 = x32.astype(np.float64)
    w = rng(4).standard_normal(300).astype(np.float32)
    b = rng(5).standard_normal(300).astype(np.float32)
    d = x64 - x64.mean(1, keepdims=True)
    ref = d / np.sqrt((d * d).mean(1, keepdims=True) + eps) * w + b
    got = _testing.vk_layernorm(x32, w, b, eps)
    scale = np.abs(d / np.sqrt((d * d).mean(1, keepdims=True) + eps)).max()
    # float32 sums of values near 1 lose about 1e-7 of the mean: relative to the normed scale
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-2 * scale)
    other = 1e-6 if eps == 1e-12 else 1e-12
    wrong = d / np.sqrt((d * d).mean(1, keepdims=True) + other) * w + b
    assert np.abs(got - ref).max() < 0.1 * np.abs(wrong - ref).max()


# ---- the command line -----------------------------------------------------------------------------

def tinygptv(*args, **env):
    p = subprocess.run([sys.executable, "-m", "tinygptv_native", *args], capture_output=True, text=True, timeout=120,
                       env=child_env(**env), cwd=CHILD_CWD)
    return p.returncode, p.stdout, p.stderr


def test_devices_command_lists_the_devices(vk):
    rc, out, err = tinygptv("devices")
    assert rc == 0, err
    for d in tg.vulkan_devices():
        assert f"{d['index']}: {d['name']} ({d['type']}" in out
    assert "subgroup size:" in out and "cooperative matrix:" in out


# ---- machines without Vulkan ----------------------------------------------------------------------

NO_LOADER = """
import numpy as np
import tinygptv_native as tg
from tinygptv_native._core import _testing
w = np.arange(12, dtype=np.float32).reshape(3, 4)
y = _testing.matmul_test("F32", w.view(np.uint8).ravel(), 3, 4, np.ones((1, 4), np.float32))
assert np.array_equal(y, w.sum(1)[None, :]), y  # the CPU path works
for attempt in range(2):  # a failed load is not cached as a success
    try:
        tg.vulkan_devices()
    except tg.VulkanError as e:
        print("VulkanError:", e)
    else:
        raise SystemExit("vulkan_devices() did not raise")
"""


def test_without_the_loader_the_cpu_path_works_and_the_gpu_raises():
    bogus = "libtinygptv-no-such-vulkan.so.1"
    p = subprocess.run([sys.executable, "-c", NO_LOADER], capture_output=True, text=True, timeout=120,
                       env=child_env(TINYGPTV_VK_LOADER=bogus), cwd=CHILD_CWD)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2 and all(ln.startswith("VulkanError:") for ln in lines), p.stdout
    if _core.vulkan_built():
        assert bogus in lines[0] and "could not be opened" in lines[0]
    else:
        assert "no Vulkan backend" in lines[0]
    rc, out, err = tinygptv("devices", TINYGPTV_VK_LOADER=bogus)
    assert rc == 1 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("tinygptv: error:") and "Traceback" not in err


NO_DEVICE = """
import numpy as np
import tinygptv_native as tg
from tinygptv_native._core import _testing
try:
    print("devices:", tg.vulkan_devices())  # a loader may list none, or fail to make an instance
except tg.VulkanError as e:
    print("VulkanError:", e)
try:
    _testing.vk_matmul("F32", np.ones(16, np.uint8), 1, 4, np.ones((1, 4), np.float32))
except tg.VulkanError as e:
    print("VulkanError:", e)
"""


def test_a_loader_without_drivers_raises_the_typed_error(vk):
    # The loader finds no driver when pointed at a driver list that does not exist.
    env = dict(VK_ICD_FILENAMES="/nonexistent/tinygptv-no-icd.json", VK_DRIVER_FILES="/nonexistent/tinygptv-no-icd.json",
               TINYGPTV_VK_VALIDATION="0")
    p = subprocess.run([sys.executable, "-c", NO_DEVICE], capture_output=True, text=True, timeout=120,
                       env=child_env(**env), cwd=CHILD_CWD)
    assert p.returncode == 0, p.stderr
    first, second = p.stdout.splitlines()
    assert first == "devices: []" or "no Vulkan driver was found" in first, p.stdout
    assert second.startswith("VulkanError: ") and ("no Vulkan d" in second), p.stdout
    rc, out, err = tinygptv("devices", **env)
    assert rc == 1 and ("no Vulkan devices were found" in out or "no Vulkan driver was found" in err)
