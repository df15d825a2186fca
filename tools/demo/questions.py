"""Questions with deterministic, unambiguous answers about a shapes scene, and the chat template.

Only questions whose answer is unambiguous are asked: "What color is the circle?" only when the
scene holds exactly one circle, "[refer] where is the green triangle?" only when exactly one green
triangle exists, and so on. Each question type has several phrasings (paraphrases, British
spellings, TinyGPT-V's task tags); the first phrasing is the canonical one. Boxes are TinyGPT-V's
`{<x1><y1><x2><y2>}` on the 0..100 grid; labelled boxes are `<p>label</p> {box}`, several boxes of
one label are joined by `<delim>` (MiniGPT-v2's output format).
"""
from __future__ import annotations

import re

import numpy as np

from shapes import COLORS, KINDS, Scene, Shape

# TinyGPT-V stage-4 chat template (demo_v2.py): no BOS, "<s>" is plain text. A later turn of a chat
# follows the previous answer directly (the engine's answer_suffix is "").
PROMPT_TEMPLATE = "<s>[INST] <Img><ImageHere></Img> {prompt} [/INST]"
TURN_TEMPLATE = "<s>[INST] {prompt} [/INST]"
IMAGE_MARK = "<ImageHere>"
END_SYM = "###"

QTYPES = ("color", "shape", "count", "exists", "describe", "refer", "detection", "grounding", "identify",
          "refuse")
BOX_TYPES = ("refer", "detection", "grounding")   # answers holding boxes, scored by IoU
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
TAGS = ("[vqa]", "[caption]", "[grounding]", "[refer]", "[detection]", "[identify]")
# Tags of TinyGPT-V/MiniGPT-v2 tasks the demo was not taught (and a few made up): a fixed answer.
OTHER_TAGS = ("[reason]", "[ocr]", "[translate]", "[story]", "[count]", "[task]", "[segment]", "[poem]")
OTHER_TEXTS = ("What is written here?", "Tell me a story about this picture.", "Why is the sky blue?",
               "Describe the image.", "where is the dog?")
REFUSAL = "Sorry, I can only answer [vqa], [caption], [grounding], [refer], [detection] and [identify] about shapes."

PHRASES = {
    "color": ("What color is the {k}?", "What colour is the {k}?", "Which color is the {k}?",
              "What is the colour of the {k}?", "What's the color of the {k}?", "Tell me the colour of the {k}.",
              "what color is the {k}", "[vqa] What color is the {k}?", "[vqa] What colour is the {k}?"),
    "shape": ("What shape is the {c} object?", "What shape is the {c} one?", "Which shape is {c}?",
              "What is the {c} shape?", "What kind of shape is the {c} object?", "what shape is the {c} thing",
              "[vqa] What shape is the {c} object?"),
    "count": ("How many shapes are there?", "How many shapes?", "How many objects are in the picture?",
              "Count the shapes.", "How many shapes can you see?", "how many shapes are there",
              "[vqa] How many shapes are there?"),
    "exists": ("Is there a {c} {k}?", "Is there a {c} {k} in the image?", "Do you see a {c} {k}?",
               "Can you see a {c} {k}?", "Is there any {c} {k}?", "is there a {c} {k}",
               "[vqa] Is there a {c} {k}?"),
    "describe": ("Describe the image.", "What is in the picture?", "What do you see?", "Describe this picture.",
                 "What is in this image?", "[caption] Describe the image.", "[caption] Briefly describe this image.",
                 "[caption]", "[vqa] What is in the picture?"),
    "refer": ("[refer] where is the {c} {k}?", "[refer] the {c} {k}", "[refer] {c} {k}",
              "[refer] Where is the {c} {k}?", "Where is the {c} {k}?"),
    "detection": ("[detection] {l}", "[detection] {l}s", "[detection] the {l}"),
    "grounding": ("[grounding] describe this image in detail", "[grounding] Describe the image.",
                  "[grounding] what is in the picture?", "[grounding]"),
    "identify": ("[identify] what is this {b}", "[identify] {b}", "[identify] what is in {b}"),
}


def prompt_segments(question: str) -> tuple[str, str]:
    """The text before and after the image embeddings (first turn)."""
    before, after = PROMPT_TEMPLATE.format(prompt=question).split(IMAGE_MARK)
    return before, after


def turn_text(question: str) -> str:
    """The text of a later turn (after the previous answer)."""
    return TURN_TEMPLATE.format(prompt=question)


def box_of(s: Shape) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = s.bbox()
    return tuple(int(np.clip(round(v * 100), 0, 100)) for v in (x0, y0, x1, y1))


def format_box(box) -> str:
    return "{" + "".join(f"<{v}>" for v in box) + "}"


def parse_box(text: str):
    """Parses `{<x1><y1><x2><y2>}`; returns None when the text is not such a box."""
    t = text.strip()
    if not (t.startswith("{<") and t.endswith(">}")):
        return None
    parts = t[2:-2].split("><")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


_BOX = re.compile(r"\{<(\d+)><(\d+)><(\d+)><(\d+)>\}")


