"""Batched generation: tokens/s of 1, 2, 4, 8 sequences decoding at once, tinygptv_native against llama.cpp.

    python benchmarks/bench_batch.py [--types q4_0,q8_0] [--seqs 1,2,4,8] [--n-gen 64] [--runs 3] [--threads 2]
    python benchmarks/bench_batch.py --small          # a small random Phi-2: checks that the script works

A random-weight Phi-2 of the real size (the GGUF files of bench_phi2.py, shared through the same cache
directory). For each type and each k, k sequences each get their own 64-token random prompt and
generate --n-gen tokens greedily (no end token), all decoded together:
- ours: the native Generator (`_core.Context` of k sequences, `Generator.submit` per sequence, then
  `Generator.step()` until all finish): one decode call per step for all sequences, no Python threads.
- llama.cpp (llama-cpp-python's low-level API, as llama.cpp's examples/batched): a context of
  n_seq_max = k, all k prompts in one llama_batch (logits at each prompt's last row), then one batch
  of k rows per step, greedy argmax of each row's logits.
- py threads: k Python threads each calling `tinygptv_native.Model.generate` on one shared Model
  (n_parallel 8), which its engine thread decodes together; wall time from start to all done, prompts
  included.
Aggregate tokens/s = tokens generated after every sequence has its first token / wall time of those
steps (the prompt step excluded); step ms = median wall time of one decode step of all k sequences
(sampling included). Each engine runs in its own long-lived process (models loaded once); the
engines are interleaved (ours then llama.cpp, k by k, --runs times) because this machine's memory
bandwidth varies, and medians are reported (ratios: median of the per-run ratios).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import bench_phi2 as b  # noqa: E402

N_PROMPT = 64
SMALL = {"embd": 256, "ff": 1024, "layers": 4, "heads": 8}  # vocabulary as the real one
GOALS = ((4, "x1", 3.0), (8, "x1", 5.0), (4, "llama", 1.5))


def prompt(run: int, tag: int, i: int) -> list:
    """Sequence i's prompt in run `run`: the same for every k with tag 0 (so sequence 0 alone and with
    others can be compared); other tags give prompts no context holds a prefix of."""
    return [int(t) for t in b._prompt_ids(N_PROMPT, 1_000_003 * run + 1009 * tag + i + 17)]


# ---- workers: one engine per process, a model loaded once, requests on stdin ----------------
class OursWorker:
    def __init__(self, path: str, threads: int, n_parallel: int, n_ctx: int, **_):
        import tinygptv_native
        from tinygptv_native import _core
        self._core = _core
        self.threads = threads
        t0 = time.perf_counter()
        # One weight set for both APIs: the high-level Model's native model is _core.Model(path, threads).
        self.hl = tinygptv_native.Model(path, n_threads=threads, n_parallel=n_parallel, n_ctx=n_ctx)
        self.load_s = time.perf_counter() - t0
        self.m = self.hl._model
        self.tok = _core.tokenizer_from_model(self.m)

    def run(self, k: int, n_gen: int, prompts: list) -> dict:
        ctx = self._core.Context(self.m, N_PROMPT + n_gen + 8, k, self.threads, True)
        gen = self._core.Generator(ctx, self.tok, 512)
        index = {}
        for i, p in enumerate(prompts):
            seq, cached, _ticket = gen.submit([p], n_gen, 0.0, 40, 1.0, 0.0, 1.0, 0, 0,
                                     stop_ids=[], stop_strings=[], use_eos=False)
            if cached:
                raise RuntimeError(f"sequence {seq}: {cached} prompt positions cached in a fresh context")
            index[seq] = i
        toks = [[] for _ in prompts]
        started, done, steps = set(), set(), []
        n_dec, t_dec, n_steps_prompt = 0, None, 0
        t0 = time.perf_counter()
        while len(done) < k:
            ts = time.perf_counter()
            events = gen.step()
            te = time.perf_counter()
            if not events:
                raise RuntimeError(f"Generator.step() returned no events with {k - len(done)} sequences unfinished")
            for seq, tok, _text, finished, _reason, *_ in events:
                i = index[seq]
                if tok >= 0:
                    toks[i].append(tok)
                    started.add(i)
                    if t_dec is not None:
                        n_dec += 1
                if finished:
                    done.add(i)
            if t_dec is None:
                n_steps_prompt += 1
                if len(started) == k:
                    t_dec = te
            else:
                steps.append(te - ts)
        t_end = time.perf_counter()
        if any(len(t) != n_gen for t in toks):
            raise RuntimeError(f"expected {n_gen} tokens per sequence, got {[len(t) for t in toks]}")
        return {"agg": n_dec / (t_end - t_dec), "step_ms": statistics.median(steps) * 1e3,
                "prompt_s": t_dec - t0, "prompt_steps": n_steps_prompt, "decode_steps": len(steps),
                "tokens0": toks[0]}

    def run_py(self, k: int, n_gen: int, prompts: list) -> dict:
        out = [None] * k
        errors = []
        go = threading.Barrier(k + 1)

        def one(i):
            try:
                go.wait()
                self.hl.generate(prompts[i], max_new_tokens=n_gen, temperature=0)
                out[i] = self.hl.last_result  # per thread
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        ths = [threading.Thread(target=one, args=(i,)) for i in range(k)]
        for t in ths:
            t.start()
        go.wait()
        t0 = time.perf_counter()
        for t in ths:
            t.join()
        wall = time.perf_counter() - t0
        if errors:
            raise errors[0]
        n = sum(r.completion_tokens for r in out)
        # The generating phase, as the batched rows measure it: from the first answer token of any thread
        # to the last one (times from each request's submission, which the barrier makes common).
        first = min(r.prompt_ms for r in out) / 1e3
        last = max(r.prompt_ms + r.generation_ms for r in out) / 1e3
        return {"agg": n / wall, "gen_agg": n / (last - first) if last > first else float("nan"), "tokens": n,
                "cached": sum(r.cached_tokens for r in out), "tokens0": list(out[0].token_ids)}


class LlamaWorker:
    def __init__(self, path: str, threads: int, no_amx: bool = False, **_):
        if no_amx:
            b.llama_without_amx()
        import llama_cpp as L
        self.L = L
        self.threads = threads
        # llama.cpp logs to stderr (a file here); keep it quiet all the same.
        self._log_cb = L.llama_log_callback(lambda level, text, user: None)
        L.llama_log_set(self._log_cb, None)
        L.llama_backend_init()
        t0 = time.perf_counter()
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.load_s = time.perf_counter() - t0
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))

    def _argmax(self, ctx, i: int) -> int:
        import numpy as np
        ptr = self.L.llama_get_logits_ith(ctx, i)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))

    def run(self, k: int, n_gen: int, prompts: list) -> dict:
        L = self.L
        cp = L.llama_context_default_params()
        cp.n_ctx = k * (N_PROMPT + n_gen)
        cp.n_batch = cp.n_ubatch = max(N_PROMPT * k, k)
        cp.n_seq_max = k
        cp.n_threads = cp.n_threads_batch = self.threads
        ctx = L.llama_init_from_model(self.model, cp)
        if not ctx:
            raise RuntimeError(f"llama_init_from_model failed (n_ctx {cp.n_ctx}, n_seq_max {k})")
        batch = L.llama_batch_init(N_PROMPT * k, 0, k)
        try:
            def fill(rows):  # rows: (token, pos, seq, logits)
                for j, (t, pos, s, lg) in enumerate(rows):
                    batch.token[j] = t
                    batch.pos[j] = pos
                    batch.n_seq_id[j] = 1
                    batch.seq_id[j][0] = s
                    batch.logits[j] = 1 if lg else 0
                batch.n_tokens = len(rows)

            def decode():
                rc = L.llama_decode(ctx, batch)
                if rc != 0:
                    raise RuntimeError(f"llama_decode returned {rc}")

            t0 = time.perf_counter()
            rows = [(t, pos, s, pos == N_PROMPT - 1) for s, p in enumerate(prompts) for pos, t in enumerate(p)]
            fill(rows)
            decode()
            nxt = [self._argmax(ctx, s * N_PROMPT + N_PROMPT - 1) for s in range(k)]
            toks = [[t] for t in nxt]
            t_dec = time.perf_counter()
            steps = []
            for step in range(n_gen - 1):
                ts = time.perf_counter()
                fill([(nxt[s], N_PROMPT + step, s, True) for s in range(k)])
                decode()
                nxt = [self._argmax(ctx, s) for s in range(k)]
                steps.append(time.perf_counter() - ts)
                for s in range(k):
                    toks[s].append(nxt[s])
            t_end = time.perf_counter()
        finally:
            L.llama_batch_free(batch)
            L.llama_free(ctx)
        return {"agg": k * (n_gen - 1) / (t_end - t_dec), "step_ms": statistics.median(steps) * 1e3,
                "prompt_s": t_dec - t0, "decode_steps": len(steps), "tokens0": toks[0]}


def serve(engine: str, path: str, threads: int, n_parallel: int, n_ctx: int, no_amx: bool = False) -> None:
    """The worker's loop: one JSON request a line on stdin, one 'RESULT <json>' (or 'ERROR') line back."""
    w = {"ours": OursWorker, "llama": LlamaWorker}[engine](path, threads, n_parallel=n_parallel, n_ctx=n_ctx,
                                                            no_amx=no_amx)
    print("RESULT", json.dumps({"load_s": w.load_s}), flush=True)
    for line in iter(sys.stdin.readline, ""):
        req = json.loads(line)
        if req["op"] == "quit":
            print("RESULT", json.dumps({"rss_mb": b.peak_rss_mb()}), flush=True)
            return
        try:
            r = getattr(w, req["op"])(req["k"], req["n_gen"], req["prompts"])
            print("RESULT", json.dumps(r), flush=True)
        except Exception:  # noqa: BLE001 - the parent reports it
            print("ERROR", json.dumps(traceback.format_exc()), flush=True)


