"""The GPU memory plan (tinygptv_native/gpu_plan.py): pure arithmetic over a model's tensor table, checked
by hand on its parts and for a real-size TinyGPT-V in Q4_0 at n_ctx 2048 (no device, no file needed)."""
import pytest

from tinygptv_native import _core
from tinygptv_native.convert import schema
from tinygptv_native.convert.quantize import choose_type
from tinygptv_native.demo import DEMO_MODEL
from tinygptv_native.gpu_plan import BUFFER_ALIGN, STAGING_BYTES, Hparams, hparams_from_metadata, plan, plan_file

GIB = 2**30
# block size and bytes per block of the storage types a Q4_0 file holds
BLOCKS = {"F32": (1, 4), "F16": (1, 2), "Q4_0": (32, 18)}

# TinyGPT-V at its real size: EVA ViT-g at 224 px, the Q-Former, the projector and Phi-2
REAL = Hparams(n_embd=2560, n_layer=32, n_head=32, n_head_kv=32, n_ff=10240, n_vocab=51200, image_size=224,
               patch_size=14, v_embd=1408, v_head=16, v_ff=6144, q_embd=768, q_head=12, q_ff=3072, n_query=32)


def real_size_tensors():
    """(name, GGML shape) of every tensor of the real-size model, as the converter names them."""
    h, out = REAL, []

    def lin(base, rows, cols, bias=True):
        out.append((base + ".weight", (cols, rows)))
        if bias:
            out.append((base + ".bias", (rows,)))

    def norm(base, n, bias=True):
        out.append((base + ".weight", (n,)))
        if bias:
            out.append((base + ".bias", (n,)))

    hd = h.n_embd // h.n_head
    out.append((schema.TOKEN_EMBD, (h.n_embd, h.n_vocab)))
    for i in range(h.n_layer):
        b = lambda n: schema.blk(i, n)  # noqa: E731
        norm(b(schema.ATTN_NORM), h.n_embd)
        norm(b(schema.ATTN_Q_NORM), hd)
        norm(b(schema.ATTN_K_NORM), hd)
        lin(b(schema.ATTN_QKV), 3 * h.n_embd, h.n_embd)
        lin(b(schema.ATTN_OUTPUT), h.n_embd, h.n_embd)
        norm(b(schema.ATTN_POST_NORM), h.n_embd, bias=False)
        lin(b(schema.FFN_UP), h.n_ff, h.n_embd)
        lin(b(schema.FFN_DOWN), h.n_embd, h.n_ff)
    norm(schema.OUTPUT_NORM, h.n_embd)
    lin(schema.OUTPUT, h.n_vocab, h.n_embd)
    T = h.image_tokens
    lin(schema.V_PATCH_EMBD, h.v_embd, 3 * h.patch_size ** 2)
    out.append((schema.V_CLS, (h.v_embd,)))
    out.append((schema.V_POS_EMBD, (h.v_embd, T)))
    for i in range(39):
        b = lambda n: schema.vblk(i, n)  # noqa: E731
        norm(b(schema.V_LN1), h.v_embd)
        lin(b(schema.V_ATTN_QKV), 3 * h.v_embd, h.v_embd)
        lin(b(schema.V_ATTN_OUT), h.v_embd, h.v_embd)
        norm(b(schema.V_LN2), h.v_embd)
        lin(b(schema.V_FFN_UP), h.v_ff, h.v_embd)
        lin(b(schema.V_FFN_DOWN), h.v_embd, h.v_ff)
    norm(schema.V_POST_LN, h.v_embd)
    out.append((schema.QF_QUERY, (h.q_embd, h.n_query)))
    norm(schema.QF_EMB_LN, h.q_embd)
    for i in range(12):
        for part in schema.QF_SELF + (schema.QF_CROSS if i % 2 == 0 else ()) + schema.QF_FFN:
            base = schema.qfblk(i, part)
            if part.endswith("_ln"):
                norm(base, h.q_embd)
            elif part in ("cross_k", "cross_v"):
                lin(base, h.q_embd, h.v_embd)
            elif part == "ffn_up":
                lin(base, h.q_ff, h.q_embd)
            elif part == "ffn_down":
                lin(base, h.q_embd, h.q_ff)
            else:
                lin(base, h.q_embd, h.q_embd)
    lin(schema.MM_0, 4096, h.q_embd)
    lin(schema.MM_1, h.n_embd, 4096)
    return out


