"""A stateless client's follow-up: the 4th question of a conversation about an image, sent as the whole
conversation (OpenAI-shaped messages, as a server's client resends it) against the same question asked
in a Chat that kept its history. Both should evaluate only the new question's tokens.

    python benchmarks/bench_followup.py [--runs 5] [--threads 2] [-n 32]     # real-size TinyGPT-V Q4_0, 224 px
    python benchmarks/bench_followup.py --model tinygptv.gguf
    python benchmarks/bench_followup.py --demo                                # the embedded demo model

Per run, each path has its own picture (random pixels, so neither finds the other's image in a cache)
and answers three questions of -n tokens (greedy, end-of-text ignored); then the 4th question is timed
with one answer token, so its wall time is the time to first token:
- chat: `Chat.ask` on the Chat of the three turns;
- messages: `Model.chat_completion(messages)` with the three turns and their answers resent in full
  (the three turns before were asked the same way, as a stateless client would).
The paths alternate within a run; medians over --runs. Goal: the messages path within 10% of the chat
path, having evaluated the same number of new positions. The resent answers are text and are tokenized
again (as llama-server does): where a random model's answer ids are not the tokenizer's own split of
their text, the cached prefix ends a few positions early; the script reports such runs apart.
"""
from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

QUESTIONS = ["Describe the picture.", "What colour is the largest shape?", "Is there anything in the corner?",
             "How many shapes are there?"]


def picture(seed: int, size: int):
    import numpy as np
    from PIL import Image
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_path(m, img, n: int):
    chat = m.new_chat()
    for k, q in enumerate(QUESTIONS[:3]):
        chat.ask(q, image=img if k == 0 else None, temperature=0, max_new_tokens=n, ignore_eos=True)
    t0 = time.perf_counter()
    r = chat.ask(QUESTIONS[3], temperature=0, max_new_tokens=1, ignore_eos=True, return_result=True)
    return time.perf_counter() - t0, r


def messages_path(m, img, n: int):
    url = data_url(img)
    msgs = []
    for k, q in enumerate(QUESTIONS[:3]):
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": q}] if k == 0 else q
        msgs.append({"role": "user", "content": content})
        r = m.chat_completion(msgs, temperature=0, max_new_tokens=n, ignore_eos=True)
        msgs.append({"role": "assistant", "content": r.text})
    msgs.append({"role": "user", "content": QUESTIONS[3]})
    t0 = time.perf_counter()
    r = m.chat_completion(msgs, temperature=0, max_new_tokens=1, ignore_eos=True)
    return time.perf_counter() - t0, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a TinyGPT-V GGUF (default: the real-size random TinyGPT-V, Q4_0, 224 px)")
    ap.add_argument("--demo", action="store_true", help="the embedded demo model (a quick check of the script)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-n", "--n-predict", type=int, default=32, help="tokens per earlier answer (default 32)")
    args = ap.parse_args()

    from tinygptv_native import Model
    if args.demo:
        from tinygptv_native.demo import demo_model_path
        path = str(demo_model_path())
    elif args.model:
        path = args.model
    else:
        import bench_tinygptv
        path = str(bench_tinygptv.model_file(224, "q4_0", False))
    m = Model(path, n_threads=args.threads, n_ctx=2048, n_parallel=4)
    size = m.image_size
    chat_path(m, picture(10_000, size), args.n_predict)  # warm-up: page cache, thread pool, scratch
    rows = {"chat": [], "messages": []}
    for run in range(args.runs):
        order = (("chat", chat_path), ("messages", messages_path))
        for name, fn in (order if run % 2 == 0 else order[::-1]):
            t, r = fn(m, picture(2 * run + (name == "messages"), size), args.n_predict)
            rows[name].append((t, r))
            print(f"  run {run + 1}/{args.runs} {name:8s}: {t * 1e3:8.1f} ms to the first token, "
                  f"{r.prompt_tokens} new positions evaluated, {r.cached_tokens} cached", flush=True)
    print(f"\nmodel {os.path.basename(path)}, {args.threads} threads, three earlier turns of {args.n_predict} "
          f"tokens, medians of {args.runs} runs")
    print("| path | time to first token ms | new positions | cached positions |")
    print("|---|---:|---:|---:|")
    med = {}
    for name, rs in rows.items():
        med[name] = statistics.median(t for t, _ in rs) * 1e3
        news = sorted({r.prompt_tokens for _, r in rs})
        cached = sorted({r.cached_tokens for _, r in rs})
        print(f"| {name} | {med[name]:.1f} | {'/'.join(map(str, news))} | {'/'.join(map(str, cached))} |")
    ratio = med["messages"] / med["chat"]
    # The resent answers are text: tokenized again, they give the generated ids back only when those ids
    # are the tokenizer's own split of their text (a trained model's answers nearly always are; a random
    # model's often not), and the cached prefix then ends where the two differ.
    same = [a.prompt_tokens == b.prompt_tokens for (_, a), (_, b) in zip(rows["chat"], rows["messages"])]
    matched = [tb / ta for ((ta, _), (tb, _)), ok in zip(zip(rows["chat"], rows["messages"]), same) if ok]
    print(f"messages / chat: {ratio:.2f}x over all runs; runs whose resent history re-tokenized to the cached "
          f"ids: {len(matched)} of {len(same)}" + (f", median ratio on them {statistics.median(matched):.2f}x"
                                                     if matched else ""))
    print(f"goal (within 10% of the chat path, only the new tokens evaluated): "
          f"{'met' if ratio <= 1.10 and all(same) else 'NOT met'} over all runs" +
          (f"; {'met' if statistics.median(matched) <= 1.10 else 'NOT met'} on the matched runs" if matched else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