def split_boxes(text: str) -> tuple[str, list[tuple[int, int, int, int]]]:
    """(the text with every box replaced by `{}`, the boxes in order)."""
    boxes = [tuple(int(g) for g in m.groups()) for m in _BOX.finditer(text)]
    return _BOX.sub("{}", text), boxes


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def is_right(qtype: str, predicted: str, expected: str) -> bool:
    """Exact match; for answers with boxes the same text around them and every box at IoU >= 0.5."""
    if qtype not in BOX_TYPES:
        return predicted == expected
    pt, pb = split_boxes(predicted)
    et, eb = split_boxes(expected)
    return pt == et and len(pb) == len(eb) and all(iou(p, e) >= 0.5 for p, e in zip(pb, eb))


def left_to_right(scene: Scene) -> list[Shape]:
    return sorted(scene.shapes, key=lambda s: s.cx)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(scene: Scene) -> str:
    """Canonical sentence: the shapes from left to right."""
    return _join([f"a {s.color} {s.kind}" for s in left_to_right(scene)])


def grounded(scene: Scene) -> str:
    """The [grounding] answer: the description with each shape's box."""
    return _join([f"<p>a {s.color} {s.kind}</p> {format_box(box_of(s))}" for s in left_to_right(scene)])


def candidates(scene: Scene, qtype: str) -> list[tuple[dict, str]]:
    """Every unambiguous (fields, answer) of one type for the scene; `fields` fill a phrasing."""
    sh = scene.shapes
    out: list[tuple[dict, str]] = []
    if qtype == "color":
        for k in KINDS:
            m = [s for s in sh if s.kind == k]
            if len(m) == 1:
                out.append(({"k": k}, m[0].color))
    elif qtype == "shape":
        for c in COLORS:
            m = [s for s in sh if s.color == c]
            if len(m) == 1:
                out.append(({"c": c}, m[0].kind))
    elif qtype == "count":
        out.append(({}, NUMBER_WORDS[len(sh)]))
    elif qtype == "exists":
        present = {(s.color, s.kind) for s in sh}
        for c in COLORS:
            for k in KINDS:
                out.append(({"c": c, "k": k}, "yes" if (c, k) in present else "no"))
    elif qtype == "describe":
        out.append(({}, describe(scene)))
    elif qtype == "refer":
        for s in sh:
            if sum(1 for o in sh if o.color == s.color and o.kind == s.kind) == 1:
                out.append(({"c": s.color, "k": s.kind}, format_box(box_of(s))))
    elif qtype == "detection":
        labels = {s.kind for s in sh} | {f"{s.color} {s.kind}" for s in sh}
        for label in sorted(labels):
            m = [s for s in left_to_right(scene) if label in (s.kind, f"{s.color} {s.kind}")]
            out.append(({"l": label}, f"<p>{label}</p> " + "<delim>".join(format_box(box_of(s)) for s in m)))
    elif qtype == "grounding":
        out.append(({}, grounded(scene)))
    elif qtype == "identify":
        for s in sh:
            out.append(({"b": format_box(box_of(s))}, f"a {s.color} {s.kind}"))
    elif qtype == "refuse":
        for tag in OTHER_TAGS:
            out.append(({"t": tag}, REFUSAL))
    else:
        raise ValueError(f"unknown question type {qtype!r}, expected one of {QTYPES}")
    return out


def phrase(qtype: str, fields: dict, rng: np.random.Generator | None = None) -> str:
    """A phrasing of the question: the canonical one without rng, else a random one."""
    if qtype == "refuse":   # an untaught tag before some question
        text = OTHER_TEXTS[0 if rng is None else int(rng.integers(len(OTHER_TEXTS)))]
        return f"{fields['t']} {text}"
    forms = PHRASES[qtype]
    return forms[0 if rng is None else int(rng.integers(len(forms)))].format(**fields)


def all_phrasings(qtype: str, fields: dict) -> list[str]:
    if qtype == "refuse":
        return [f"{fields['t']} {t}" for t in OTHER_TEXTS]
    return [f.format(**fields) for f in PHRASES[qtype]]


def sample_question(scene: Scene, rng: np.random.Generator, weights=None,
                    paraphrase: bool = True) -> tuple[str, str, str]:
    """(qtype, question, answer) drawn over the question types available for the scene (all types
    equally likely unless `weights`, which leave out the types they do not name). Yes/no questions are
    balanced: half ask about a shape that is there."""
    types = [t for t in QTYPES if candidates(scene, t) and (weights is None or weights.get(t, 0) > 0)]
    w = np.array([1.0 if weights is None else weights[t] for t in types])
    qtype = types[int(rng.choice(len(types), p=w / w.sum()))]
    cands = candidates(scene, qtype)
    if qtype == "exists":
        want = "yes" if rng.random() < 0.5 else "no"
        cands = [c for c in cands if c[1] == want]
    fields, a = cands[int(rng.integers(len(cands)))]
    return qtype, phrase(qtype, fields, rng if paraphrase else None), a


def sample_chat(scene: Scene, rng: np.random.Generator, n_turns: int, weights=None,
                paraphrase: bool = True) -> list[tuple[str, str, str]]:
    """n_turns questions of one chat about one picture, no question asked twice."""
    turns: list[tuple[str, str, str]] = []
    while len(turns) < n_turns:
        t = sample_question(scene, rng, weights, paraphrase)
        if all(t[1] != u[1] for u in turns):
            turns.append(t)
    return turns
