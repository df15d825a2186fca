"""TinyGPT-V (real size, random weights): image + question -> answer speed and memory, against PyTorch.

    python benchmarks/bench_tinygptv.py [--sizes 224,448] [--types f16,q8_0,q4_0,q4_k_m] [--vision both]
                                        [--runs 3] [--torch-runs 1] [--threads 2] [--no-torch] [--quick]

Builds a random-weight TinyGPT-V of the real dimensions (EVA ViT-g 39 blocks, Q-Former, projector,
Phi-2 with the TinyGPT-V norms; see benchmarks/tinygptv_random.py) as a `tinygptv` GGUF per image size
(224 px: 257 vision tokens, 448 px: 1025), cached under .bench/, in F16 and, through
tinygptv_native.quantize.quantize_file, in Q8_0, Q4_0 and Q4_K_M. quantize_file quantizes the vision
tower, Q-Former and projector too (Q4_K_M stores them as Q8_0); the "+vf16" variants keep those in
F16 (`tinygptv quantize IN OUT TYPE --vision-type f16`), so both are measured (--vision quant|f16|both).

Each run is its own process (peak RSS = its VmHWM). Per run: load (of a file in the page cache: the
worker reads it through first); the stage-3 prompt with a short question, the image spliced at
<ImageHere>: encode the image, prefill the spliced prompt, take the first token (time to first token =
the three together), then 64 greedy tokens; then encode again (warm); then a second question with the
system text kept in the KV cache (TTFT "cached": encode + the rest of the prompt + first token), as
Chat.reset() and Model.chat() reuse it. Figures are medians over --runs.
Every run starts once the machine has settled (settle(): >= 5 s pause and a >= 90% idle second).
The PyTorch reference (transformers' Blip2VisionModel, Blip2QFormerModel, two Linear, PhiForCausalLM
with qk_layernorm and the post-attention RMSNorm hook) runs the same steps on the weights of the F16
file in float32 and bfloat16, one process at a time, and each of our rows gets the ratio reference time
/ our time (higher is better for us).

The native encoder is one call; its split into ViT / Q-Former / projector is estimated from the
matrix products each part runs, timed one by one through the engine's own kernels
(_testing.PreparedWeight) on the same shapes and weight types: Q-Former and projector are their product
times, the ViT is the measured total minus those. The ViT's products are also reported as GFLOP/s
against measured peaks (float32: a large numpy/BLAS SGEMM; int8: torch._int_mm, oneDNN VNNI).
--quick: one type (q4_0, vision quantized), 224 px, one run, reference in bfloat16 only.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench"
sys.path.insert(0, str(ROOT / "benchmarks"))  # (not the checkout's root: the installed tinygptv_native is measured)

import tinygptv_random as R  # noqa: E402

N_GEN = 64
QUESTION = "What is happening in this picture? Describe it in detail."


# ------------------------------------------------------------------------------ files

def f16_file(size: int) -> Path:
    CACHE.mkdir(exist_ok=True)
    p = CACHE / f"tinygptv-random-{size}-f16.gguf"
    if not p.exists():
        print(f"building {p} ...", flush=True)
        R.build_f16(p, size)
    return p


def model_file(size: int, typ: str, vision_f16: bool) -> Path:
    """typ in f16, q8_0, q4_0, q4_k_m; vision_f16 keeps v.*, qf.*, mm.* in F16 (the F16 file's tensors)."""
    f16 = f16_file(size)
    if typ == "f16":
        return f16
    q = CACHE / f"tinygptv-random-{size}-{typ}.gguf"
    if not q.exists():
        print(f"quantizing {q} ...", flush=True)
        from tinygptv_native.quantize import quantize_file
        quantize_file(str(f16), str(q), typ)
    if not vision_f16:
        return q
    m = CACHE / f"tinygptv-random-{size}-{typ}-vf16.gguf"
    if not m.exists():
        print(f"quantizing {m} (vision, Q-Former, projector F16) ...", flush=True)
        from tinygptv_native.quantize import quantize_file
        quantize_file(str(f16), str(m), typ, vision_type="f16")
    return m


def tensor_types(path: Path) -> dict:
    from gguf import GGUFReader
    r = GGUFReader(str(path), "r")
    return {t.name: t.tensor_type.name for t in r.tensors}


# ------------------------------------------------------------------------------ workers (one process each)

def _pixels(size):
    import numpy as np
    return np.random.default_rng(7).standard_normal((3, size, size)).astype(np.float32)


def _prompt_parts(meta: dict):
    text = meta[R.schema.CHAT_SYSTEM] + meta[R.schema.CHAT_TEMPLATE].replace(R.schema.PROMPT_PLACEHOLDER, QUESTION)
    pre, post = text.split(R.schema.IMAGE_PLACEHOLDER)
    return pre, post


def _read_through(path: str) -> None:
    """Reads the file once so that it is in the page cache: load is timed on a cached file (the
    reference runs in between use ~15 GB and evict it otherwise)."""
    buf = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def worker_ours(path: str, size: int, threads: int) -> dict:
    import numpy as np
    from tinygptv_native import _core
    _read_through(path)
    t0 = time.perf_counter()
    m = _core.Model(path)
    tok = _core.tokenizer_from_model(m)
    load = time.perf_counter() - t0
    pre, post = _prompt_parts(m.metadata())
    ids_pre = np.asarray(tok.encode(pre, False), np.int32)
    ids_post = np.asarray(tok.encode(post, False), np.int32)
    n_img = m.n_image_tokens
    n_prompt = len(ids_pre) + n_img + len(ids_post)
    s = _core.Context(m, n_prompt + N_GEN + 8, 1, threads, True, image_cache_mb=0)  # time the encoder
    px = _pixels(size)

    t0 = time.perf_counter()
    emb = s.encode_image(px).numpy()
    t1 = time.perf_counter()
    x = np.concatenate([m.embed_tokens(ids_pre), emb, m.embed_tokens(ids_post)]).astype(np.float32)
    t2 = time.perf_counter()
    logits = s.eval_embeddings(0, x, False)
    tok_id = int(np.argmax(logits))
    t3 = time.perf_counter()
    for _ in range(N_GEN):
        logits = s.eval_tokens(0, np.array([tok_id], np.int32), False)
        tok_id = int(np.argmax(logits))
    t4 = time.perf_counter()
    t5 = time.perf_counter()
    s.encode_image(px)
    t6 = time.perf_counter()
    # A second question about a new image, the system text kept in the cache (as Chat.reset() and
    # Model.chat() reuse it): encode, prefill the rest, first token.
    s.truncate(0, len(ids_pre))
    t7 = time.perf_counter()
    emb = s.encode_image(px).numpy()
    x = np.concatenate([emb, m.embed_tokens(ids_post)]).astype(np.float32)
    int(np.argmax(s.eval_embeddings(0, x, False)))
    t8 = time.perf_counter()
    mem = _rss_parts()
    return {**mem, "load_s": load, "encode_ms": (t1 - t0) * 1e3, "encode_warm_ms": (t6 - t5) * 1e3,
            "prefill_tps": n_prompt / (t3 - t2), "ttft_s": t3 - t0, "gen_tps": N_GEN / (t4 - t3),
            "ttft_cached_s": t8 - t7, "n_prompt": n_prompt, "ids_pre": ids_pre.tolist(), "ids_post": ids_post.tolist()}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries the parent's peak into a
    forked child's ru_maxrss across exec, so a child of a large parent would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_parts() -> dict:
    """Resident memory now, split into anonymous (heap: repacked weights, scratch, KV cache) and
    file-backed (pages of the mapped GGUF), in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            for key in ("RssAnon", "RssFile"):
                if line.startswith(key + ":"):
                    out[key.lower() + "_mb"] = int(line.split()[1]) / 1024
    return out


def worker_torch(path: str, size: int, threads: int, dtype_name: str, ids_pre, ids_post, n_gen: int = N_GEN) -> dict:
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    t0 = time.perf_counter()
    ref = R.TorchReference(path, dtype, size)
    load = time.perf_counter() - t0
    px = _pixels(size)
    n_prompt = len(ids_pre) + R.N_QUERY + len(ids_post)
    with torch.inference_mode():
        emb_layer = ref.phi.model.embed_tokens
        t0 = time.perf_counter()
        img, parts = ref.image_embeddings(px)
        t1 = time.perf_counter()
        x = torch.cat([emb_layer(torch.tensor(ids_pre)), img, emb_layer(torch.tensor(ids_post))])
        t2 = time.perf_counter()
        # logits of the last position only, as transformers' generate() asks for on a prompt
        out = ref.phi(inputs_embeds=x[None], use_cache=True, logits_to_keep=1)
        tok_id = int(out.logits[0, -1].float().argmax())
        t3 = time.perf_counter()
        past = out.past_key_values
        for _ in range(n_gen):
            out = ref.phi(input_ids=torch.tensor([[tok_id]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok_id = int(out.logits[0, -1].float().argmax())
        t4 = time.perf_counter()
        _, warm = ref.image_embeddings(px)
        # the same second question as ours: the system text kept in the cache (cropped back to it)
        past.crop(len(ids_pre) - past.get_seq_length())  # negative: positions removed from the end
        t5 = time.perf_counter()
        img, _ = ref.image_embeddings(px)
        x = torch.cat([img, emb_layer(torch.tensor(ids_post))])
        out = ref.phi(inputs_embeds=x[None], past_key_values=past, use_cache=True, logits_to_keep=1)
        int(out.logits[0, -1].float().argmax())
        t6 = time.perf_counter()
    r = {"load_s": load, "encode_ms": (t1 - t0) * 1e3, "prefill_tps": n_prompt / (t3 - t2), "ttft_s": t3 - t0,
         "gen_tps": n_gen / (t4 - t3), "ttft_cached_s": t6 - t5, "n_prompt": n_prompt}
    r.update(parts)
    r["encode_warm_ms"] = sum(warm.values())
    r.update({k + "_warm": v for k, v in warm.items()})
    return r


def _cpu_idle_fraction(window_s: float = 1.0) -> float:
    """Share of the machine's CPU time spent idle over the next window_s seconds (/proc/stat)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    i0, t0 = read()
    time.sleep(window_s)
    i1, t1 = read()
    return (i1 - i0) / max(1, t1 - t0)


SETTLE_MIN_S, SETTLE_MAX_S = 5.0, 30.0


def settle() -> None:
    """Waits until the machine is quiet before a timed run: at least SETTLE_MIN_S seconds, then until a
    one-second window is >= 90% idle (at most SETTLE_MAX_S). The kernel reclaims the ~15 GB a float32
    reference run leaves behind for several seconds after it exits; a run started at once was measured
    ~8% slower (time to first token 1.99 s against 1.82-1.85 s before and 20 s after)."""
    if not sys.platform.startswith("linux"):
        time.sleep(SETTLE_MIN_S)
        return
    t_end = time.perf_counter() + SETTLE_MAX_S
    time.sleep(SETTLE_MIN_S - 1.0)
    while _cpu_idle_fraction() < 0.9 and time.perf_counter() < t_end:
        pass


def run_worker(call: str, label: str) -> dict:
    settle()
    t0 = time.perf_counter()
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
            f"import bench_tinygptv as b; r = b.{call}; r['rss_mb'] = b.peak_rss_mb(); print('RESULT', json.dumps(r))")
    # cwd: `python -c` puts it first on sys.path, and the checkout's root would shadow the installed package
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT / "benchmarks"))
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            print(f"  {label}: TTFT {r['ttft_s']:.2f} s, encode {r['encode_warm_ms']:.0f} ms, "
                  f"gen {r['gen_tps']:.2f} t/s, RSS {r['rss_mb'] / 1024:.2f} GB ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
            return r
    raise RuntimeError(f"worker failed: {call}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


# ------------------------------------------------------------------------------ per-operation profile

def _timeit(fn, reps=5):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def op_shapes(size: int):
    """(part, op, count, n rows, n_out, n_in) of every matrix product of the image path."""
    T = R.n_tokens(size)
    Q = R.N_QUERY
    n_cross = (R.Q_LAYERS + R.CROSS_FREQ - 1) // R.CROSS_FREQ
    return [("vit", "patch_embd", 1, T - 1, R.V_EMBD, 3 * R.PATCH ** 2),
            ("vit", "attn_qkv", R.V_LAYERS, T, 3 * R.V_EMBD, R.V_EMBD),
            ("vit", "attn_out", R.V_LAYERS, T, R.V_EMBD, R.V_EMBD),
            ("vit", "ffn_up", R.V_LAYERS, T, R.V_FF, R.V_EMBD),
            ("vit", "ffn_down", R.V_LAYERS, T, R.V_EMBD, R.V_FF),
            ("qformer", "self q,k,v,out", 4 * R.Q_LAYERS, Q, R.Q_EMBD, R.Q_EMBD),
            ("qformer", "cross q,out", 2 * n_cross, Q, R.Q_EMBD, R.Q_EMBD),
            ("qformer", "cross k,v", 2 * n_cross, T, R.Q_EMBD, R.V_EMBD),
            ("qformer", "ffn_up", R.Q_LAYERS, Q, R.Q_FF, R.Q_EMBD),
            ("qformer", "ffn_down", R.Q_LAYERS, Q, R.Q_EMBD, R.Q_FF),
            ("projector", "mm.0", 1, Q, R.PROJ_MID, R.Q_EMBD),
            ("projector", "mm.1", 1, Q, R.EMBD, R.PROJ_MID)]


def vit_attention_flop(size: int) -> float:
    T = R.n_tokens(size)
    return R.V_LAYERS * 4.0 * T * T * R.V_EMBD   # QK^T and AV


def profile_ops(size: int, types: dict, threads: int) -> list:
    """Time of each product through _testing.PreparedWeight with the file's weight types.
    types: the file's {tensor name: type}. Returns rows (part, op, type, count, ms each, GFLOP each)."""
    import numpy as np
    from tinygptv_native import _core
    from tinygptv_native._core import _testing
    name_of = {"patch_embd": "v.patch_embd.weight", "attn_qkv": "v.blk.0.attn_qkv.weight",
               "attn_out": "v.blk.0.attn_out.weight", "ffn_up": "v.blk.0.ffn_up.weight",
               "ffn_down": "v.blk.0.ffn_down.weight", "self q,k,v,out": "qf.blk.0.attn_q.weight",
               "cross q,out": "qf.blk.0.cross_q.weight", "cross k,v": "qf.blk.0.cross_k.weight",
               "mm.0": "mm.0.weight", "mm.1": "mm.1.weight"}
    rng = np.random.default_rng(0)
    rows = []
    for part, op, count, n, n_out, n_in in op_shapes(size):
        key = name_of.get(op) or ("qf.blk.0." + op + ".weight")
        ty = types[key]
        w = (rng.standard_normal((n_out, n_in)) * 0.02).astype(np.float32)
        pw = _testing.PreparedWeight(ty, _core.quantize(ty, w), n_out, n_in)
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        t = _timeit(lambda: pw.matmul(x, None, threads))
        rows.append((part, op, ty, count, t * 1e3, 2.0 * n * n_out * n_in / 1e9))
    return rows


def measured_peaks(threads: int) -> dict:
    """GFLOP/s of large products: numpy float32 (BLAS), torch int8 (_int_mm) and bfloat16, threads threads."""
    import numpy as np
    out = {}
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    out["f32 BLAS sgemm"] = 2.0 * n ** 3 / _timeit(lambda: a @ a) / 1e9
    try:
        import torch
        torch.set_num_threads(threads)
        ai = torch.randint(-100, 100, (n, n), dtype=torch.int8)
        out["int8 torch._int_mm"] = 2.0 * n ** 3 / _timeit(lambda: torch._int_mm(ai, ai)) / 1e9
        ab = torch.from_numpy(a).to(torch.bfloat16)
        out["bf16 torch.mm"] = 2.0 * n ** 3 / _timeit(lambda: ab @ ab) / 1e9
    except Exception as e:  # pragma: no cover - depends on the torch build
        out["torch"] = f"unavailable: {e}"
    return out


# ------------------------------------------------------------------------------ report

def machine() -> str:
    model = "?"
    flags = []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    simd = sorted(x for x in flags if x.startswith(("avx2", "avx512", "fma", "f16c", "avx_vnni", "amx")))
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    return (f"{model}, {os.cpu_count()} CPUs, {mem} RAM, {platform.system()} {platform.release()}\n"
            f"cpu flags: {' '.join(simd)}\nload average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def mem_available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 2**20
    return 0.0


def median_of(rs: list) -> dict:
    return {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="224,448")
    ap.add_argument("--types", default="f16,q8_0,q4_0,q4_k_m")
    ap.add_argument("--vision", choices=["quant", "f16", "both"], default="both",
                    help="for quantized types: vision tower/Q-Former/projector as quantize_file writes them "
                         "(quant), kept F16 (f16), or both")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--torch-runs", type=int, default=None, help="runs of each reference (default: --runs)")
    ap.add_argument("--torch-dtypes", default="float32,bfloat16")
    ap.add_argument("--ref-gen", type=int, default=N_GEN, help="tokens the reference generates (its rate is "
                    "per token; fewer tokens shorten a slow reference run)")
    ap.add_argument("--other-runs", type=int, default=None,
                    help="runs of the variants other than q4_0 at 224 px (default: --runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--quick", action="store_true", help="q4_0 at 224 px, one run, reference in bfloat16")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.types, a.vision, a.runs, a.torch_dtypes = "224", "q4_0", "quant", 1, "bfloat16"
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(a.threads))
    torch_runs = a.torch_runs or a.runs
    a.other_runs = a.other_runs or a.runs
    main_variants = {("q4_0", False)}
    sizes = [int(s) for s in a.sizes.split(",")]
    types = [t.strip().lower() for t in a.types.split(",")]
    variants = []
    for t in types:
        if t == "f16" or a.vision in ("quant", "both"):
            variants.append((t, False))
        if t != "f16" and a.vision in ("f16", "both"):
            variants.append((t, True))

    print("command: python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]))
    print(machine())
    from tinygptv_native._core import _testing
    print(f"threads {a.threads}, kernels {_testing.kernel_path()}, runs {a.runs} for q4_0, {a.other_runs} for the other files, "
          f"{torch_runs} for the reference; {N_GEN} generated tokens ({a.ref_gen} for the reference)")
    report = []
    for size in sizes:
        files = [(t, vf, model_file(size, t, vf)) for t, vf in variants]
        f16 = f16_file(size)
        res = {(t, vf): [] for t, vf, _ in files}
        ref_res = {}
        ids = None
        dtypes = [] if a.no_torch else a.torch_dtypes.split(",")
        # Interleaved: run i of every file, then run i of each reference, so that drift in the
        # machine's load hits every engine alike.
        for i in range(max(a.runs, a.other_runs, 0 if a.no_torch else torch_runs)):
            for t, vf, path in files:
                runs = a.runs if (t, vf) in main_variants else a.other_runs
                if i < runs:
                    res[(t, vf)].append(run_worker(f"worker_ours({str(path)!r}, {size}, {a.threads})",
                                                   f"ours {size} {t}{'+vf16' if vf else ''} run {i + 1}/{runs}"))
                    ids = ids or (res[(t, vf)][0]["ids_pre"], res[(t, vf)][0]["ids_post"])
            if i >= torch_runs:
                continue
            for dt in dtypes:
                if ids is None:
                    r = run_worker(f"worker_ours({str(f16)!r}, {size}, {a.threads})", f"ours {size} f16 (prompt)")
                    ids = (r["ids_pre"], r["ids_post"])
                need = 16.0 if dt == "float32" else 8.5
                if mem_available_gb() < need:
                    print(f"skipping the {dt} reference at {size} px: {mem_available_gb():.1f} GB available, "
                          f"about {need} GB needed", flush=True)
                    continue
                ref_res.setdefault(dt, []).append(run_worker(
                    f"worker_torch({str(f16)!r}, {size}, {a.threads}, {dt!r}, {ids[0]!r}, {ids[1]!r}, {a.ref_gen})",
                    f"torch {size} {dt} run {i + 1}/{torch_runs}"))
        ref = {dt: median_of(rs) for dt, rs in ref_res.items()}
        # Peaks and the per-operation profiles back to back, so that they see the same load.
        settle()
        peaks = measured_peaks(a.threads)
        print(f"load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; measured peaks: "
              + ", ".join(f"{k} {v:.0f} GFLOP/s" if isinstance(v, float) else f"{k} {v}" for k, v in peaks.items()),
              flush=True)
        ours = {}
        profiles = {}
        for t, vf, path in files:
            types_in_file = tensor_types(path)
            vtype = types_in_file["v.blk.0.ffn_up.weight"]
            if vtype not in profiles:
                profiles[vtype] = profile_ops(size, types_in_file, a.threads)
            ours[(t, vf)] = (path, median_of(res[(t, vf)]), profiles[vtype], vtype)
        report.append((size, ours, ref))
        print_size(size, ours, ref, peaks)
    return 0


RSS_GOAL_GB = {"q4_0": 3.0, "q8_0": 5.0, "f16": 8.5}


def goals(size, ours, f32):
    """The issue's goals for this machine, checked on what was measured."""
    lines = []
    for (t, vf), (path, m, ops, vtype) in ours.items():
        name = f"{t}{' vision F16' if vf else ''}"
        if t in RSS_GOAL_GB and not vf:
            g = RSS_GOAL_GB[t]
            lines.append(f"peak RSS {name} {m['rss_mb'] / 1024:.2f} GB < {g} GB: {'yes' if m['rss_mb'] / 1024 < g else 'NO'}")
        if t == "q4_0" and not vf:
            lines.append(f"load {name} {m['load_s']:.2f} s < 1 s (file in the page cache): "
                         f"{'yes' if m['load_s'] < 1 else 'NO'}")
            if f32 and size == 224:
                r = f32["ttft_s"] / m["ttft_s"]
                lines.append(f"time to first token {name} {r:.2f}x faster than torch float32 (>= 4x): "
                             f"{'yes' if r >= 4 else 'NO'}")
        if f32 and size == 224:
            r = f32["encode_warm_ms"] / m["encode_warm_ms"]
            lines.append(f"image encode {name} {r:.2f}x faster than torch float32 (>= 2x): {'yes' if r >= 2 else 'NO'}")
    for line in lines:
        print("goal: " + line)


def print_size(size, ours, ref, peaks):
    T = R.n_tokens(size)
    print(f"\n=== {size} px ({T} vision tokens) ===")
    hdr = (f"{'engine / file':26s} {'GB':>5s} {'load s':>7s} {'encode ms':>9s} {'ViT':>7s} {'QF':>6s} {'proj':>5s} "
           f"{'prefill t/s':>11s} {'TTFT s':>7s} {'cached':>6s} {'gen t/s':>7s} {'RSS GB':>7s} {'heap+file GB':>12s}")
    print(hdr)
    print("-" * len(hdr))
    f32 = ref.get("float32")
    for (t, vf), (path, m, ops, vtype) in ours.items():
        qf = sum(r[3] * r[4] for r in ops if r[0] == "qformer")
        pj = sum(r[3] * r[4] for r in ops if r[0] == "projector")
        enc = m["encode_warm_ms"]
        label = f"ours {t}" + (" (vision F16)" if vf else f" (vision {vtype})" if t != "f16" else "")
        print(f"{label:26s} {path.stat().st_size / 1e9:5.2f} {m['load_s']:7.2f} {enc:9.0f} {enc - qf - pj:7.0f} "
              f"{qf:6.0f} {pj:5.0f} {m['prefill_tps']:11.1f} {m['ttft_s']:7.2f} {m['ttft_cached_s']:6.2f} "
              f"{m['gen_tps']:7.2f} {m['rss_mb'] / 1024:7.2f} "
              f"{m.get('rssanon_mb', 0) / 1024:5.2f}+{m.get('rssfile_mb', 0) / 1024:<5.2f}")
        if f32:
            print(f"{'  ratio vs torch float32':26s} {'':5s} {f32['load_s'] / m['load_s']:6.1f}x "
                  f"{f32['encode_warm_ms'] / enc:8.2f}x {f32['vit_ms_warm'] / (enc - qf - pj):6.2f}x "
                  f"{f32['qformer_ms_warm'] / qf:5.1f}x {f32['projector_ms_warm'] / pj:4.1f}x "
                  f"{m['prefill_tps'] / f32['prefill_tps']:10.2f}x {f32['ttft_s'] / m['ttft_s']:6.2f}x "
                  f"{f32['ttft_cached_s'] / m['ttft_cached_s']:5.2f}x "
                  f"{m['gen_tps'] / f32['gen_tps']:6.2f}x {f32['rss_mb'] / m['rss_mb']:6.2f}x")
    for dt, m in ref.items():
        print(f"{'torch ' + dt:26s} {'':5s} {m['load_s']:7.2f} {m['encode_warm_ms']:9.0f} {m['vit_ms_warm']:7.0f} "
              f"{m['qformer_ms_warm']:6.0f} {m['projector_ms_warm']:5.0f} {m['prefill_tps']:11.1f} "
              f"{m['ttft_s']:7.2f} {m['ttft_cached_s']:6.2f} {m['gen_tps']:7.2f} {m['rss_mb'] / 1024:7.2f}")
    goals(size, ours, f32)
    print("TTFT = first question after load (encode + whole prompt); cached = a second question about a new image "
          "with the system text kept in the KV cache (as Chat.reset() and Model.chat() reuse it): encode + the rest "
          "of the prompt, both engines")
    print("encode = warm second call (the first, cold call is inside TTFT); ViT = encode - QF - proj for ours, "
          "whose QF/proj are their matrix products timed alone; ratios: reference / ours for times, ours / reference "
          "for rates and memory saved")
    # per-operation share and GFLOP/s of the ViT (one profile per vision weight type)
    seen = set()
    for (t, vf), (path, m, ops, vtype) in ours.items():
        if vtype in seen:
            continue
        seen.add(vtype)
        enc = m["encode_warm_ms"]
        qf = sum(r[3] * r[4] for r in ops if r[0] != "vit")
        vit = enc - qf
        print(f"\nViT per operation, weights {vtype} ({t}{' vision F16' if vf else ''}): ViT {vit:.0f} ms")
        print(f"  {'op':16s} {'count':>5s} {'ms each':>8s} {'ms total':>8s} {'share':>6s} {'GFLOP/s':>8s}")
        mm_ms = mm_gf = 0.0
        for part, op, ty, count, ms, gf in ops:
            if part != "vit":
                continue
            mm_ms += count * ms
            mm_gf += count * gf
            print(f"  {op:16s} {count:5d} {ms:8.2f} {count * ms:8.0f} {count * ms / vit:6.1%} {gf / ms * 1e3:8.1f}")
        rest = vit - mm_ms
        att = vit_attention_flop(size) / 1e9
        print(f"  {'other (attention,':16s} {'':5s} {'':8s} {rest:8.0f} {rest / vit:6.1%} "
              f"{att / rest * 1e3 if rest > 0 else float('nan'):8.1f}  ({att:.0f} GFLOP of attention)")
        print(f"  {' norms, GELU)':16s}")
        total_gf = mm_gf + att
        best = max(v for v in peaks.values() if isinstance(v, float)) if peaks else float("nan")
        peak = peaks.get("int8 torch._int_mm" if vtype.startswith("Q") else "f32 BLAS sgemm", best)
        print(f"  ViT: {total_gf:.0f} GFLOP in {vit:.0f} ms = {total_gf / vit * 1e3:.1f} GFLOP/s; products alone "
              f"{mm_gf / mm_ms * 1e3:.1f} GFLOP/s = {mm_gf / mm_ms * 1e3 / peak:.0%} of the measured "
              f"{'int8' if vtype.startswith('Q') else 'float32'} peak {peak:.0f} GFLOP/s")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
