"""Matrix-product throughput per weight type and instruction set.

Prints GFLOP/s (2*n*n_out*n_in per second) and weight GB/s for decode-shaped (n=1) and
prefill-shaped (n=256) products, with numpy's float32 matmul (BLAS) as the peer in the same run:

  decode 2560x2560 / 10240x2560   one weight, n=1 (fits the L3 cache once warm)
  decode stream 10240x2560        n=1 over several weights totalling ~160 MB, as a decoder walks
                                  its layers: bound by memory bandwidth (peer: numpy sum of 256 MB)
  prefill 256x2560x2560           n=256 activation rows
  vit 257x1408x6144               float weights, n=257 (the vision encoder's MLP)
  tiny 64x256 n=1                 fixed costs: activation quantization and waking the thread pool

--cpu-time reports the calling thread's CPU time with 1 thread instead of wall time: on a busy
machine this still measures the kernels (but not memory bandwidth shared with other processes).

    python benchmarks/bench_kernels.py [--threads 2] [--types Q4_0,Q8_0] [--isa avx2,avx2+vnni] [--rounds 5] [--quick] [--cpu-time]

Paths: scalar, avx2, avx2+vnni (the AVX2 kernels with AVX-VNNI's vpdpbusd), avx512, avx512+amx (AMX tiles
for prompts), neon; a path the CPU lacks is left out. Plain avx2 and avx512 run without those extensions.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if "--cpu-time" in sys.argv:  # the numpy peer must run on the calling thread too
    for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

from tinygptv_native import _core  # noqa: E402
from tinygptv_native._core import _testing  # noqa: E402

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
FLOAT = ("F32", "F16", "BF16")
SHAPES = [  # (label, n, n_out, n_in)
    ("decode 2560x2560", 1, 2560, 2560),
    ("decode 10240x2560", 1, 10240, 2560),
    ("decode stream 10240x2560", 1, 10240, 2560),
    ("prefill 256x2560x2560", 256, 2560, 2560),
    ("vit 257x1408x6144", 257, 6144, 1408),
    ("tiny 64x256 n=1", 1, 64, 256),
]
STREAM_BYTES = 160 << 20


def supported(path: str) -> bool:
    base, _, ext = path.partition("+")
    if not _testing.isa_supported(base):
        return False
    return {"": True, "vnni": base == "avx2" and _testing.avx_vnni_supported(),
            "amx": base == "avx512" and _testing.amx_supported()}.get(ext, False)


def set_path(path: str) -> None:
    """A path of --isa: the instruction set and whether AVX-VNNI's kernels or the AMX tiles are on."""
    _testing.set_isa(path.split("+")[0])
    if _testing.avx_vnni_supported():
        _testing.set_avx_vnni(path.endswith("+vnni"))
    if _testing.amx_supported():
        _testing.set_amx(path.endswith("+amx"))


def timeit(fn, min_time: float, cpu: bool, min_reps: int = 3) -> float:
    clock = time.thread_time if cpu else time.perf_counter
    fn()  # warm up
    times = []
    t_end = time.perf_counter() + min_time
    while len(times) < min_reps or time.perf_counter() < t_end:
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--isa", default="",
                    help="comma-separated subset of scalar,avx2,avx2+vnni,avx512,avx512+amx,neon (default: all supported)")
    ap.add_argument("--quick", action="store_true", help="shorter timing runs")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time the paths this many times each, alternating, and print the medians")
    ap.add_argument("--cpu-time", action="store_true", help="1 thread, CPU time of the calling thread")
    args = ap.parse_args()
    threads = 1 if args.cpu_time else args.threads
    min_time = 0.3 if args.quick else 1.0
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    every = ["scalar", "avx2", "avx2+vnni", "avx512", "avx512+amx", "neon"]
    isas = [s for s in (args.isa.split(",") if args.isa else every) if supported(s)]
    rng = np.random.default_rng(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"threads={threads} clock={'thread CPU time' if args.cpu_time else 'wall'} best isa={_testing.isa_best()} "
          f"numpy={np.__version__} load average={load:.2f}")
    print(f"{'shape':26s} {'type':6s} {'path':10s} {'ms':>9s} {'GFLOP/s':>9s} {'GB/s':>7s}")

    def row(label, ty, isa, t, flop, nbytes):
        print(f"{label:26s} {ty:6s} {isa:10s} {t*1e3:9.3f} {flop/t/1e9:9.1f} {nbytes/t/1e9:7.1f}", flush=True)

    for label, n, n_out, n_in in SHAPES:
        float_only = label.startswith("vit")
        if float_only and not any(t in types for t in FLOAT):
            continue
        stream = "stream" in label
        w = (rng.standard_normal((n_out, n_in)) * 0.02).astype(np.float32)
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        flop = 2.0 * n * n_out * n_in
        if stream:
            big = np.ones(64 << 20, np.float32)
            t = timeit(lambda: big.sum(), min_time, args.cpu_time)
            row(label, "numpy", "sum", t, 0.0, big.nbytes)
        elif not label.startswith("tiny"):
            wt = np.ascontiguousarray(w.T)
            t = timeit(lambda: x @ wt, min_time, args.cpu_time)
            row(label, "numpy", "f32", t, flop, w.nbytes)
        for ty in types:
            if float_only and ty not in FLOAT:
                continue
            wq = _core.quantize(ty, w)
            count = max(1, -(-STREAM_BYTES // wq.nbytes)) if stream else 1
            paths = [isa for isa in isas if not (isa == "scalar" and (n > 1 or stream))]  # scalar: far too slow
            times = {isa: [] for isa in paths}
            for _ in range(args.rounds):  # the paths alternate: a machine shared with others drifts
                for isa in paths:
                    set_path(isa)
                    pws = [_testing.PreparedWeight(ty, wq, n_out, n_in) for _ in range(count)]
                    if count == 1:
                        pw = pws[0]
                        t = timeit(lambda: pw.matmul(x, None, threads), min_time, args.cpu_time)
                    else:
                        t = timeit(lambda: [p.matmul(x, None, threads) for p in pws], min_time, args.cpu_time) / count
                    times[isa].append(t)
                    del pws
            for isa in paths:
                row(label, ty, isa, float(np.median(times[isa])), flop, wq.nbytes)
    set_path(_testing.isa_best())
    if _testing.avx_vnni_supported():
        _testing.set_avx_vnni(True)
    if _testing.amx_supported():
        _testing.set_amx(True)


if __name__ == "__main__":
    main()
