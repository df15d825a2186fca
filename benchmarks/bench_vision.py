"""Time of one image through the native vision path (ViT + ln_vision + Q-Former + projector).

Writes a random GGUF with the real widths of TinyGPT-V's image path (EVA ViT-g: 1408 wide, 16 heads,
FFN 6144; Q-Former: 768 wide, 12 heads, FFN 3072, 32 queries; projector 768 -> 4096 -> 2560) but only a
few blocks, times Context.encode_image three times (b ViT blocks + 2 Q-Former layers, 2b + 2, b + 4) and
extrapolates to the full depth (39 ViT blocks, 12 Q-Former layers) from the per-block and per-layer
differences. Prints a table.

    python benchmarks/bench_vision.py [--image-size 224 448] [--threads 2] [--vit-blocks 2] [--type f16]
"""
import argparse
import os
import tempfile
import time

import numpy as np

import gguf
from tinygptv_native import _core


def write_model(path, image_size, vit_blocks, qf_layers, dtype):
    rng = np.random.default_rng(0)
    P, EV, FV, HV = 14, 1408, 6144, 16
    EQ, FQ, HQ, NQ, MID, E = 768, 3072, 12, 32, 4096, 2560
    T = 1 + (image_size // P) ** 2
    w = gguf.GGUFWriter(path, "tinygptv")

    def mat(name, n_out, n_in):
        w.add_tensor(name, (rng.standard_normal((n_out, n_in), dtype=np.float32) / np.sqrt(n_in)).astype(dtype))

    def vec(name, n, one=False):
        w.add_tensor(name, (np.ones(n) if one else 0.02 * rng.standard_normal(n)).astype(np.float32))

    # A one-block language model of the right width (only its width matters here).
    V, FL = 16, 16
    mat("token_embd.weight", V, E)
    for n, one in (("attn_norm", True),):
        vec(f"blk.0.{n}.weight", E, one)
        vec(f"blk.0.{n}.bias", E)
    mat("blk.0.attn_qkv.weight", 3 * E, E); vec("blk.0.attn_qkv.bias", 3 * E)
    mat("blk.0.attn_output.weight", E, E); vec("blk.0.attn_output.bias", E)
    mat("blk.0.ffn_up.weight", FL, E); vec("blk.0.ffn_up.bias", FL)
    mat("blk.0.ffn_down.weight", E, FL); vec("blk.0.ffn_down.bias", E)
    vec("output_norm.weight", E, True); vec("output_norm.bias", E)
    mat("output.weight", V, E); vec("output.bias", V)

    mat("v.patch_embd.weight", EV, 3 * P * P); vec("v.patch_embd.bias", EV)
    vec("v.cls", EV)
    w.add_tensor("v.pos_embd", (0.02 * rng.standard_normal((T, EV))).astype(np.float32))
    for i in range(vit_blocks):
        b = f"v.blk.{i}."
        for n in ("ln1", "ln2"):
            vec(b + n + ".weight", EV, True); vec(b + n + ".bias", EV)
        mat(b + "attn_qkv.weight", 3 * EV, EV); vec(b + "attn_qkv.bias", 3 * EV)
        mat(b + "attn_out.weight", EV, EV); vec(b + "attn_out.bias", EV)
        mat(b + "ffn_up.weight", FV, EV); vec(b + "ffn_up.bias", FV)
        mat(b + "ffn_down.weight", EV, FV); vec(b + "ffn_down.bias", EV)
    vec("v.post_ln.weight", EV, True); vec("v.post_ln.bias", EV)
    w.add_tensor("qf.query", rng.standard_normal((NQ, EQ)).astype(np.float32))
    vec("qf.emb_ln.weight", EQ, True); vec("qf.emb_ln.bias", EQ)
    for i in range(qf_layers):
        b = f"qf.blk.{i}."
        parts = [("attn_q", EQ, EQ), ("attn_k", EQ, EQ), ("attn_v", EQ, EQ), ("attn_out", EQ, EQ),
                 ("ffn_up", FQ, EQ), ("ffn_down", EQ, FQ)]
        if i % 2 == 0:
            parts += [("cross_q", EQ, EQ), ("cross_k", EQ, EV), ("cross_v", EQ, EV), ("cross_out", EQ, EQ)]
        for n, o, k in parts:
            mat(b + n + ".weight", o, k); vec(b + n + ".bias", o)
        for n in ("attn_ln", "ffn_ln") + (("cross_ln",) if i % 2 == 0 else ()):
            vec(b + n + ".weight", EQ, True); vec(b + n + ".bias", EQ)
    mat("mm.0.weight", MID, EQ); vec("mm.0.bias", MID)
    mat("mm.1.weight", E, MID); vec("mm.1.bias", E)

    A = "tinygptv"
    for k, v in {"context_length": 64, "embedding_length": E, "feed_forward_length": FL, "block_count": 1,
                 "attention.head_count": 32, "attention.head_count_kv": 32, "rope.dimension_count": 32,
                 "vision.image_size": image_size, "vision.patch_size": P, "vision.embedding_length": EV,
                 "vision.block_count": vit_blocks, "vision.attention.head_count": HV,
                 "vision.feed_forward_length": FV, "qformer.embedding_length": EQ, "qformer.block_count": qf_layers,
                 "qformer.attention.head_count": HQ, "qformer.feed_forward_length": FQ, "qformer.query_count": NQ,
                 "qformer.cross_attention_freq": 2}.items():
        w.add_uint32(f"{A}.{k}", v)
    for k, v in {"attention.layer_norm_epsilon": 1e-5, "attention.layer_norm_rms_epsilon": 1e-6,
                 "vision.attention.layer_norm_epsilon": 1e-6, "vision.post_norm_epsilon": 1e-5,
                 "qformer.layer_norm_epsilon": 1e-12}.items():
        w.add_float32(f"{A}.{k}", v)
    w.add_array(f"{A}.image.mean", [0.48145466, 0.4578275, 0.40821073])
    w.add_array(f"{A}.image.std", [0.26862954, 0.26130258, 0.27577711])
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def time_encode(path, image_size, threads, repeat):
    m = _core.Model(path)
    s = _core.Context(m, 16, 1, threads, image_cache_mb=0)  # time the encoder, not the cache
    x = np.random.default_rng(1).standard_normal((3, image_size, image_size)).astype(np.float32)
    s.encode_image(x)  # warm-up (allocates the scratch)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        s.encode_image(x)
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, nargs="+", default=[224])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--vit-blocks", type=int, default=2)
    ap.add_argument("--type", choices=["f32", "f16"], default="f16")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    dtype = np.float16 if a.type == "f16" else np.float32
    rows = []
    b = a.vit_blocks
    with tempfile.TemporaryDirectory() as d:
        for S in a.image_size:
            t = {}
            for vb, ql in ((b, 2), (2 * b, 2), (b, 4)):
                p = os.path.join(d, f"v{S}_{vb}_{ql}.gguf")
                write_model(p, S, vb, ql, dtype)
                t[(vb, ql)] = time_encode(p, S, a.threads, a.repeat)
                os.remove(p)
            per_block = (t[(2 * b, 2)] - t[(b, 2)]) / b
            per_layer = (t[(b, 4)] - t[(b, 2)]) / 2
            full = t[(b, 2)] + (39 - b) * per_block + 10 * per_layer
            rows.append((S, 1 + (S // 14) ** 2, a.type, a.threads, t[(b, 2)], per_block, per_layer, full))
    print(f"{'image':>6} {'tokens':>6} {'weights':>7} {'threads':>7} {'measured s':>10} {'ViT block s':>11} "
          f"{'QF layer s':>10} {'full model s (est.)':>19}")
    for S, T, ty, th, t1, pb, pl, full in rows:
        print(f"{S:>6} {T:>6} {ty:>7} {th:>7} {t1:>10.3f} {pb:>11.3f} {pl:>10.3f} {full:>19.2f}")


if __name__ == "__main__":
    main()