def q4_0_bytes(name, ne):
    t = choose_type(name, list(ne), "F16", "q4_0", REAL.n_layer)
    blk, size = BLOCKS[t]
    n = 1
    for d in ne:
        n *= d
    assert n % blk == 0
    return n // blk * size


def test_real_size_tinygptv_q4_0_fits_7_gib_at_2048():
    tensors = real_size_tensors()
    sizes = [q4_0_bytes(n, ne) for n, ne in tensors]
    n_params = sum(__import__("math").prod(ne) for _n, ne in tensors)
    assert 3.6e9 < n_params < 4.0e9  # Phi-2 2.78 B + EVA ViT-g ~1.0 B + Q-Former and projector
    p = plan(sizes, REAL, n_ctx=2048)
    # keys and values, 32 layers x 2048 positions x 2560 x 2 bytes each
    assert p.kv_cache == 2 * 32 * 2048 * 2560 * 2 == 640 * 2**20
    assert sum(sizes) <= p.weights <= sum(sizes) + len(sizes) * BUFFER_ALIGN
    assert p.staging == STAGING_BYTES
    # Q4_0 is 4.5 bits a weight: about 2.1 GiB of weights
    assert 1.9 * GIB < p.weights < 2.4 * GIB, p.describe()
    # the token embedding (and the output matrix) in Q4_0: 51200 x 2560 x 18/32 bytes, within lavapipe's 128 MiB
    assert p.largest_buffer == 51200 * 2560 // 32 * 18
    assert p.total < 7 * GIB, p.describe()
    # the decoder's scratch for a piece of 256 rows against 2048 keys outweighs the image's at 224 px
    B = 256
    decode = 4 * (3 * B * 2560 + B * 3 * 2560 + B * 2560 + B * 10240 + 32 * B * 2048 + 51200)
    assert p.activations == -(-decode // BUFFER_ALIGN) * BUFFER_ALIGN + 32 * 2560 * 4


def test_more_sequences_and_context_scale_the_cache():
    one = plan([100], REAL, n_ctx=1024)
    four = plan([100], REAL, n_ctx=1024, n_seq=4)
    assert four.kv_cache == 4 * one.kv_cache
    assert plan([100], REAL, n_ctx=2048).kv_cache == 2 * one.kv_cache
    assert one.weights == BUFFER_ALIGN and one.largest_buffer == BUFFER_ALIGN
    with pytest.raises(ValueError, match="positive"):
        plan([100], REAL, n_ctx=0)


def test_plan_of_a_model_file():
    r = _core.GGUFReader(str(DEMO_MODEL))
    tensors = r.tensors()
    hp = hparams_from_metadata(r.metadata(max_array=0), {n: tuple(s) for n, _t, s, _o, _b in tensors})
    md = r.metadata(max_array=0)
    assert hp.n_embd == md["tinygptv.embedding_length"] and hp.n_layer == md["tinygptv.block_count"]
    assert hp.image_size == md["tinygptv.vision.image_size"] and hp.n_query == md["tinygptv.qformer.query_count"]
    p = plan_file(str(DEMO_MODEL), n_ctx=512)
    assert p.weights >= sum(b for *_r, b in tensors)
    assert p.kv_cache >= hp.n_layer * 512 * 2 * hp.kv_dim * 2
    with pytest.raises(ValueError, match="no memory plan for architecture 'llama'"):
        hparams_from_metadata({"general.architecture": "llama"}, {})
