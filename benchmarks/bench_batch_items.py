"""`tinygptv batch` throughput: items per second with 1, 4 and 8 sequences decoded together, against
answering the same items one by one with Model.chat in a loop.

    python benchmarks/bench_batch_items.py [--items 16] [--seqs 1,4,8] [--n-gen 32] [--threads 2] [--runs 1]
    python benchmarks/bench_batch_items.py --demo      # the embedded demo model: checks that the script works
    python benchmarks/bench_batch_items.py --model tinygptv.gguf

Default model: the real-size random-weight TinyGPT-V in Q4_0 at 224 px (benchmarks/tinygptv_random.py,
built and cached under .bench/ by bench_tinygptv.py's model_file()). Each item is its own picture
(random pixels, so the image cache never answers for another item) with the question "Describe the
image."; every answer is --n-gen tokens (greedy, end-of-text ignored), so all configurations do the
same work. For k in --seqs: a Model with n_parallel = k and k worker threads, each item answered as
`tinygptv batch` answers it (tinygptv_native.batch.answer_item); "chat loop": a Model with n_parallel 1
and `Model.chat(question, image=...)` for one item after another. Model loading and one warm-up item
are outside the timing; items/s = items / wall time of all of them (image encoding, prompt and
generation included), median over --runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

QUESTION = "Describe the image."


def _pictures(folder: Path, n: int, size: int, seed: int = 0) -> list:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"item{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def run_batch(path: str, images: list, k: int, threads: int, n_gen: int) -> dict:
    from tinygptv_native import Model
    from tinygptv_native.batch import BatchSettings, answer_item, run_items
    m = Model(path, n_threads=threads, n_parallel=k)
    s = BatchSettings(base_dir="/", max_new_tokens=n_gen, temperature=0.0, extra={"ignore_eos": True})
    answer_item(m, {"image": images[-1], "question": QUESTION}, s)  # warm-up (the engine context, kernels)
    items = [{"image": p, "question": QUESTION} for p in images[:-1]]
    t0 = time.perf_counter()
    recs = run_items(items, lambda it: answer_item(m, it, s), None, workers=k)
    dt = time.perf_counter() - t0
    m.close()
    bad = [r for r in recs if "error" in r]
    if bad:
        raise RuntimeError(f"{len(bad)} items failed: {bad[0]['error']}")
    return {"items": len(items), "seconds": dt, "items_per_s": len(items) / dt,
            "tokens_per_s": len(items) * n_gen / dt}


def run_chat_loop(path: str, images: list, threads: int, n_gen: int) -> dict:
    from tinygptv_native import Model
    m = Model(path, n_threads=threads, n_parallel=1)
    m.chat(QUESTION, image=images[-1], temperature=0, max_new_tokens=n_gen, ignore_eos=True)
    t0 = time.perf_counter()
    for p in images[:-1]:
        m.chat(QUESTION, image=p, temperature=0, max_new_tokens=n_gen, ignore_eos=True)
    dt = time.perf_counter() - t0
    m.close()
    n = len(images) - 1
    return {"items": n, "seconds": dt, "items_per_s": n / dt, "tokens_per_s": n * n_gen / dt}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a GGUF file (default: the real-size random TinyGPT-V, Q4_0, 224 px)")
    ap.add_argument("--demo", action="store_true", help="the embedded demo model (a quick check of the script)")
    ap.add_argument("--items", type=int, default=16, help="items per configuration (default 16, plus a warm-up)")
    ap.add_argument("--seqs", default="1,4,8", help="sequences decoded together (default 1,4,8)")
    ap.add_argument("--n-gen", type=int, default=32, help="tokens per answer (default 32)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    if args.demo:
        from tinygptv_native.demo import demo_model_path
        path = str(demo_model_path())
    elif args.model:
        path = args.model
    else:
        from bench_tinygptv import model_file
        path = str(model_file(224, "q4_0", False))
    from tinygptv_native import _core
    size = _core.Model(path, 1).image_size or 224
    seqs = [int(x) for x in args.seqs.split(",") if x]
    results = {}
    with tempfile.TemporaryDirectory() as d:
        images = _pictures(Path(d), args.items + 1, size)
        for _ in range(args.runs):
            results.setdefault("chat loop", []).append(run_chat_loop(path, images, args.threads, args.n_gen))
            for k in seqs:
                results.setdefault(f"batch, {k} seq", []).append(run_batch(path, images, k, args.threads,
                                                                          args.n_gen))
    base = statistics.median(r["items_per_s"] for r in results["chat loop"])
    print(f"model: {path}\n{args.items} items, {args.n_gen} tokens each, {args.threads} threads, "
          f"median of {args.runs} run(s)\n")
    print(f"{'configuration':16s} {'items/s':>9s} {'tokens/s':>9s} {'vs chat loop':>13s}")
    rows = []
    for name, rs in results.items():
        ips = statistics.median(r["items_per_s"] for r in rs)
        tps = statistics.median(r["tokens_per_s"] for r in rs)
        rows.append({"configuration": name, "items_per_s": ips, "tokens_per_s": tps, "vs_chat_loop": ips / base})
        print(f"{name:16s} {ips:9.2f} {tps:9.1f} {ips / base:12.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": path, "items": args.items, "n_gen": args.n_gen, "threads": args.threads,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
