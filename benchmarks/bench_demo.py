"""Accuracy of the embedded demo model through the native engine, per weight type and per painter.

    python benchmarks/bench_demo.py [--n 500] [--types f16,q8_0,q4_0] [--ckpt-dir DIR]

Draws fresh pictures (a seed the training never used) with painter A (the training painter) and
painter B (a different rasteriser: hard edges, other shades, outlines), asks one question per
picture with greedy decoding, and prints exact-match accuracy (non-grounding questions), the share of
grounding answers whose box has IoU >= 0.5, and the per-question-type counts.

The weight types are made from the training checkpoints when --ckpt-dir holds them (the output of
tools/demo/export.py); otherwise from the shipped Q8_0 file (then "f16" is Q8_0 precision).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "demo"))

from questions import iou, parse_box, sample_question  # noqa: E402
from shapes import draw_sample  # noqa: E402

EVAL_SEED = 987654321


def model_files(types, ckpt_dir, tmp):
    from tinygptv_native.demo import demo_model_path
    from tinygptv_native.quantize import quantize_file
    files = {}
    if ckpt_dir:
        from tinygptv_native.convert import convert_tinygptv
        src = os.path.join(tmp, "demo-f16.gguf")
        convert_tinygptv(os.path.join(ckpt_dir, "phi2"), os.path.join(ckpt_dir, "eva_vit_g.pth"),
                         os.path.join(ckpt_dir, "blip2_pretrained_flant5xxl.pth"),
                         os.path.join(ckpt_dir, "TinyGPT-V_for_Stage4.pth"), src, outtype="f16",
                         vision_head_size=64, progress=False)
    else:
        src = str(demo_model_path())
    for t in types:
        if t == "q8_0" and not ckpt_dir:
            files[t] = src
        elif t == "f16" and ckpt_dir:
            files[t] = src
        else:
            out = os.path.join(tmp, f"demo-{t}.gguf")
            quantize_file(src, out, t, progress=False)
            files[t] = out
    return files


def evaluate(path, painter, n, threads, render=256):
    from tinygptv_native import Model
    m = Model(path, n_threads=threads)
    rng = np.random.default_rng(EVAL_SEED + (painter == "B"))
    per = defaultdict(lambda: [0, 0])
    for _ in range(n):
        scene, img = draw_sample(rng, painter, render)
        qtype, q, a = sample_question(scene, rng)
        p = m.chat(q, image=img, temperature=0.0, max_new_tokens=24).strip()
        if qtype == "refer":
            pb, ab = parse_box(p), parse_box(a)
            ok = pb is not None and iou(pb, ab) >= 0.5
        else:
            ok = p == a
        per[qtype][0] += int(ok)
        per[qtype][1] += 1
    exact = [v for k, v in per.items() if k != "refer"]
    return (sum(v[0] for v in exact) / max(1, sum(v[1] for v in exact)),
            per["refer"][0] / max(1, per["refer"][1]), dict(per))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--types", default="f16,q8_0,q4_0")
    ap.add_argument("--ckpt-dir")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = model_files(a.types.split(","), a.ckpt_dir, tmp)
        print(f"{'type':6s} {'painter':7s} {'exact':>7s} {'IoU>=.5':>8s}  per type (right/asked)   [{a.n} questions each]")
        for t, f in files.items():
            for painter in ("A", "B"):
                t0 = time.perf_counter()
                ex, io, per = evaluate(f, painter, a.n, a.threads)
                detail = " ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(per.items()))
                print(f"{t:6s} {painter:7s} {ex:7.1%} {io:8.1%}  {detail}  ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