class Worker:
    """The parent's handle on a worker process."""

    def __init__(self, engine: str, path: Path, threads: int, python: str, n_parallel: int, n_ctx: int,
                 no_amx: bool = False):
        self.engine = engine
        self.err = tempfile.TemporaryFile(mode="w+")
        code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_batch as bb; "
                f"bb.serve({engine!r}, {str(path)!r}, {threads}, {n_parallel}, {n_ctx}, {no_amx})")
        self.p = subprocess.Popen([python, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.err, text=True, bufsize=1)
        self.info = self._reply()

    def _reply(self) -> dict:
        for line in iter(self.p.stdout.readline, ""):
            if line.startswith("RESULT "):
                return json.loads(line[7:])
            if line.startswith("ERROR "):
                raise RuntimeError(f"{self.engine} worker failed:\n{json.loads(line[6:])}")
        self.p.wait()
        self.err.seek(0)
        raise RuntimeError(f"{self.engine} worker exited ({self.p.returncode}):\n{self.err.read()[-4000:]}")

    def ask(self, op: str, k: int, n_gen: int, prompts: list) -> dict:
        self.p.stdin.write(json.dumps({"op": op, "k": k, "n_gen": n_gen, "prompts": prompts}) + "\n")
        self.p.stdin.flush()
        return self._reply()

    def close(self) -> dict:
        self.p.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.p.stdin.flush()
        r = self._reply()
        self.p.wait()
        self.err.close()
        return r


# ---- the parent -------------------------------------------------------------------------------
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec, width):
    return f"{x:{width}{spec}}" if x is not None else f"{'-':>{width}s}"


