"""Greedy-decoding accuracy of the trained PyTorch demo model on freshly drawn pictures.

    python tools/demo/evaluate.py --ckpt /work/demo_ckpt/trained.pt --painter A --n 500

Exact match on every non-grounding question; IoU >= 0.5 on grounding ("[refer]") questions.
The pictures come from a seed range the training never uses.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import numpy as np
import sentencepiece as spm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model import DemoConfig, TinyGPTVDemo, pil_to_tensor  # noqa: E402
from questions import END_SYM, iou, parse_box, prompt_segments, sample_question  # noqa: E402
from shapes import draw_sample  # noqa: E402

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
def generate(model, sp, pixels: torch.Tensor, questions: list[str], max_new: int = 24) -> list[str]:
    """Greedy answers (text before the stop string) for one picture per question."""
    img = model.encode_image(pixels)
    before = torch.tensor(sp.encode(prompt_segments("x")[0]), dtype=torch.long)
    after = [sp.encode(prompt_segments(q)[1]) for q in questions]
    out = [""] * len(questions)
    groups = defaultdict(list)
    for i, a in enumerate(after):
        groups[len(a)].append(i)
    for idx in groups.values():
        ids = torch.tensor([after[i] for i in idx], dtype=torch.long)
        gen = [[] for _ in idx]
        done = [False] * len(idx)
        for _ in range(max_new):
            logits = model(img[idx], before, ids)[:, -1]
            nxt = logits.argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            for j, t in enumerate(nxt.tolist()):
                if not done[j]:
                    gen[j].append(t)
                    if END_SYM in sp.decode(gen[j]):
                        done[j] = True
            if all(done):
                break
        for j, i in enumerate(idx):
            out[i] = sp.decode(gen[j]).split(END_SYM)[0].strip()
    return out


def evaluate(model, sp, painter: str, n: int, seed: int = EVAL_SEED, render_size: int | None = None,
             batch: int = 100, verbose: bool = False):
    """Returns {"exact": acc over non-grounding, "iou50": rate over grounding, "per_type": {...}}."""
    rng = np.random.default_rng(seed)
    size = model.c.image_size
    items = []
    for _ in range(n):
        scene, img = draw_sample(rng, painter, render_size or size)
        qtype, q, a = sample_question(scene, rng)
        items.append((qtype, q, a, pil_to_tensor(img, size)))
    per = defaultdict(lambda: [0, 0])
    for s in range(0, n, batch):
        chunk = items[s: s + batch]
        preds = generate(model, sp, torch.stack([c[3] for c in chunk]), [c[1] for c in chunk])
        for (qtype, q, a, _), p in zip(chunk, preds):
            if qtype == "refer":
                pb, ab = parse_box(p), parse_box(a)
                ok = pb is not None and iou(pb, ab) >= 0.5
            else:
                ok = p == a
            per[qtype][0] += int(ok)
            per[qtype][1] += 1
            if verbose and not ok:
                print(f"  [{qtype}] {q!r}: expected {a!r}, got {p!r}")
    exact = [v for k, v in per.items() if k != "refer"]
    return {
        "exact": sum(v[0] for v in exact) / max(1, sum(v[1] for v in exact)),
        "iou50": per["refer"][0] / max(1, per["refer"][1]),
        "per_type": {k: (v[0], v[1]) for k, v in sorted(per.items())},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--painter", default="A", choices=["A", "B"])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--render-size", type=int, default=None, help="draw at this size, resize (bicubic) to the model's")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, sp = load(args.ckpt)
    r = evaluate(model, sp, args.painter, args.n, render_size=args.render_size, verbose=args.verbose)
    print(f"painter {args.painter}: exact {100 * r['exact']:.1f}%  boxes IoU>=0.5 {100 * r['iou50']:.1f}%  "
          + "  ".join(f"{k} {a}/{b}" for k, (a, b) in r["per_type"].items()))


if __name__ == "__main__":
    main()
