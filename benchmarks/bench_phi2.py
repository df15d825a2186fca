"""Phi-2 (real size, random weights) speed: tinygptv_native against llama.cpp on the same GGUF files.

    python benchmarks/bench_phi2.py [--types f16,q8_0,q4_0,q4_k_m] [--runs 3] [--threads 2]
    python benchmarks/bench_phi2.py --load [--types ...] [--runs 5]

Builds a random-weight Phi-2 of the real dimensions (2560 wide, 32 layers, 51200 vocabulary,
2.78 B parameters) as a llama.cpp-layout `phi2` GGUF, cached under .bench/ (about 11 GB for all
four types), then measures for each type, interleaving the two engines run by run:
prompt processing of 256 tokens (tokens/s), generation of 64 tokens after a short prompt
(tokens/s), load time and peak RSS, each engine in its own process. llama.cpp is driven through
the `llama-cpp-python` package (pip install llama-cpp-python; it builds llama.cpp from source),
found in the current environment or in the interpreter given by --llama-python.
It also prints the memory-bandwidth ceiling for generation (weight bytes per token over the
measured read bandwidth) and the fraction of it each engine reaches.

--load measures only the start: the load (the model and a context of LOAD_CTX tokens, what
llama.cpp's Llama() does), the load plus the first token (an 8-token prompt evaluated to its logits),
and the peak RSS of the process against file + KV cache + 300 MB. Run it on a warm page cache (the
first run of each type warms it; runs alternate between the engines).
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
# The dimensions build_f16 uses unless told others (bench_batch.py --small makes a small model).
FULL = {"vocab": VOCAB, "embd": EMBD, "ff": FF, "layers": LAYERS, "heads": HEADS, "ctx": CTX}


def gpt2_byte_tokens() -> list:
    """The 256 byte tokens of a GPT-2 vocabulary, in byte order: printable bytes as themselves, the
    others as the characters from U+0100 on (GPT-2's bytes_to_unicode)."""
    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    out, extra = [], 0
    for byte in range(256):
        if byte in printable:
            out.append(chr(byte))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def build_f16(path: Path, dims: dict | None = None) -> None:
    import numpy as np
    import gguf
    d = {**FULL, **(dims or {})}
    VOCAB, EMBD, FF, LAYERS, HEADS, CTX = (d[k] for k in ("vocab", "embd", "ff", "layers", "heads", "ctx"))
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
    # A byte-level vocabulary of the right size (llama.cpp needs one to load the file; the 256 byte
    # tokens spelt as GPT-2 spells them, as tinygptv_native's tokenizer requires of a gpt2 vocabulary).
    toks = gpt2_byte_tokens()
    toks += ["to", "tok"]  # what the two merges make
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


def model_file(typ: str, cache: Path = CACHE, dims: dict | None = None, name: str = "phi2-random") -> Path:
    """The cached random Phi-2 of type `typ` (built from its F16 file, itself built first when missing)."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    f16 = cache / f"{name}-f16.gguf"
    if not f16.exists():
        print(f"building {f16} ...", flush=True)
        build_f16(f16, dims)
    if typ == "f16":
        return f16
    out = cache / f"{name}-{typ}.gguf"
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


def worker_llama(path: str, threads: int, no_amx: bool = False) -> dict:
    import numpy as np
    if no_amx:
        llama_without_amx()
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


LOAD_CTX = 512


def kv_cache_mb(n_ctx: int = LOAD_CTX) -> float:
    """The F16 KV cache of Phi-2 for n_ctx tokens, both engines' layout (K and V, every layer)."""
    return 2 * LAYERS * EMBD * n_ctx * 2 / 1e6


def worker_ours_load(path: str, threads: int) -> dict:
    from tinygptv_native import _core
    t0 = time.perf_counter()
    m = _core.Model(path, threads)
    s = _core.Context(m, LOAD_CTX, 1, threads, True)
    load = time.perf_counter() - t0
    s.eval_tokens(0, _prompt_ids(N_SHORT, 2), False)
    return {"load_s": load, "first_s": time.perf_counter() - t0}


def worker_llama_load(path: str, threads: int, no_amx: bool = False) -> dict:
    if no_amx:
        llama_without_amx()
    from llama_cpp import Llama
    t0 = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=LOAD_CTX, n_threads=threads, verbose=False)
    load = time.perf_counter() - t0
    llm.eval([int(t) for t in _prompt_ids(N_SHORT, 2)])
    return {"load_s": load, "first_s": time.perf_counter() - t0}


