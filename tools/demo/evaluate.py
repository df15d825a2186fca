"""Greedy-decoding accuracy of the trained PyTorch demo model on chats about fresh pictures.

    python tools/demo/evaluate.py --ckpt /work/demo_ckpt/trained.pt --painter indep --n 500

One chat of three questions per picture, the later questions with the model's own earlier answers
in context, scored as in chat_eval.py. The pictures come from a seed range the training never uses.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import sentencepiece as spm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from chat_eval import MAX_NEW_TOKENS, Tally, make_chats  # noqa: E402
from model import DemoConfig, TinyGPTVDemo, pil_to_tensor  # noqa: E402
from questions import END_SYM, prompt_segments, turn_text  # noqa: E402

EVAL_SEED = 1_000_003


def load(ckpt: str):
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = DemoConfig(**state["config"])
    model = TinyGPTVDemo(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    sp = spm.SentencePieceProcessor(model_file=os.path.join(os.path.dirname(ckpt), "phi2", "tokenizer.model"))
    return model, sp


@torch.no_grad()
def generate_ids(model, sp, img: torch.Tensor, after: list[list[int]],
                 max_new: int = MAX_NEW_TOKENS) -> list[list[int]]:
    """Greedy answer ids (without the stop string) for image embeddings img [B, nq, D] and the token ids
    after the image of each row; rows of one length are decoded together."""
    before = torch.tensor(sp.encode(prompt_segments("x")[0]), dtype=torch.long)
    stop = sp.piece_to_id(END_SYM)
    out: list[list[int]] = [[] for _ in after]
    groups = defaultdict(list)
    for i, a in enumerate(after):
        groups[len(a)].append(i)
    for idx in groups.values():
        ids = torch.tensor([after[i] for i in idx], dtype=torch.long)
        done = [False] * len(idx)
        for _ in range(max_new):
            nxt = model(img[idx], before, ids)[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            for j, t in enumerate(nxt.tolist()):
                if not done[j]:
                    if t == stop:
                        done[j] = True
                    else:
                        out[idx[j]].append(t)
            if all(done):
                break
    return out


@torch.no_grad()
def evaluate(model, sp, painter: str, n: int, seed: int = EVAL_SEED, batch: int = 100,
             canonical: bool = False) -> Tally:
    tally = Tally()
    chats = make_chats(painter, n, seed, canonical=canonical)
    size = model.c.image_size
    for s in range(0, n, batch):
        chunk = chats[s: s + batch]
        img = model.encode_image(torch.stack([pil_to_tensor(c[0], size) for c in chunk]))
        history: list[list[int]] = [[] for _ in chunk]
        for turn in range(len(chunk[0][1])):
            for h, (_, turns) in zip(history, chunk):
                q = turns[turn][1]
                h += sp.encode(prompt_segments(q)[1] if turn == 0 else turn_text(q))
            answers = generate_ids(model, sp, img, history)
            for h, a, (_, turns) in zip(history, answers, chunk):
                h += a          # the answer as generated, without its stop string (as the engine keeps it)
                qtype, q, expected = turns[turn]
                tally.add(turn, qtype, q, expected, sp.decode(a).strip())
    return tally


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--painter", default="indep", choices=["gen", "indep"])
    ap.add_argument("--n", type=int, default=500, help="chats (of three questions)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--canonical", action="store_true", help="the first demo model's questions only")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, sp = load(args.ckpt)
    r = evaluate(model, sp, args.painter, args.n, canonical=args.canonical)
    if args.verbose:
        for turn, q, a, p in r.misses:
            print(f"  turn {turn + 1} {q!r}: expected {a!r}, got {p!r}")
    print(f"painter {args.painter}: {r.summary()}")


if __name__ == "__main__":
    main()
