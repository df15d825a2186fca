"""Random-weight TinyGPT-V files of the real size, and the PyTorch reference built from them.

Used by bench_tinygptv.py. Three pieces:
- build_f16(path, image_size): a `tinygptv` GGUF (F16 matrices, F32 norms/biases/embeddings) with the
  real dimensions: EVA ViT-g (1408 wide, 39 blocks, 16 heads, MLP 6144, patch 14), Q-Former (12 layers,
  768 wide, 12 heads, FFN 3072, 32 queries, cross-attention every 2nd layer), projector 768-4096-2560,
  Phi-2 (2560 wide, 32 layers, 32 heads, FFN 10240, rotary 32, vocabulary 51200) with TinyGPT-V's q/k
  LayerNorm and post-attention RMSNorm; names, keys and chat metadata from convert/schema.py, the
  GPT-2 vocabulary of tests/data/gpt2 padded to 51200 rows as the converter does.
- TorchReference(path, dtype): transformers' Blip2VisionModel (post_layernorm = ln_vision, eps 1e-5),
  Blip2QFormerModel, two Linear and PhiForCausalLM (qk_layernorm) with an RMSNorm hook on the attention
  output, weights read from the F16 file (plain reads, not a mapping, so the file does not count in
  the process's RSS).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# The converter as installed with the package (tinygptv_native.convert), not the checkout's convert/ folder:
# the benchmarks measure whatever tinygptv_native the Python running them imports.
from tinygptv_native.convert import schema
from tinygptv_native.convert.tinygptv import add_chat_metadata

ROOT = Path(__file__).resolve().parent.parent

# The real dimensions.
PATCH, V_EMBD, V_LAYERS, V_HEADS, V_FF = 14, 1408, 39, 16, 6144
Q_EMBD, Q_LAYERS, Q_HEADS, Q_FF, N_QUERY, CROSS_FREQ = 768, 12, 12, 3072, 32, 2
PROJ_MID = 4096
EMBD, LAYERS, HEADS, FF, N_ROT, VOCAB, CTX = 2560, 32, 32, 10240, 32, 51200, 2048
HEAD_DIM = EMBD // HEADS
GPT2_DIR = ROOT / "tests" / "data" / "gpt2"
STAGE = 3


def n_tokens(image_size: int) -> int:
    return 1 + (image_size // PATCH) ** 2


class _Values:
    """Cheap pseudo-random weights: slices of one pool of normal values, rotated per tensor and tiled
    to the tensor's size (the speed of the engine does not depend on the values)."""

    def __init__(self, seed=0, pool=1 << 24):
        self.rng = np.random.default_rng(seed)
        self.pool = self.rng.standard_normal(pool, dtype=np.float32)

    def normal(self, shape, scale):
        n = int(np.prod(shape))
        off = int(self.rng.integers(0, self.pool.size))
        return np.resize(np.roll(self.pool, off), n).reshape(shape) * np.float32(scale)

    def ones_plus(self, n, scale=0.02):
        return 1.0 + self.normal((n,), scale)