def load_main(a, types: list) -> int:
    """The --load table: load time, load + first token and peak RSS of both engines, per type."""
    rows = []
    for typ in types:
        path = model_file(typ)
        no_amx = not a.no_llama and llama_amx_crashes(path, a.threads, a.llama_python)
        if no_amx:
            print(f"{typ}: llama.cpp's AMX kernels die of SIGILL here: measuring llama.cpp without them", flush=True)
        engines = [("ours", sys.executable)] + ([] if a.no_llama else [("llama", a.llama_python)])
        for e, py in engines:  # warms the page cache (not counted)
            run_worker(e + "_load", path, a.threads, py, no_amx and e == "llama")
        res = {e: [] for e, _ in engines}
        for _ in range(a.runs):
            for e, py in engines:
                res[e].append(run_worker(e + "_load", path, a.threads, py, no_amx and e == "llama"))
        med = {e: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for e, rs in res.items()}
        rows.append((typ, path.stat().st_size / 1e6, med))
    print()
    hdr = (f"{'type':8s} {'file MB':>8s} | {'engine':9s} {'load s':>7s} {'load+1st tok s':>15s} "
           f"{'peak RSS MB':>12s} {'RSS budget MB':>14s}")
    print(hdr)
    print("-" * len(hdr))
    for typ, mb, med in rows:
        budget = mb + kv_cache_mb() + 300
        for e, m in med.items():
            name = "tinygptv" if e == "ours" else "llama.cpp"
            print(f"{typ:8s} {mb:8.0f} | {name:9s} {m['load_s']:7.2f} {m['first_s']:15.2f} {m['rss_mb']:12.0f} "
                  f"{budget:14.0f}")
        if "llama" in med:
            o, l = med["ours"], med["llama"]
            print(f"{typ:8s} {'':8s} | {'ratio':9s} {o['load_s'] / l['load_s']:6.2f}x "
                  f"{o['first_s'] / l['first_s']:14.2f}x {o['rss_mb'] / l['rss_mb']:11.2f}x")
    print(f"(median of {a.runs} runs, {a.threads} threads, context of {LOAD_CTX} tokens, warm page cache)")
    return 0


# ---- llama.cpp's AMX kernels ----------------------------------------------------------------------
# A llama.cpp built for a CPU with AMX (llama-cpp-python builds with GGML_NATIVE) routes Q4_0/Q8_0/
# K-quant products of more than one row to its AMX kernels, which on some Linux machines die of SIGILL
# at the first tile instruction in a worker thread (llama.cpp PR #26954: the tile-data permission and
# the tile configuration are not in place in the threads that compute). llama_amx_crashes() tries
# it in a child process; llama_without_amx() then keeps AMX from llama.cpp in this process: its
# ggml_amx_init() asks the kernel for the tile-data permission (arch_prctl ARCH_REQ_XCOMP_PERM), and a
# seccomp filter that refuses that one request makes it fall back to its other kernels (the AVX2/AVX-512
# repacked ones included), as a build without AMX would.
def llama_amx_crashes(path: Path, threads: int, python: str) -> bool:
    """Whether llama.cpp dies of SIGILL evaluating two tokens of `path` (its AMX path, see above)."""
    code = ("from llama_cpp import Llama; "
            f"Llama(model_path={str(path)!r}, n_ctx=64, n_threads={threads}, verbose=False).eval([300, 301])")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return out.returncode in (-4, 132)


