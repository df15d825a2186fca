"""What a follow-up question costs in a Chat (image and history kept in the KV cache) against asking it
from scratch (image encoded again, whole history evaluated again). Prints a table.

    python benchmarks/bench_chat.py -m model.gguf [--image photo.jpg] [-t THREADS] [-n 32] [--turns 3]

Without -m the embedded demo model is used. Greedy decoding, end-of-text ignored, so every answer has
exactly -n tokens.
"""
import argparse
import time

import numpy as np

from tinygptv_native import Model, _core
from tinygptv_native.demo import demo_image_path, demo_model_path

QUESTIONS = ["Describe the picture.", "What colour is the largest shape?", "Is there anything in the corner?",
             "How many shapes are there?", "Which one is on the left?"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model")
    ap.add_argument("--image")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-n", "--n-predict", type=int, default=32)
    ap.add_argument("--turns", type=int, default=3)
    args = ap.parse_args()
    m = Model(args.model or demo_model_path(), n_threads=args.threads, n_ctx=2048)
    image = args.image or demo_image_path()
    chat = m.new_chat()
    rows = []
    for k in range(min(args.turns, len(QUESTIONS))):
        r = chat.ask(QUESTIONS[k], image=image if k == 0 else None, temperature=0, max_new_tokens=args.n_predict,
                     ignore_eos=True, return_result=True)
        # The same prompt from scratch: encode the image again and evaluate the whole spliced history.
        toks = chat.tokens(r.cached_tokens + r.prompt_tokens + r.image_tokens)
        fresh = _core.Context(m._model, len(toks) + m.n_image_tokens, 1, m.n_threads, image_cache_mb=0)
        t0 = time.perf_counter()
        emb = fresh.encode_image(m.preprocess(image)).numpy()
        t_enc = (time.perf_counter() - t0) * 1e3
        ids_at = [i for i, t in enumerate(toks) if isinstance(t, np.ndarray)]
        ids = [t for t in toks if not isinstance(t, np.ndarray)]
        x = np.concatenate([m._model.embed_tokens(np.asarray(ids[:ids_at[0]], np.int32)), emb,
                            m._model.embed_tokens(np.asarray(ids[ids_at[0]:], np.int32))])
        t0 = time.perf_counter()
        fresh.eval_embeddings(0, np.ascontiguousarray(x, np.float32), False)
        t_full = (time.perf_counter() - t0) * 1e3
        rows.append((k + 1, r, len(x), t_enc + t_full))
    print(f"model: {m.path}, threads: {m.n_threads}, answers of {args.n_predict} tokens (greedy)")
    print("| turn | image encode ms | prompt positions | prompt ms | cached | gen tok/s | turn ms (chat) "
          "| from scratch: positions | from scratch ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, r, n_full, t_scratch in rows:
        turn_ms = r.image_encode_ms + r.prompt_ms
        print(f"| {k} | {r.image_encode_ms:.1f} | {r.prompt_tokens + r.image_tokens} | {r.prompt_ms:.1f} | "
              f"{r.cached_tokens} | {r.generation_tokens_per_s:.1f} | {turn_ms:.1f} | {n_full} | {t_scratch:.1f} |")
    print("turn ms = image encode + prompt evaluation before the first answer token; 'from scratch' re-encodes "
          "the image and evaluates the whole history.")


if __name__ == "__main__":
    main()