def planned_tensors(image_size: int):
    """Every tensor of the model as convert.writer.Planned entries (shape in PyTorch order)."""
    from tinygptv_native.convert.writer import Planned
    v = _Values()
    P = []

    def mat(name, rows, cols, scale=0.02):
        P.append(Planned(name, (rows, cols), lambda: v.normal((rows, cols), scale)))

    def vec(name, n, one=False):
        P.append(Planned(name, (n,), (lambda: v.ones_plus(n)) if one else (lambda: v.normal((n,), 0.02))))

    def norm(base, n, bias=True):
        vec(base + ".weight", n, True)
        if bias:
            vec(base + ".bias", n)

    def linear(base, rows, cols):
        mat(base + ".weight", rows, cols)
        vec(base + ".bias", rows)

    # language model, in the converter's order
    mat(schema.TOKEN_EMBD, VOCAB, EMBD)
    for i in range(LAYERS):
        b = lambda name: schema.blk(i, name)  # noqa: E731
        norm(b(schema.ATTN_NORM), EMBD)
        norm(b(schema.ATTN_Q_NORM), HEAD_DIM)
        norm(b(schema.ATTN_K_NORM), HEAD_DIM)
        linear(b(schema.ATTN_QKV), 3 * EMBD, EMBD)
        linear(b(schema.ATTN_OUTPUT), EMBD, EMBD)
        norm(b(schema.ATTN_POST_NORM), EMBD, bias=False)
        linear(b(schema.FFN_UP), FF, EMBD)
        linear(b(schema.FFN_DOWN), EMBD, FF)
    norm(schema.OUTPUT_NORM, EMBD)
    linear(schema.OUTPUT, VOCAB, EMBD)
    # vision tower
    T = n_tokens(image_size)
    linear(schema.V_PATCH_EMBD, V_EMBD, 3 * PATCH * PATCH)
    vec(schema.V_CLS, V_EMBD)
    mat(schema.V_POS_EMBD, T, V_EMBD)
    for i in range(V_LAYERS):
        b = lambda name: schema.vblk(i, name)  # noqa: E731
        norm(b(schema.V_LN1), V_EMBD)
        linear(b(schema.V_ATTN_QKV), 3 * V_EMBD, V_EMBD)
        linear(b(schema.V_ATTN_OUT), V_EMBD, V_EMBD)
        norm(b(schema.V_LN2), V_EMBD)
        linear(b(schema.V_FFN_UP), V_FF, V_EMBD)
        linear(b(schema.V_FFN_DOWN), V_EMBD, V_FF)
    norm(schema.V_POST_LN, V_EMBD)
    # Q-Former
    mat(schema.QF_QUERY, N_QUERY, Q_EMBD, 1.0)
    norm(schema.QF_EMB_LN, Q_EMBD)
    for i in range(Q_LAYERS):
        parts = schema.QF_SELF + (schema.QF_CROSS if i % CROSS_FREQ == 0 else ()) + schema.QF_FFN
        for part in parts:
            base = schema.qfblk(i, part)
            if part.endswith("_ln"):
                norm(base, Q_EMBD)
            elif part in ("cross_k", "cross_v"):
                linear(base, Q_EMBD, V_EMBD)
            elif part == "ffn_up":
                linear(base, Q_FF, Q_EMBD)
            elif part == "ffn_down":
                linear(base, Q_EMBD, Q_FF)
            else:
                linear(base, Q_EMBD, Q_EMBD)
    # projector
    linear(schema.MM_0, PROJ_MID, Q_EMBD)
    linear(schema.MM_1, EMBD, PROJ_MID)
    return P


def metadata(image_size: int):
    from tinygptv_native.convert.tokenizer import load_vocab
    from tinygptv_native.convert.writer import Metadata
    A = schema.ARCH_TINYGPTV
    k = lambda name: schema.lm_key(A, name)  # noqa: E731
    meta = Metadata()
    meta.str(schema.GENERAL_NAME, f"tinygptv-random-{image_size}")
    meta.u32(k(schema.LM_CONTEXT_LENGTH), CTX)
    meta.u32(k(schema.LM_EMBEDDING_LENGTH), EMBD)
    meta.u32(k(schema.LM_FEED_FORWARD_LENGTH), FF)
    meta.u32(k(schema.LM_BLOCK_COUNT), LAYERS)
    meta.u32(k(schema.LM_HEAD_COUNT), HEADS)
    meta.u32(k(schema.LM_HEAD_COUNT_KV), HEADS)
    meta.f32(k(schema.LM_LAYER_NORM_EPS), 1e-5)
    meta.u32(k(schema.LM_ROPE_DIMENSION_COUNT), N_ROT)
    meta.f32(k(schema.LM_LAYER_NORM_RMS_EPS), schema.LM_RMS_EPS)
    meta.u32(schema.STAGE, STAGE)
    meta.u32(schema.VISION_IMAGE_SIZE, image_size)
    meta.u32(schema.VISION_PATCH_SIZE, PATCH)
    meta.u32(schema.VISION_EMBEDDING_LENGTH, V_EMBD)
    meta.u32(schema.VISION_BLOCK_COUNT, V_LAYERS)
    meta.u32(schema.VISION_HEAD_COUNT, V_HEADS)
    meta.u32(schema.VISION_FEED_FORWARD_LENGTH, V_FF)
    meta.f32(schema.VISION_LAYER_NORM_EPS, schema.VISION_LN_EPS)
    meta.f32(schema.VISION_POST_NORM_EPS, schema.VISION_POST_LN_EPS)
    meta.u32(schema.QFORMER_EMBEDDING_LENGTH, Q_EMBD)
    meta.u32(schema.QFORMER_BLOCK_COUNT, Q_LAYERS)
    meta.u32(schema.QFORMER_HEAD_COUNT, Q_HEADS)
    meta.u32(schema.QFORMER_FEED_FORWARD_LENGTH, Q_FF)
    meta.u32(schema.QFORMER_QUERY_COUNT, N_QUERY)
    meta.u32(schema.QFORMER_CROSS_ATTENTION_FREQ, CROSS_FREQ)
    meta.f32(schema.QFORMER_LAYER_NORM_EPS, schema.QFORMER_LN_EPS)
    meta.arr_f32(schema.IMAGE_MEAN, schema.CLIP_MEAN)
    meta.arr_f32(schema.IMAGE_STD, schema.CLIP_STD)
    vocab = load_vocab(str(GPT2_DIR), VOCAB, pre="phi-2")
    c = schema.chat_defaults(STAGE)
    add_chat_metadata(meta, vocab, c)
    vocab.add_to(meta)
    return meta


