"""Batches for training: pictures, chats (one to three turns) and answer targets as tensors."""
from __future__ import annotations

import numpy as np
import torch

from model import pil_to_tensor
from questions import END_SYM, box_of, prompt_segments, sample_chat, turn_text
from shapes import COLORS, KINDS, Scene, Shape, draw_sample

# Harder question types are drawn more often in training.
TRAIN_WEIGHTS = {"color": 2.5, "shape": 1.5, "count": 0.7, "exists": 1.5, "describe": 1.0, "refer": 2.0,
                 "detection": 1.2, "grounding": 1.0, "identify": 1.0, "refuse": 0.25}
TURN_WEIGHTS = (0.4, 0.3, 0.3)   # chats of one, two, three questions


class Encoder:
    """Caches SentencePiece encodings of the distinct strings the generator produces."""

    def __init__(self, sp):
        self.sp = sp
        self.cache: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        ids = self.cache.get(text)
        if ids is None:
            ids = self.sp.encode(text)
            if len(self.cache) < 200_000:
                self.cache[text] = ids
        return ids


def prefix_ids(enc: Encoder) -> torch.Tensor:
    """The text before <ImageHere>; the same for every question."""
    return torch.tensor(enc(prompt_segments("x")[0]), dtype=torch.long)


def chat_rows(enc: Encoder, turns) -> tuple[list[int], list[int]]:
    """The token ids after the image of a chat [(qtype, question, answer), ...] as the engine sends them
    (an earlier answer is followed directly by the next turn's text: the engine drops the stop string),
    and the loss target of each position (-100 = none): every answer and the stop string after it."""
    ids: list[int] = []
    tgt: list[int] = []
    for i, (_, q, a) in enumerate(turns):
        text = enc(prompt_segments(q)[1] if i == 0 else turn_text(q))
        ans = enc(a)
        ids += text + ans
        # position p predicts token p + 1: the answer's tokens, then "###" after its last token
        tgt += [-100] * (len(text) - 1) + ans + enc(END_SYM)
    return ids, tgt


GRID = 4   # the Q-Former queries form a GRID x GRID board over the picture (training targets only)


def assign_cells(scene: Scene) -> list[tuple[int, int]]:
    """(shape index, board cell) pairs: each shape goes to the nearest free cell centre of a GRID x GRID
    board (row-major), pairs taken closest first (shapes lie anywhere, so two may fall in one cell)."""
    centres = (np.arange(GRID) + 0.5) / GRID
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    cells = np.stack([cx.ravel(), cy.ravel()], 1)                             # [G*G, 2]
    pts = np.array([[s.cx, s.cy] for s in scene.shapes])
    d = ((pts[:, None, :] - cells[None]) ** 2).sum(-1)                        # [n, G*G]
    pairs = []
    for _ in scene.shapes:
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        pairs.append((int(i), int(j)))
        d[i, :] = np.inf
        d[:, j] = np.inf
    return pairs


