"""Phi-2 (real size, random weights) speed: tinygptv_native against llama.cpp on the same GGUF files.

    python benchmarks/bench_phi2.py [--types f16,q8_0,q4_0,q4_k_m] [--runs 3] [--threads 2]

Builds a random-weight Phi-2 of the real dimensions (2560 wide, 32 layers, 51200 vocabulary,
2.78 B parameters) as a llama.cpp-layout `phi2` GGUF, cached under .bench/ (about 11 GB for all
four types), then measures for each type, interleaving the two engines run by run:
prompt processing of 256 tokens (tokens/s), generation of 64 tokens after a short prompt
(tokens/s), load time and peak RSS, each engine in its own process. llama.cpp is driven through
the `llama-cpp-python` package (pip install llama-cpp-python; it builds llama.cpp from source),
found in the current environment or in the interpreter given by --llama-python.
It also prints the memory-bandwidth ceiling for generation (weight bytes per token over the
measured read bandwidth) and the fraction of it each engine reaches.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench"
N_PROMPT, N_GEN, N_SHORT = 256, 64, 8
VOCAB, EMBD, FF, LAYERS, HEADS, CTX = 51200, 2560, 10240, 32, 32, 2048


def _byte_symbols() -> list:
    """GPT-2's printable stand-ins for the 256 bytes (what a byte-level BPE vocabulary lists)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def build_f16(path: Path, *, vocab: int = 0, embd: int = 0, ff: int = 0, layers: int = 0, heads: int = 0) -> None:
    """The random Phi-2 as F16 (the real dimensions unless given)."""
    import numpy as np
    import gguf
    VOCAB, EMBD, FF, LAYERS, HEADS = (vocab or globals()["VOCAB"], embd or globals()["EMBD"], ff or globals()["FF"],
                                      layers or globals()["LAYERS"], heads or globals()["HEADS"])
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".tmp")
    w = gguf.GGUFWriter(str(tmp), "phi2")
    w.add_name("phi2-random")
    w.add_context_length(CTX)
    w.add_embedding_length(EMBD)
    w.add_feed_forward_length(FF)
    w.add_block_count(LAYERS)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_rope_dimension_count(32)
    w.add_layer_norm_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    # A byte-level vocabulary of the right size (llama.cpp needs one to load the file).
    toks = _byte_symbols() + ["to", "tok"]  # the two merges below make these
    toks += [f"tok{i}" for i in range(VOCAB - len(toks) - 1)] + ["<|endoftext|>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(toks)
    w.add_token_types([1] * (VOCAB - 1) + [3])
    w.add_token_merges(["t o", "to k"])
    w.add_bos_token_id(VOCAB - 1)
    w.add_eos_token_id(VOCAB - 1)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def vec(n, one=False):
        return np.ones(n, np.float32) if one else (rng.standard_normal(n, dtype=np.float32) * 0.02)

    w.add_tensor("token_embd.weight", mat(VOCAB, EMBD))
    for i in range(LAYERS):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", vec(EMBD, True))
        w.add_tensor(b + "attn_norm.bias", vec(EMBD))
        w.add_tensor(b + "attn_qkv.weight", mat(3 * EMBD, EMBD))
        w.add_tensor(b + "attn_qkv.bias", vec(3 * EMBD))
        w.add_tensor(b + "attn_output.weight", mat(EMBD, EMBD))
        w.add_tensor(b + "attn_output.bias", vec(EMBD))
        w.add_tensor(b + "ffn_up.weight", mat(FF, EMBD))
        w.add_tensor(b + "ffn_up.bias", vec(FF))
        w.add_tensor(b + "ffn_down.weight", mat(EMBD, FF))
        w.add_tensor(b + "ffn_down.bias", vec(EMBD))
    w.add_tensor("output_norm.weight", vec(EMBD, True))
    w.add_tensor("output_norm.bias", vec(EMBD))
    w.add_tensor("output.weight", mat(VOCAB, EMBD))
    w.add_tensor("output.bias", vec(VOCAB))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=True)
    w.close()
    os.replace(tmp, path)


def model_file(typ: str) -> Path:
    CACHE.mkdir(exist_ok=True)
    f16 = CACHE / "phi2-random-f16.gguf"
    if not f16.exists():
        print(f"building {f16} ...", flush=True)
        build_f16(f16)
    if typ == "f16":
        return f16
    out = CACHE / f"phi2-random-{typ}.gguf"
    if not out.exists():
        print(f"quantizing {out} ...", flush=True)
        from tinygptv_native.quantize import quantize_file
        quantize_file(str(f16), str(out), typ)
    return out


# ---- workers: one engine, one file, one process ---------------------------------------------
def _prompt_ids(n, seed):
    import numpy as np
    return np.random.default_rng(seed).integers(300, VOCAB - 1000, size=n).astype(np.int32)