def build_f16(path: Path, image_size: int, progress=True) -> None:
    from tinygptv_native.convert.writer import write_with_outtype
    write_with_outtype(str(path), schema.ARCH_TINYGPTV, metadata(image_size), planned_tensors(image_size), "f16",
                       progress)


# ------------------------------------------------------------------------------ PyTorch reference

def _read_tensors(path: str):
    """{name: float16/float32 numpy array in PyTorch order}, read with plain file reads."""
    from gguf import GGUFReader
    r = GGUFReader(path, "r")
    table = [(t.name, int(t.data_offset), int(t.n_bytes), t.data.dtype, tuple(t.data.shape)) for t in r.tensors]
    del r
    with open(path, "rb") as fh:
        for name, off, nbytes, dtype, shape in table:
            buf = np.empty(nbytes // np.dtype(dtype).itemsize, dtype=dtype)
            fh.seek(off)
            fh.readinto(memoryview(buf).cast("B"))
            yield name, buf.reshape(shape)


class _RMSNorm:
    """The TinyGPT-V post-attention RMSNorm (weight only, eps 1e-6), computed in float32."""

    def __init__(self, weight, eps=1e-6):
        self.weight, self.eps = weight, eps

    def __call__(self, module, inputs, output):
        import torch
        x = output[0]
        xf = x.float()
        y = (self.weight.float() * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps))).to(x.dtype)
        return (y,) + tuple(output[1:])


