"""The decoder on the CPU and on a Vulkan device: prompt and decode speed of one sequence, and the largest
logit difference between the two.

    python benchmarks/bench_gpu.py [-m MODEL.gguf] [--gpu 0] [--prompt 64] [--n-gen 32] [--threads N]

Without -m: the embedded demo model. For each backend a `_core.Context` of one sequence evaluates a random
prompt of --prompt tokens (one decode call), then --n-gen greedy steps of one token each; the table gives
prompt tokens/s, decode tokens/s (median step) and the upload time of the GPU context. The GPU is fed the
CPU's greedy tokens, so the logits compare position by position: the largest difference and how many
steps pick the same token are printed. On lavapipe (Mesa's
CPU Vulkan driver) the GPU column measures a CPU running SPIR-V, not a GPU: it checks that the path runs,
never its speed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def run(ctx, prompt: np.ndarray, n_gen: int, forced=None):
    """Logits of the prompt's last row and of each step; greedy, or the tokens `forced` when given."""
    t0 = time.perf_counter()
    logits = [ctx.eval_tokens(0, prompt, False)]
    t_prompt = time.perf_counter() - t0
    steps = []
    for i in range(n_gen):
        tok = np.array([int(np.argmax(logits[-1])) if forced is None else int(forced[i])], np.int32)
        t0 = time.perf_counter()
        logits.append(ctx.eval_tokens(0, tok, False))
        steps.append(time.perf_counter() - t0)
    return np.stack(logits), t_prompt, statistics.median(steps)


def main() -> int:
    from tinygptv_native import _core
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.model is None:
        from tinygptv_native.demo import demo_model_path
        args.model = str(demo_model_path())
    m = _core.Model(args.model, args.threads)
    n_ctx = args.prompt + args.n_gen + 1
    prompt = np.random.default_rng(0).integers(0, m.n_vocab, args.prompt).astype(np.int32)
    dev = _core.vulkan_devices()[args.gpu]
    rows = []
    out = {}
    for name, gpu in (("cpu", -1), (f"vulkan {args.gpu} ({dev['name']}, {dev['type']})", args.gpu)):
        t0 = time.perf_counter()
        ctx = _core.Context(m, n_ctx, 1, args.threads, True, 64.0, gpu)
        t_load = time.perf_counter() - t0
        run(ctx, prompt[:4], 2)  # warm-up: pipelines, scratch
        ctx.clear(0)
        forced = None if gpu < 0 else out[-1].argmax(1)
        logits, t_prompt, t_step = run(ctx, prompt, args.n_gen, forced)
        out[gpu] = logits
        rows.append((name, t_load, args.prompt / t_prompt, 1 / t_step))
    print(f"{args.model}: prompt {args.prompt}, {args.n_gen} greedy steps, {args.threads} CPU threads")
    print(f"{'backend':52s} {'context s':>9s} {'prompt tok/s':>12s} {'decode tok/s':>12s}")
    for name, t_load, pps, dps in rows:
        print(f"{name:52s} {t_load:9.2f} {pps:12.1f} {dps:12.1f}")
    same = int((out[-1].argmax(1) == out[args.gpu].argmax(1)).sum())
    print(f"largest logit difference: {np.abs(out[-1] - out[args.gpu]).max():.2e} (max |logit| "
          f"{np.abs(out[-1]).max():.1f}); same token at {same} of {args.n_gen + 1} positions")
    print("(for quantized weights the CPU rounds activations to int8, the GPU does not: tests/test_vulkan_model.py)")
    if dev["type"] == "cpu":
        print("(the Vulkan device is a CPU driver: its speed says nothing of a GPU's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