def bench_type(typ: str, path: Path, a, seqs: list, py_seqs: list) -> dict:
    n_ctx = N_PROMPT + a.n_gen + 8
    ours = Worker("ours", path, a.threads, sys.executable, max(8, max(py_seqs, default=1)), n_ctx)
    llama = None
    if not a.no_llama:
        no_amx = a.llama_amx == "off" or (a.llama_amx == "auto"
                                          and b.llama_amx_crashes(path, a.threads, a.llama_python))
        if no_amx:
            print(f"{typ}: llama.cpp without its AMX kernels" + (" (they die of SIGILL here, see bench_phi2.py)"
                                                              if a.llama_amx == "auto" else ""), flush=True)
        llama = Worker("llama", path, a.threads, a.llama_python, 1, n_ctx, no_amx)
    print(f"{typ}: loaded {path.name} ({path.stat().st_size / 1e6:.0f} MB) in {ours.info['load_s']:.1f} s (ours)"
          + (f", {llama.info['load_s']:.1f} s (llama.cpp)" if llama else ""), flush=True)
    # Warm-up (page faults of llama.cpp's mapping, first-touch of buffers): not measured.
    ours.ask("run", 1, 4, [prompt(99, 0, 0)])
    if py_seqs:  # (also creates the high-level Model's engine context)
        ours.ask("run_py", 1, 4, [prompt(98, 0, 0)])
    if llama:
        llama.ask("run", 1, 4, [prompt(99, 0, 0)])
    res = {"ours": {k: [] for k in seqs}, "llama": {k: [] for k in seqs}, "py": {k: [] for k in py_seqs}}
    for run in range(a.runs):
        for k in seqs:
            ps = [prompt(run, 0, i) for i in range(k)]
            res["ours"][k].append(ours.ask("run", k, a.n_gen, ps))
            if llama:
                res["llama"][k].append(llama.ask("run", k, a.n_gen, ps))
            print(f"  run {run + 1}/{a.runs} k={k}: ours {res['ours'][k][-1]['agg']:.2f} t/s"
                  + (f", llama.cpp {res['llama'][k][-1]['agg']:.2f} t/s" if llama else ""), flush=True)
        for k in py_seqs:
            r = ours.ask("run_py", k, a.n_gen, [prompt(run, 100 + k, i) for i in range(k)])
            res["py"][k].append(r)
            print(f"  run {run + 1}/{a.runs} k={k}: py threads {r['agg']:.2f} t/s", flush=True)
    res["rss_ours"] = ours.close()["rss_mb"]
    res["rss_llama"] = llama.close()["rss_mb"] if llama else None
    return res


