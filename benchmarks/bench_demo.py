"""Accuracy of the embedded demo model through the native engine, per weight type and per painter.

    python benchmarks/bench_demo.py [--n 500] [--types f16,q8_0,q4_0] [--ckpt-dir DIR | --gguf FILE]

Draws fresh pictures with the training generator ("gen", a seed the training never used) and with the
independent painter of tests/demo_painter.py ("indep", never trained on), holds one chat of three
questions per picture (the later questions with the model's own earlier answers in context) with
greedy decoding, and prints, for the first questions and for the follow-ups apart, exact-match
accuracy of answers without boxes and the share of answers with boxes whose text is right and whose
every box has IoU >= 0.5, then the right/asked counts per question type (tools/demo/chat_eval.py).

The weight types are made from the training checkpoints when --ckpt-dir holds them (the output of
tools/demo/export.py); otherwise from the shipped Q8_0 file (then "f16" is Q8_0 precision), or from
--gguf (any demo model file, e.g. an earlier release, to compare). --canonical asks only the question
types of the first demo model, in their canonical phrasing.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "demo"))

from chat_eval import make_chats, run_engine  # noqa: E402

EVAL_SEED = 987654321


def model_files(types, ckpt_dir, tmp, gguf=None):
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
        src = gguf or str(demo_model_path())
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--types", default="f16,q8_0,q4_0")
    ap.add_argument("--ckpt-dir")
    ap.add_argument("--gguf", help="a demo model file instead of the shipped one")
    ap.add_argument("--painters", default="gen,indep")
    ap.add_argument("--canonical", action="store_true",
                    help="only the first demo model's question types, in their canonical phrasing")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    from tinygptv_native import Model
    with tempfile.TemporaryDirectory() as tmp:
        files = model_files(a.types.split(","), a.ckpt_dir, tmp, a.gguf)
        print(f"[{a.n} chats of 3 questions per painter; first = first question, later = 2nd and 3rd; "
              f"exact = answers without boxes, boxes = answers with boxes, IoU >= 0.5]")
        for t, f in files.items():
            m = Model(f, n_threads=a.threads)
            for painter in a.painters.split(","):
                t0 = time.perf_counter()
                chats = make_chats(painter, a.n, EVAL_SEED + (painter == "indep"), canonical=a.canonical)
                r = run_engine(m, chats)
                print(f"{t:5s} {painter:5s} {r.summary()}  ({time.perf_counter() - t0:.0f} s)", flush=True)
            m.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