def query_targets(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """Per Q-Former query (a GRID x GRID board of cells, row-major): content class [GRID*GRID]
    (0 = nothing, 1 + 3 * colour + kind) and box on the 0..100 grid [GRID*GRID, 4] (-100 where none),
    the shapes given to cells by assign_cells. Targets of the training-only auxiliary heads, see train.py."""
    cls = torch.zeros(GRID * GRID, dtype=torch.long)
    box = torch.full((GRID * GRID, 4), -100, dtype=torch.long)
    for i, j in assign_cells(scene):
        s = scene.shapes[i]
        cls[j] = 1 + 3 * COLORS.index(s.color) + KINDS.index(s.kind)
        box[j] = torch.tensor(box_of(s))
    return cls, box


def shape_mask(s: Shape, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which of the points (x, y) (normalised picture coordinates) lie inside the shape."""
    if s.kind == "square":
        return (x >= s.x0) & (x < s.x1) & (y >= s.y0) & (y < s.y1)
    if s.kind == "circle":
        rx, ry = 0.5 * (s.x1 - s.x0), 0.5 * (s.y1 - s.y0)
        return ((x - s.cx) / rx) ** 2 + ((y - s.cy) / ry) ** 2 <= 1
    ax, ay = s.x0 + s.apex * (s.x1 - s.x0), s.y0
    pts = ((ax, ay), (s.x1, s.y1), (s.x0, s.y1))       # clockwise on screen (y down)
    inside = np.ones_like(x, dtype=bool)
    for (px, py), (qx, qy) in zip(pts, pts[1:] + pts[:1]):
        inside &= (qx - px) * (y - py) - (qy - py) * (x - px) >= 0
    return inside


def coverage(scene: Scene, size: int, patch: int, sub: int = 8) -> np.ndarray:
    """[n_shapes, n_patches]: the share of each ViT patch (size x size input, row-major) that each shape
    covers, from the scene's geometry on sub x sub points per patch."""
    n = size // patch
    t = (np.arange(n * sub) + 0.5) / (n * sub)
    y, x = np.meshgrid(t, t, indexing="ij")
    return np.stack([shape_mask(s, x, y).reshape(n, sub, n, sub).mean((1, 3)).ravel()
                     for s in scene.shapes]).astype(np.float32)


def patch_targets(scene: Scene, size: int, patch: int, full: float = 0.25, cov: np.ndarray | None = None) -> torch.Tensor:
    """Per ViT patch of a size x size input (row-major, CLS not included): what covers it, background
    (class 0) or a shape's colour x kind (1 + 3 * colour + kind) -> [n_patches, 13], rows summing to 1.
    A shape covering `full` of a patch or more counts fully, less in proportion (shapes are small next
    to a patch: a smallest one covers a tenth of one, and a target of 90% background would barely ask
    for its colour). The target of the training-only per-patch content head (see train.py)."""
    cov = coverage(scene, size, patch) if cov is None else cov
    fg = np.zeros((cov.shape[1], 1 + 3 * len(COLORS)), dtype=np.float32)
    for s, c in zip(scene.shapes, cov):
        fg[:, 1 + 3 * COLORS.index(s.color) + KINDS.index(s.kind)] += c / full
    fg /= np.maximum(1.0, fg.sum(1, keepdims=True))
    fg[:, 0] = 1 - fg.sum(1)
    return torch.from_numpy(fg)


def query_attention_targets(scene: Scene, size: int, patch: int, cov: np.ndarray | None = None) -> torch.Tensor:
    """[GRID*GRID, n_patches]: where each Q-Former query holding a shape (assign_cells) should look in
    the first cross-attention: the patches its shape covers, in proportion to the area covered. Rows of
    queries holding nothing are 0 (train.py gives them their cell's patches)."""
    cov = coverage(scene, size, patch) if cov is None else cov
    t = np.zeros((GRID * GRID, cov.shape[1]), dtype=np.float32)
    for i, j in assign_cells(scene):
        if cov[i].sum() > 0:
            t[j] = cov[i] / cov[i].sum()
    return torch.from_numpy(t)


def train_batch(rng: np.random.Generator, enc: Encoder, n_img: int, chats_per_img: int, size: int, n_query: int,
                patch: int = 16, weights: dict | None = None):
    """-> pixels [n_img,3,S,S], img_index [B], after_ids [B,L1], targets [B, L0+nq+L1] (-100 = no loss),
    query classes [n_img, GRID*GRID], query boxes [n_img, GRID*GRID, 4] (see query_targets),
    patch contents [n_img, P, 13] (see patch_targets), query attention [n_img, GRID*GRID, P]
    (see query_attention_targets), P = (S/patch)^2."""
    pixels, rows, img_index, cells, boxes, patches, attn = [], [], [], [], [], [], []
    for i in range(n_img):
        scene, img = draw_sample(rng)
        c, b = query_targets(scene)
        cells.append(c)
        boxes.append(b)
        cov = coverage(scene, size, patch)
        patches.append(patch_targets(scene, size, patch, cov=cov))
        attn.append(query_attention_targets(scene, size, patch, cov=cov))
        pixels.append(pil_to_tensor(img, size))
        for _ in range(chats_per_img):
            n_turns = 1 + int(rng.choice(len(TURN_WEIGHTS), p=TURN_WEIGHTS))
            rows.append(chat_rows(enc, sample_chat(scene, rng, n_turns, weights or TRAIN_WEIGHTS)))
            img_index.append(i)
    L0 = len(prefix_ids(enc))
    L1 = max(len(ids) for ids, _ in rows)
    after = torch.zeros(len(rows), L1, dtype=torch.long)
    targets = torch.full((len(rows), L0 + n_query + L1), -100, dtype=torch.long)
    for b, (ids, tgt) in enumerate(rows):
        after[b, : len(ids)] = torch.tensor(ids)
        targets[b, L0 + n_query: L0 + n_query + len(tgt)] = torch.tensor(tgt)
    return (torch.stack(pixels), torch.tensor(img_index), after, targets, torch.stack(cells), torch.stack(boxes),
            torch.stack(patches), torch.stack(attn))