def llama_without_amx() -> None:
    """Refuse this process (threads made later included) the AMX tile-data permission (Linux x86-64)."""
    import ctypes
    import struct
    libc = ctypes.CDLL(None, use_errno=True)

    def ins(code, jt, jf, k):  # struct sock_filter
        return struct.pack("HBBI", code, jt, jf, k)

    LD, JEQ, RET = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    prog = b"".join([
        ins(LD, 0, 0, 4), ins(JEQ, 0, 5, 0xC000003E),  # seccomp_data.arch: x86-64, else allow
        ins(LD, 0, 0, 0), ins(JEQ, 0, 3, 158),         # .nr: arch_prctl
        ins(LD, 0, 0, 16), ins(JEQ, 0, 1, 0x1023),     # .args[0]: ARCH_REQ_XCOMP_PERM
        ins(RET, 0, 0, 0x00050000 | 1),                # SECCOMP_RET_ERRNO | EPERM
        ins(RET, 0, 0, 0x7FFF0000),                    # SECCOMP_RET_ALLOW
    ])
    buf = ctypes.create_string_buffer(prog, len(prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "could not install the seccomp filter that keeps AMX from llama.cpp")


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM; ru_maxrss would carry a parent's peak across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_worker(engine: str, path: Path, threads: int, python: str, no_amx: bool = False) -> dict:
    extra = ", no_amx=True" if no_amx else ""
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import bench_phi2 as b; "
            f"r = b.worker_{engine}({str(path)!r}, {threads}{extra}); "
            "r['rss_mb'] = b.peak_rss_mb(); print('RESULT', json.dumps(r))")
    # cwd: `python -c` puts it first on sys.path, and the checkout's root would shadow the installed package
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=str(ROOT / "benchmarks"))
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{engine} worker failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def read_bandwidth_gbs(threads: int) -> float:
    from tinygptv_native._core import _testing
    return statistics.median(_testing.read_bandwidth(1 << 30, threads) for _ in range(3))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="f16,q8_0,q4_0,q4_k_m")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-python", default=sys.executable,
                    help="a Python interpreter that has llama-cpp-python installed")
    ap.add_argument("--no-llama", action="store_true", help="measure tinygptv_native only")
    ap.add_argument("--load", action="store_true", help="measure only the load and the first token (see above)")
    a = ap.parse_args()
    if a.load:
        return load_main(a, a.types.split(","))
    bw = read_bandwidth_gbs(a.threads)
    print(f"memory read bandwidth ({a.threads} threads): {bw:.1f} GB/s")
    with open("/proc/cpuinfo") as f:
        flags = next((l.split(":")[1].split() for l in f if l.startswith("flags")), [])
    simd = [x for x in flags if x.startswith(("avx2", "avx512f", "avx512_vnni", "avx512bw", "fma", "f16c", "avx_vnni"))]
    print("cpu flags:", " ".join(sorted(simd)))
    from tinygptv_native._core import _testing
    print("our kernels:", _testing.kernel_path(), "(TINYGPTV_ISA, TINYGPTV_AVX_VNNI and TINYGPTV_AMX choose others)")
    rows = []
    for typ in a.types.split(","):
        path = model_file(typ)
        no_amx = not a.no_llama and llama_amx_crashes(path, a.threads, a.llama_python)
        if no_amx:
            print(f"{typ}: llama.cpp's AMX kernels die of SIGILL here: measuring llama.cpp without them", flush=True)
        weights_mb = path.stat().st_size / 1e6
        res = {"ours": [], "llama": []}
        for _ in range(a.runs):
            res["ours"].append(run_worker("ours", path, a.threads, sys.executable))
            if not a.no_llama:
                res["llama"].append(run_worker("llama", path, a.threads, a.llama_python, no_amx))
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