def worker_ours(path: str, threads: int) -> dict:
    import numpy as np
    from tinygptv_native import _core
    t0 = time.perf_counter()
    m = _core.Model(path)
    load = time.perf_counter() - t0
    s = _core.Context(m, N_PROMPT + 16, 1, threads, True)
    ids = _prompt_ids(N_PROMPT, 1)
    t0 = time.perf_counter()
    s.eval_tokens(0, ids, False)
    pp = N_PROMPT / (time.perf_counter() - t0)
    s = _core.Context(m, N_SHORT + N_GEN + 8, 1, threads, True)
    logits = s.eval_tokens(0, _prompt_ids(N_SHORT, 2), False)
    t0 = time.perf_counter()
    for _ in range(N_GEN):
        tok = int(np.argmax(logits[: VOCAB - 1000]))
        logits = s.eval_tokens(0, np.array([tok], np.int32), False)
    tg = N_GEN / (time.perf_counter() - t0)
    return {"load_s": load, "pp": pp, "tg": tg}


def worker_llama(path: str, threads: int) -> dict:
    import numpy as np
    from llama_cpp import Llama
    t0 = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=N_PROMPT + N_GEN + 32, n_batch=512, n_ubatch=512, n_threads=threads,
                n_threads_batch=threads, logits_all=False, verbose=False)
    load = time.perf_counter() - t0
    ids = [int(t) for t in _prompt_ids(N_PROMPT, 1)]
    t0 = time.perf_counter()
    llm.eval(ids)
    pp = N_PROMPT / (time.perf_counter() - t0)
    llm.reset()
    llm.eval([int(t) for t in _prompt_ids(N_SHORT, 2)])
    t0 = time.perf_counter()
    for _ in range(N_GEN):
        logits = np.asarray(llm.scores[llm.n_tokens - 1])
        tok = int(np.argmax(logits[: VOCAB - 1000]))
        llm.eval([tok])
    tg = N_GEN / (time.perf_counter() - t0)
    return {"load_s": load, "pp": pp, "tg": tg}


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM; ru_maxrss would carry a parent's peak across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_worker(engine: str, path: Path, threads: int, python: str) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import bench_phi2 as b; "
            f"r = b.worker_{engine}({str(path)!r}, {threads}); "
            "r['rss_mb'] = b.peak_rss_mb(); print('RESULT', json.dumps(r))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{engine} worker failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def read_bandwidth_gbs(threads: int) -> float:
    from tinygptv_native import _core
    return statistics.median(_core.read_bandwidth(1 << 30, threads) for _ in range(3))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="f16,q8_0,q4_0,q4_k_m")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-python", default=sys.executable,
                    help="a Python interpreter that has llama-cpp-python installed")
    ap.add_argument("--no-llama", action="store_true", help="measure tinygptv_native only")
    a = ap.parse_args()
    bw = read_bandwidth_gbs(a.threads)
    print(f"memory read bandwidth ({a.threads} threads): {bw:.1f} GB/s")
    with open("/proc/cpuinfo") as f:
        flags = next((l.split(":")[1].split() for l in f if l.startswith("flags")), [])
    simd = [x for x in flags if x.startswith(("avx2", "avx512f", "avx512_vnni", "avx512bw", "fma", "f16c", "avx_vnni"))]
    print("cpu flags:", " ".join(sorted(simd)))
    rows = []
    for typ in a.types.split(","):
        path = model_file(typ)
        weights_mb = path.stat().st_size / 1e6
        res = {"ours": [], "llama": []}
        for _ in range(a.runs):
            res["ours"].append(run_worker("ours", path, a.threads, sys.executable))
            if not a.no_llama:
                res["llama"].append(run_worker("llama", path, a.threads, a.llama_python))
        ceiling = bw * 1e3 / weights_mb  # tokens/s if every weight byte is read once per token
        med = {e: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for e, rs in res.items() if rs}
        rows.append((typ, weights_mb, ceiling, med))
    print()
    hdr = f"{'type':8s} {'file MB':>8s} | {'engine':9s} {'pp256 t/s':>10s} {'tg64 t/s':>9s} {'of ceiling':>10s} {'load s':>7s} {'peak RSS MB':>12s}"
    print(hdr)
    print("-" * len(hdr))
    for typ, mb, ceil, med in rows:
        for e in ("ours", "llama"):
            if e not in med:
                continue
            m = med[e]
            name = "tinygptv" if e == "ours" else "llama.cpp"
            print(f"{typ:8s} {mb:8.0f} | {name:9s} {m['pp']:10.2f} {m['tg']:9.2f} {m['tg'] / ceil:10.0%} "
                  f"{m['load_s']:7.2f} {m['rss_mb']:12.0f}")
        if "llama" in med:
            o, l = med["ours"], med["llama"]
            print(f"{typ:8s} {'':8s} | {'ratio':9s} {o['pp'] / l['pp']:9.2f}x {o['tg'] / l['tg']:8.2f}x {'':10s} "
                  f"{o['load_s'] / l['load_s']:6.2f}x {o['rss_mb'] / l['rss_mb']:11.2f}x")
        print(f"{typ:8s} {'':8s} | ceiling: {ceil:.1f} tokens/s at {bw:.1f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
