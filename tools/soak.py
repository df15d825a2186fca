"""Soak test: many chats with images on one model, then many load/free cycles.

    python tools/soak.py [--model FILE] [--chats 500] [--loads 100] [--threads 2]

Without --model it uses the embedded demo model. Checks, and reports with figures:
  - answers are identical every time the same (picture, question) comes round again;
  - resident memory stays flat: growth from the end of the warm-up to the end of the run;
  - no file descriptor is leaked by chats or by loading and freeing the model.
Exit status 0 when all hold, 1 otherwise.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def n_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pictures(n: int, size: int = 64):
    """n distinct small RGB pictures (coloured blocks on white)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        a = np.full((size, size, 3), 255, np.uint8)
        for _ in range(2):
            x, y, w = rng.integers(0, size - 16, 3)
            a[y:y + 12 + w % 8, x:x + 12 + w % 8] = rng.integers(0, 256, 3)
        out.append(a)
    return out


QUESTIONS = ["What color is the circle?", "How many shapes are there?", "Describe the image.",
             "[refer] where is the red square?"]


def soak(model_path: str, chats: int, loads: int, threads: int, max_new_tokens: int = 12,
         log=print) -> dict:
    from tinygptv_native import Model
    m = Model(model_path, n_threads=threads, n_ctx=512)
    pics = pictures(5)
    combos = [(i % len(pics), i % len(QUESTIONS)) for i in range(len(pics) * len(QUESTIONS))]
    first: dict = {}
    mismatches = 0
    warm = max(1, chats // 10)
    rss_warm = fd_warm = None
    t0 = time.perf_counter()
    for i in range(chats):
        p, q = combos[i % len(combos)]
        c = m.new_chat()
        text = c.ask(QUESTIONS[q], image=pics[p], temperature=0.0, max_new_tokens=max_new_tokens)
        if i % 3 == 0:  # a follow-up keeps the image in the cache
            text += "|" + c.ask("And the other shapes?", temperature=0.0, max_new_tokens=max_new_tokens)
        key = (p, q, i % 3 == 0)
        if key in first:
            mismatches += text != first[key]
        else:
            first[key] = text
        del c
        if i + 1 == warm:
            gc.collect()
            rss_warm, fd_warm = rss_mb(), n_fds()
    gc.collect()
    rss_end, fd_end = rss_mb(), n_fds()
    chat_s = time.perf_counter() - t0
    log(f"chats: {chats} in {chat_s:.1f} s; RSS after warm-up {rss_warm:.1f} MB, at end {rss_end:.1f} MB "
        f"(drift {rss_end - rss_warm:+.1f} MB); fds {fd_warm} -> {fd_end}; answers differing from the first "
        f"pass: {mismatches}")
    del m
    gc.collect()
    fd0, rss0 = n_fds(), None
    for i in range(loads):
        mm = Model(model_path, n_threads=threads)
        mm.logits([1, 2, 3])
        del mm
        gc.collect()
        if i == max(0, loads // 10 - 1):
            rss0 = rss_mb()
    rss1, fd1 = rss_mb(), n_fds()
    log(f"load/free cycles: {loads}; RSS {rss0:.1f} -> {rss1:.1f} MB (drift {rss1 - rss0:+.1f} MB); "
        f"fds {fd0} -> {fd1}")
    return dict(mismatches=mismatches, chat_rss_drift_mb=rss_end - rss_warm, chat_fd_delta=fd_end - fd_warm,
                load_rss_drift_mb=rss1 - rss0, load_fd_delta=fd1 - fd0, distinct=len(first))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--chats", type=int, default=500)
    ap.add_argument("--loads", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-drift-mb", type=float, default=32.0)
    a = ap.parse_args(argv)
    path = a.model
    if path is None:
        from tinygptv_native.demo import demo_model_path
        path = str(demo_model_path())
    r = soak(path, a.chats, a.loads, a.threads)
    ok = (r["mismatches"] == 0 and r["chat_fd_delta"] == 0 and r["load_fd_delta"] == 0
          and r["chat_rss_drift_mb"] < a.max_drift_mb and r["load_rss_drift_mb"] < a.max_drift_mb)
    print("soak:", "ok" if ok else "FAILED", r)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
