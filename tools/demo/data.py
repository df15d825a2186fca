"""Batches for training and evaluation: pictures, prompts and answer targets as tensors."""
from __future__ import annotations

import numpy as np
import torch

from model import pil_to_tensor
from questions import END_SYM, box_of, prompt_segments, sample_question
from shapes import CELL, COLORS, GRID, KINDS, Scene, draw_sample

# Harder question types are drawn more often in training.
TRAIN_WEIGHTS = {"color": 2.5, "shape": 1.0, "count": 0.5, "exists": 1.5, "describe": 1.0, "refer": 2.5}


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


def cell_targets(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """Per board cell (row-major, one per Q-Former query): content class [GRID*GRID] (0 = empty,
    1 + 3 * colour + kind) and box on the 0..100 grid [GRID*GRID, 4] (-100 where the cell is empty).
    Targets of the training-only auxiliary heads, see train.py."""
    cls = torch.zeros(GRID * GRID, dtype=torch.long)
    box = torch.full((GRID * GRID, 4), -100, dtype=torch.long)
    for s in scene.shapes:
        cell = min(int(s.cy / CELL), GRID - 1) * GRID + min(int(s.cx / CELL), GRID - 1)
        cls[cell] = 1 + 3 * COLORS.index(s.color) + KINDS.index(s.kind)
        box[cell] = torch.tensor(box_of(s))
    return cls, box


def train_batch(rng: np.random.Generator, enc: Encoder, n_img: int, q_per_img: int, size: int, n_query: int,
                painter: str = "A"):
    """-> pixels [n_img,3,S,S], img_index [B], after_ids [B,L1], targets [B, L0+nq+L1] (-100 = no loss),
    cell classes [n_img, GRID*GRID], cell boxes [n_img, GRID*GRID, 4] (see cell_targets)."""
    pixels, rows, img_index, cells, boxes = [], [], [], [], []
    for i in range(n_img):
        scene, img = draw_sample(rng, painter, size)
        c, b = cell_targets(scene)
        cells.append(c)
        boxes.append(b)
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
    return torch.stack(pixels), torch.tensor(img_index), after, targets, torch.stack(cells), torch.stack(boxes)