class TorchReference:
    """The reference modules in one dtype; image_embeddings() times its three parts."""

    def __init__(self, path: str, dtype, image_size: int):
        import torch
        from transformers import (Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel,
                                  PhiConfig, PhiForCausalLM)
        self.dtype = dtype
        vc = Blip2VisionConfig(hidden_size=V_EMBD, intermediate_size=V_FF, num_hidden_layers=V_LAYERS,
                               num_attention_heads=V_HEADS, image_size=image_size, patch_size=PATCH, hidden_act="gelu",
                               layer_norm_eps=schema.VISION_LN_EPS, qkv_bias=True, attention_dropout=0.0)
        qc = Blip2QFormerConfig(hidden_size=Q_EMBD, num_hidden_layers=Q_LAYERS, num_attention_heads=Q_HEADS,
                                intermediate_size=Q_FF, cross_attention_frequency=CROSS_FREQ, encoder_hidden_size=V_EMBD,
                                layer_norm_eps=schema.QFORMER_LN_EPS, hidden_act="gelu", hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)
        pc = PhiConfig(vocab_size=VOCAB, hidden_size=EMBD, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                       num_hidden_layers=LAYERS, intermediate_size=FF, partial_rotary_factor=N_ROT / HEAD_DIM,
                       qk_layernorm=True, layer_norm_eps=1e-5, max_position_embeddings=CTX, resid_pdrop=0.0,
                       embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False)
        with torch.device("meta"):
            vm, qm, phi = Blip2VisionModel(vc), Blip2QFormerModel(qc), PhiForCausalLM(pc)
            p1, p2 = torch.nn.Linear(Q_EMBD, PROJ_MID), torch.nn.Linear(PROJ_MID, EMBD)
        vm.post_layernorm = torch.nn.LayerNorm(V_EMBD, eps=schema.VISION_POST_LN_EPS, device="meta")
        vs, qs, ps, ls, rms = {}, {}, {}, {}, {}
        for name, a in _read_tensors(path):
            t = torch.from_numpy(a).to(dtype)
            del a
            if name.startswith("v."):
                self._vision_key(vs, name, t)
            elif name.startswith("qf."):
                self._qformer_key(qs, name, t)
            elif name.startswith("mm."):
                ps[name] = t
            else:
                self._phi_key(ls, rms, name, t)
        vm.load_state_dict(vs, strict=True, assign=True)
        qm.load_state_dict(qs, strict=True, assign=True)
        p1.load_state_dict({"weight": ps.pop("mm.0.weight"), "bias": ps.pop("mm.0.bias")}, assign=True)
        p2.load_state_dict({"weight": ps.pop("mm.1.weight"), "bias": ps.pop("mm.1.bias")}, assign=True)
        phi.load_state_dict(ls, strict=True, assign=True)
        phi.model.rotary_emb = type(phi.model.rotary_emb)(config=pc)   # its buffers were made on meta
        for i, layer in enumerate(phi.model.layers):
            layer.self_attn.register_forward_hook(_RMSNorm(rms[i]))
        for m in (vm, qm, p1, p2, phi):
            m.eval()
            for n, x in list(m.named_parameters()) + list(m.named_buffers()):
                if x.is_meta:
                    raise RuntimeError(f"reference tensor {n} was not loaded")
        self.vision, self.qformer, self.proj1, self.proj2, self.phi = vm, qm, p1, p2, phi
        self.query = self._query.to(dtype)

    def _vision_key(self, d, name, t):
        if name == schema.V_PATCH_EMBD + ".weight":
            d["embeddings.patch_embedding.weight"] = t.reshape(V_EMBD, 3, PATCH, PATCH)
        elif name == schema.V_PATCH_EMBD + ".bias":
            d["embeddings.patch_embedding.bias"] = t
        elif name == schema.V_CLS:
            d["embeddings.class_embedding"] = t.reshape(1, 1, V_EMBD)
        elif name == schema.V_POS_EMBD:
            d["embeddings.position_embedding"] = t[None]
        elif name.startswith(schema.V_POST_LN):
            d["post_layernorm." + name.split(".")[-1]] = t
        else:
            _, _, i, part, wb = name.split(".")
            hf = {"ln1": "layer_norm1", "ln2": "layer_norm2", "attn_qkv": "self_attn.qkv",
                  "attn_out": "self_attn.projection", "ffn_up": "mlp.fc1", "ffn_down": "mlp.fc2"}[part]
            d[f"encoder.layers.{i}.{hf}.{wb}"] = t

    def _qformer_key(self, d, name, t):
        if name == schema.QF_QUERY:
            self._query = t[None]
            return
        if name.startswith(schema.QF_EMB_LN):
            d["layernorm." + name.split(".")[-1]] = t
            return
        _, _, i, part, wb = name.split(".")
        hf = {"attn_q": "attention.attention.query", "attn_k": "attention.attention.key",
              "attn_v": "attention.attention.value", "attn_out": "attention.output.dense",
              "attn_ln": "attention.output.LayerNorm", "cross_q": "crossattention.attention.query",
              "cross_k": "crossattention.attention.key", "cross_v": "crossattention.attention.value",
              "cross_out": "crossattention.output.dense", "cross_ln": "crossattention.output.LayerNorm",
              "ffn_up": "intermediate_query.dense", "ffn_down": "output_query.dense",
              "ffn_ln": "output_query.LayerNorm"}[part]
        d[f"encoder.layer.{i}.{hf}.{wb}"] = t

    def _phi_key(self, d, rms, name, t):
        top = {schema.TOKEN_EMBD: "model.embed_tokens.weight", "output_norm.weight": "model.final_layernorm.weight",
               "output_norm.bias": "model.final_layernorm.bias", "output.weight": "lm_head.weight",
               "output.bias": "lm_head.bias"}
        if name in top:
            d[top[name]] = t
            return
        _, i, part, wb = name.split(".")
        p = f"model.layers.{i}."
        if part == schema.ATTN_QKV:   # rows [q; k; v]
            for j, x in enumerate(t.chunk(3, dim=0)):
                d[f"{p}self_attn.{'qkv'[j]}_proj.{wb}"] = x.contiguous()
        elif part == schema.ATTN_POST_NORM:
            rms[int(i)] = t
        else:
            hf = {"attn_norm": "input_layernorm", "attn_q_norm": "self_attn.q_layernorm",
                  "attn_k_norm": "self_attn.k_layernorm", "attn_output": "self_attn.dense", "ffn_up": "mlp.fc1",
                  "ffn_down": "mlp.fc2"}[part]
            d[f"{p}{hf}.{wb}"] = t

    def image_embeddings(self, pixels):
        """pixels [3,S,S] float32 -> ([n_query, n_embd], {vit_ms, qformer_ms, projector_ms})."""
        import time
        import torch
        with torch.inference_mode():
            x = torch.from_numpy(pixels)[None].to(self.dtype)
            t0 = time.perf_counter()
            img = self.vision(pixel_values=x).last_hidden_state
            t1 = time.perf_counter()
            q = self.qformer(query_embeds=self.query, encoder_hidden_states=img).last_hidden_state
            t2 = time.perf_counter()
            e = self.proj2(self.proj1(q))[0]
            t3 = time.perf_counter()
        return e, {"vit_ms": (t1 - t0) * 1e3, "qformer_ms": (t2 - t1) * 1e3, "projector_ms": (t3 - t2) * 1e3}