def report(typ: str, path: Path, res: dict, a, seqs: list, py_seqs: list, bw: float) -> list:
    o, l = res["ours"], res["llama"]
    k1 = seqs[0]
    has_llama = any(l[k] for k in seqs)
    rows = {}
    for k in seqs:
        runs = range(len(o[k]))
        rows[k] = {
            "agg": med(r["agg"] for r in o[k]),
            "step": med(r["step_ms"] for r in o[k]),
            "speedup": med(o[k][i]["agg"] / o[k1][i]["agg"] for i in runs) if k1 == 1 else None,
            "l_agg": med(r["agg"] for r in l[k]) if has_llama else None,
            "l_step": med(r["step_ms"] for r in l[k]) if has_llama else None,
            "ratio": med(o[k][i]["agg"] / l[k][i]["agg"] for i in runs) if has_llama else None,
        }
    mb = path.stat().st_size / 1e6
    print()
    print(f"== {typ}: {path.name}, {mb:.0f} MB, {a.threads} threads, prompts {N_PROMPT} tokens, "
          f"{a.n_gen} generated per sequence, {a.runs} runs (medians)")
    hdr = (f"{'k':>3s} | {'ours agg t/s':>12s} {'ours step ms':>12s} {'vs k=1':>7s} | "
           f"{'llama agg t/s':>13s} {'llama step ms':>13s} | {'ours/llama':>10s}")
    print(hdr)
    print("-" * len(hdr))
    for k in seqs:
        r = rows[k]
        print(f"{k:3d} | {fmt(r['agg'], '.2f', 12)} {fmt(r['step'], '.1f', 12)} "
              f"{fmt(r['speedup'], '.2f', 6)}{'x' if r['speedup'] is not None else ' '} | "
              f"{fmt(r['l_agg'], '.2f', 13)} {fmt(r['l_step'], '.1f', 13)} | "
              f"{fmt(r['ratio'], '.2f', 9)}{'x' if r['ratio'] is not None else ' '}")
    if py_seqs:
        py = res["py"]
        print("py threads (k threads calling Model.generate on one Model, n_parallel 8): "
              + ", ".join(f"k={k} {med(r['gen_agg'] for r in py[k]):.2f} t/s generating, "
                          f"{med(r['agg'] for r in py[k]):.2f} t/s over the wall time incl. prompts" for k in py_seqs))
    if bw and not a.small:  # (the small model's weights stay in the caches)
        print(f"one-sequence ceiling (file bytes read once per step): {bw * 1e3 / mb:.1f} t/s at {bw:.1f} GB/s")
    print(f"peak RSS: ours {res['rss_ours']:.0f} MB" +
          (f", llama.cpp {res['rss_llama']:.0f} MB" if res['rss_llama'] is not None else ""))
    # A sequence's greedy tokens do not depend on what it is decoded with.
    kb = 4 if 4 in seqs else seqs[-1]
    if 1 in seqs and kb != 1:
        same = all(o[1][i]["tokens0"] == o[kb][i]["tokens0"] for i in range(len(o[1])))
        print(f"batched == alone: {'yes' if same else 'no'} (ours, tokens of sequence 0 at k=1 and k={kb}, every run)")
        if has_llama:
            same_l = all(l[1][i]["tokens0"] == l[kb][i]["tokens0"] for i in range(len(l[1])))
            print(f"  llama.cpp, the same comparison: {'yes' if same_l else 'no'}")
    goals = []
    for k, against, target in GOALS:
        name = (f"ours at {k} sequences >= {target:g}x our single-sequence rate" if against == "x1"
                else f"ours at {k} sequences >= {target:g}x llama.cpp's aggregate")
        if k not in rows or (against == "x1" and rows[k]["speedup"] is None) or (against == "llama" and not has_llama):
            goals.append((typ, name, None, None))
            continue
        got = rows[k]["speedup"] if against == "x1" else rows[k]["ratio"]
        goals.append((typ, name, got, got >= target))
    if 1 in py_seqs and 4 in py_seqs:  # the same rates reached through the Python API from 4 threads
        py = res["py"]
        got = med(py[4][i]["gen_agg"] / py[1][i]["gen_agg"] for i in range(len(py[1])))
        goals.append((typ, "4 Python threads generating >= 3x one thread's rate", got, got >= 3.0))
    return goals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="q4_0,q8_0")
    ap.add_argument("--seqs", default="1,2,4,8", help="numbers of sequences decoding at once")
    ap.add_argument("--py-seqs", default="1,4", help="k of the Python-threads line ('' to skip it)")
    ap.add_argument("--n-gen", type=int, default=64, help="tokens generated per sequence")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=b.CACHE, help="where model files are cached (bench_phi2's)")
    ap.add_argument("--small", action="store_true",
                    help=f"a small random Phi-2 ({SMALL['layers']} layers, width {SMALL['embd']}): checks the script")
    ap.add_argument("--llama-python", default=sys.executable,
                    help="a Python interpreter that has llama-cpp-python installed")
    ap.add_argument("--no-llama", action="store_true", help="measure tinygptv_native only")
    ap.add_argument("--llama-amx", choices=("auto", "on", "off"), default="auto",
                    help="llama.cpp's AMX kernels: auto = off where they die of SIGILL (see bench_phi2.py)")
    a = ap.parse_args()
    seqs = sorted({int(x) for x in a.seqs.split(",") if x})
    py_seqs = sorted({int(x) for x in a.py_seqs.split(",") if x})
    if a.n_gen < 2:
        ap.error("--n-gen must be at least 2 (the first token comes from the prompt step)")
    if not seqs or min(seqs + py_seqs) < 1:
        ap.error("--seqs and --py-seqs: positive numbers of sequences")
    bw = b.read_bandwidth_gbs(a.threads)
    print(f"memory read bandwidth ({a.threads} threads): {bw:.1f} GB/s", flush=True)
    goals = []
    for typ in a.types.split(","):
        if a.small:
            path = b.model_file(typ, a.dir, SMALL, name="phi2-small")
        else:
            path = b.model_file(typ, a.dir)
        res = bench_type(typ, path, a, seqs, py_seqs)
        goals += report(typ, path, res, a, seqs, py_seqs, bw)
    bw2 = b.read_bandwidth_gbs(a.threads)
    print(f"\nmemory read bandwidth at the end: {bw2:.1f} GB/s (start {bw:.1f})")
    print("\ngoals" + (" (of the small model: only a check that the script works)" if a.small else "") + ":")
    for typ, name, got, ok in goals:
        state = "not measured" if ok is None else (f"met ({got:.2f}x)" if ok else f"NOT met ({got:.2f}x)")
        print(f"  {typ}: {name}: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
