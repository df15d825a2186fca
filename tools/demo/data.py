"""Batches for training and evaluation: pictures, prompts and answer targets as tensors."""
from __future__ import annotations

import numpy as np
import torch

from model import pil_to_tensor
from questions import END_SYM, prompt_segments, sample_question
from shapes import draw_sample

# Harder question types are drawn more often in training.
TRAIN_WEIGHTS = {"color": 1.0, "shape": 1.0, "count": 1.0, "exists": 1.0, "describe": 1.5, "refer": 2.5}


class Encoder:
    """Caches SentencePiece encodings of the few distinct strings the generator produces."""

    def __init__(self, sp):
        self.sp = sp
        self.cache: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        ids = self.cache.get(text)
        if ids is None:
            ids = self.sp.encode(text)
            self.cache[text] = ids
        return ids


def prefix_ids(enc: Encoder) -> torch.Tensor:
    """The text before <ImageHere>; the same for every question."""
    return torch.tensor(enc(prompt_segments("x")[0]), dtype=torch.long)


def train_batch(rng: np.random.Generator, enc: Encoder, n_img: int, q_per_img: int, size: int, n_query: int,
                painter: str = "A"):
    """-> pixels [n_img,3,S,S], img_index [B], after_ids [B,L1], targets [B, L0+nq+L1] (-100 = no loss)."""
    pixels, rows, img_index = [], [], []
    for i in range(n_img):
        scene, img = draw_sample(rng, painter, size)
        pixels.append(pil_to_tensor(img, size))
        for _ in range(q_per_img):
            _, q, a = sample_question(scene, rng, TRAIN_WEIGHTS)
            rows.append((enc(prompt_segments(q)[1]), enc(a + END_SYM)))
            img_index.append(i)
    L0 = len(prefix_ids(enc))
    L1 = max(len(p) + len(a) for p, a in rows)
    after = torch.zeros(len(rows), L1, dtype=torch.long)
    targets = torch.full((len(rows), L0 + n_query + L1), -100, dtype=torch.long)
    for b, (p, a) in enumerate(rows):
        after[b, : len(p) + len(a)] = torch.tensor(p + a)
        start = L0 + n_query + len(p)               # position of the first answer token
        targets[b, start - 1: start - 1 + len(a)] = torch.tensor(a)
    return torch.stack(pixels), torch.tensor(img_index), after, targets
