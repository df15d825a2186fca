"""Matrix-product throughput per weight type and instruction set.

Prints GFLOP/s (2*n*n_out*n_in per second) and weight GB/s for decode-shaped (n=1) and
prefill-shaped (n=256) products, with numpy's float32 matmul (BLAS) as the peer in the same run.

    python benchmarks/bench_kernels.py [--threads 2] [--types q4_0,q8_0,...] [--quick]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from tinygptv_native import _core

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"]
SHAPES = [  # (label, n, n_out, n_in)
    ("decode 2560x2560", 1, 2560, 2560),
    ("decode 10240x2560", 1, 10240, 2560),
    ("prefill 256x2560x2560", 256, 2560, 2560),
    ("vit 257x1408x6144", 257, 6144, 1408),
]


def timeit(fn, min_time: float, min_reps: int = 3) -> float:
    fn()  # warm up
    times = []
    t_end = time.perf_counter() + min_time
    while len(times) < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--isa", default="", help="comma-separated subset of scalar,avx2,avx512 (default: all supported)")
    ap.add_argument("--quick", action="store_true", help="shorter timing runs")
    args = ap.parse_args()
    min_time = 0.3 if args.quick else 1.0
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    isas = [s for s in (args.isa.split(",") if args.isa else ["scalar", "avx2", "avx512"]) if _core.isa_supported(s)]
    rng = np.random.default_rng(0)
    print(f"threads={args.threads} best isa={_core.isa_best()} numpy={np.__version__}")
    print(f"{'shape':24s} {'type':6s} {'isa':7s} {'ms':>9s} {'GFLOP/s':>9s} {'GB/s':>7s}")
    for label, n, n_out, n_in in SHAPES:
        if label.startswith("vit") and not any(t in types for t in ("F16", "F32", "BF16")):
            continue
        w = (rng.standard_normal((n_out, n_in)) * 0.02).astype(np.float32)
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        flop = 2.0 * n * n_out * n_in
        # numpy float32 peer (BLAS, its own threading)
        wt = np.ascontiguousarray(w.T)
        t = timeit(lambda: x @ wt, min_time)
        print(f"{label:24s} {'numpy':6s} {'f32':7s} {t*1e3:9.3f} {flop/t/1e9:9.1f} {w.nbytes/t/1e9:7.1f}")
        for ty in types:
            if label.startswith("vit") and ty not in ("F16", "F32", "BF16"):
                continue
            wq = _core.quantize(ty, w)
            for isa in isas:
                if isa == "scalar" and n > 1:
                    continue  # the scalar reference is far too slow for GEMM shapes
                _core.set_isa(isa)
                pw = _core.PreparedWeight(ty, wq, n_out, n_in)
                t = timeit(lambda: pw.matmul(x, None, args.threads), min_time)
                print(f"{label:24s} {ty:6s} {isa:7s} {t*1e3:9.3f} {flop/t/1e9:9.1f} {wq.nbytes/t/1e9:7.1f}")
    _core.set_isa(_core.isa_best())


if __name__ == "__main__":
    main()
