"""The zero-shot benchmarks of the TinyGPT-V paper: VSR, GQA, IconQA, VizWiz and Hateful Memes.

Data layouts, prompts and the first score of every item follow TinyGPT-V's own evaluation
(``eval_scripts/EVAL_README.md`` and ``eval_scripts/eval_vqa.py``), so that the paper's numbers can be
reproduced; the second score is the benchmark's own metric. See docs/eval.md.

* Generation tasks (GQA, VSR, VizWiz, Hateful Memes): the model's chat template with an empty system
  text (for a stage-4 file ``<s>[INST] <Img><ImageHere></Img> {prompt} [/INST]``), greedy decoding, no
  repetition penalty, at most 20 new tokens, stopping only at end-of-text, as the reference does.
* IconQA: no generation. The candidate answers are ranked by the model's likelihood, as the reference's
  ``multi_select`` does: prompt ``###Human: <Img><ImageHere></Img> {question} ###Assistant: `` after the
  BOS token, each candidate followed by "\\n", the mean log-probability of those tokens.
"""
from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from . import metrics as M

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model

TASKS = ("vsr", "gqa", "iconvqa", "vizwiz", "hm")
MAX_NEW_TOKENS = 20  # eval_configs/benchmark_evaluation.yaml, every task

SHORT_ANSWER = "[vqa] Based on the image, respond to this question with a short answer: {}"
PROMPTS = {
    "gqa": SHORT_ANSWER,
    "iconvqa": SHORT_ANSWER,
    "vizwiz": ("[vqa] The question is '{}' Based on the image, answer the question with a single word or phrase. "
               "and reply 'unanswerable' when the provided information is insufficient"),
    "hm": "This is an image writting '{}'. Is this image hateful? Answer yes or no. Answer:",
    "vsr": "[vqa] Based on the image, is this statement true or false? {}",
}
ICONQA_INSTRUCTION = "###Human: <Img><ImageHere></Img> {} ###Assistant: "
ICONQA_END = "\n"  # the reference model's end_sym in the benchmark configuration

# what each task's second score is
METRIC_NAMES = {"gqa": "exact match", "vsr": "accuracy", "vizwiz": "VQA accuracy", "iconvqa": "accuracy (sum)",
                "hm": "ROC-AUC"}


class DataError(ValueError):
    """The data folder does not hold the task's files, or an annotation is malformed."""


@dataclass(frozen=True)
class Layout:
    folder: str
    annotations: Tuple[str, ...]  # glob patterns inside the folder, the first that matches is used
    images: str


LAYOUTS = {
    "gqa": Layout("gqa", ("testdev_balanced_questions.json",), "gqa_images"),
    "hm": Layout("hateful_meme", ("dev.jsonl",), "hm_images"),
    "iconvqa": Layout("iconvqa", ("choose_text_val.json",), "iconvqa_images"),
    "vizwiz": Layout("vizwiz", ("val.json",), "vizwiz_images"),
    # a local copy of the test split of cambridgeltl/vsr_zeroshot
    "vsr": Layout("vsr", ("test.jsonl", "test.parquet", "vsr_zeroshot/test.jsonl", "vsr_zeroshot/test.parquet",
                          "data/test-*.parquet", "vsr_zeroshot/data/test-*.parquet", "*test*.jsonl",
                          "*test*.parquet"), "vsr_images"),
}


# ---- reading the data --------------------------------------------------------------------------

def task_paths(task: str, data: str, annotations: Optional[str] = None,
               images: Optional[str] = None) -> Tuple[str, str]:
    """(annotation file, image folder) of a task under the data folder (the folder holding ``gqa/``,
    ``vsr/``, ... or the task's own folder); ``annotations`` / ``images`` override."""
    if task not in LAYOUTS:
        raise DataError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    lay = LAYOUTS[task]
    root = os.path.join(data, lay.folder) if data and os.path.isdir(os.path.join(data, lay.folder)) else data
    if annotations is None:
        if not root or not os.path.isdir(root):
            raise DataError(f"data folder not found: '{data}'")
        for pat in lay.annotations:
            hits = sorted(glob.glob(os.path.join(root, pat)))
            if hits:
                annotations = hits[0]
                break
        else:
            raise DataError(f"{task}: no {' or '.join(lay.annotations[:2])} in '{root}' (expected the layout "
                            f"{lay.folder}/{lay.annotations[0]} + {lay.folder}/{lay.images}/)")
    if images is None:
        images = os.path.join(root if root else os.path.dirname(annotations), lay.images)
    return annotations, images


def _read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_jsonl(path: str) -> List[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not JSON ({e})") from None
    return out


def _read_table(path: str) -> List[dict]:
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"reading {path} needs pyarrow (pip install pyarrow), or give a .jsonl copy") from None
        return pq.read_table(path).to_pylist()
    return _read_jsonl(path)


def _need(d: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(d, dict):
        raise DataError(f"{where}: expected an object, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)} (has {', '.join(sorted(d)) or 'none'})")


def load_items(task: str, data: str, annotations: Optional[str] = None, images: Optional[str] = None) -> List[dict]:
    """The task's items in file order, each a JSON-ready dict with ``id``, ``image`` (a path) and the
    fields its scores need."""
    ann, img_dir = task_paths(task, data, annotations, images)
    items: List[dict] = []
    if task == "gqa":
        raw = _read_json(ann)
        if isinstance(raw, dict):  # the official file: {question id: {imageId, question, answer, ...}}
            for qid, q in raw.items():
                _need(q, ("imageId", "question", "answer"), f"{ann}[{qid}]")
                items.append({"id": str(qid), "image": os.path.join(img_dir, f"{q['imageId']}.jpg"),
                              "question": q["question"], "label": str(q["answer"])})
        else:  # the evaluation's list: [{image, question, answer}]
            for i, q in enumerate(raw):
                _need(q, ("image", "question", "answer"), f"{ann}[{i}]")
                items.append({"id": str(q.get("question_id", i)), "image": os.path.join(img_dir, str(q["image"])),
                              "question": q["question"], "label": str(q["answer"])})
    elif task == "hm":
        for i, q in enumerate(_read_jsonl(ann)):
            _need(q, ("img", "text", "label"), f"{ann}:{i + 1}")
            items.append({"id": str(q.get("id", i)), "image": os.path.join(img_dir, str(q["img"])),
                          "text": str(q["text"]), "label": int(q["label"])})
    elif task == "iconvqa":
        for i, q in enumerate(_read_json(ann)):
            _need(q, ("image_id", "question", "choices", "answer"), f"{ann}[{i}]")
            choices = [str(c) for c in q["choices"]]
            a = q["answer"]
            if isinstance(a, str) and not a.isdigit():
                if a not in choices:
                    raise DataError(f"{ann}[{i}]: the answer {a!r} is not one of the choices {choices}")
                a = choices.index(a)
            a = int(a)
            if not 0 <= a < len(choices):
                raise DataError(f"{ann}[{i}]: answer index {a} outside the {len(choices)} choices")
            items.append({"id": str(q.get("question_id", q["image_id"])),
                          "image": os.path.join(img_dir, str(q["image_id"]), "image.png"),
                          "question": q["question"], "choices": choices, "label": a})
    elif task == "vizwiz":
        for i, q in enumerate(_read_json(ann)):
            _need(q, ("image", "question", "answers"), f"{ann}[{i}]")
            answers = [a["answer"] if isinstance(a, dict) else a for a in q["answers"]]
            items.append({"id": str(q["image"]), "image": os.path.join(img_dir, str(q["image"])),
                          "question": q["question"], "answers": [str(a) for a in answers]})
    elif task == "vsr":
        for i, q in enumerate(_read_table(ann)):
            _need(q, ("image", "caption", "label"), f"{ann}[{i}]")
            name = str(q["image"])
            path = os.path.join(img_dir, "train2017", name)  # the reference looks in train2017/, then val2017/
            if not os.path.exists(path):
                path = os.path.join(img_dir, "val2017", name)
                if not os.path.exists(path) and os.path.exists(os.path.join(img_dir, name)):
                    path = os.path.join(img_dir, name)
            lab = q["label"]
            truth = lab in (1, True) or str(lab).lower() in ("1", "true")
            items.append({"id": str(q.get("id", i)), "image": path, "caption": str(q["caption"]),
                          "label": "true" if truth else "false"})
    else:  # pragma: no cover - task_paths checked it
        raise DataError(task)
    if len({it["id"] for it in items}) != len(items):  # ids must tell items apart (resuming)
        for i, it in enumerate(items):
            it["id"] = str(i)
    return items


def select(items: List[dict], limit: Optional[int], seed: Optional[int]) -> List[dict]:
    """``limit`` items: the first ones, or with ``seed`` a seeded random choice (kept in file order)."""
    if limit is None or limit >= len(items):
        return items
    if limit < 0:
        raise ValueError(f"--limit must be >= 0, got {limit}")
    if seed is None:
        return items[:limit]
    import random
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


# ---- prompts ----------------------------------------------------------------------------------

def question_text(task: str, item: dict) -> str:
    """The task's wording around the item's question (the user's text of the chat turn)."""
    field = {"hm": "text", "vsr": "caption"}.get(task, "question")
    return PROMPTS[task].format(item[field])


def _template_text(model: "Model", text: str) -> str:
    """The first chat turn as text (empty system text), the image as its placeholder."""
    from .chat import PROMPT_PLACEHOLDER
    t = model.chat_template.with_system("")
    return t.system + t.template.replace(PROMPT_PLACEHOLDER, text, 1)


def _chat_ids(model: "Model", text: str, image) -> Tuple[List[int], int, Any]:
    """A first chat turn with an empty system text, as token ids, the index the image goes before,
    and the image's embedding."""
    from .chat import Chat
    pieces, _ = Chat(model, system="")._turn_pieces(text, image)
    ids: List[int] = []
    at, emb = 0, None
    for p in pieces:
        if isinstance(p, list):
            ids.extend(p)
        else:
            at, emb = len(ids), p
    return ids, at, emb


def generate(model: "Model", text: str, image, max_new_tokens: int = MAX_NEW_TOKENS,
             keep_prompt_logits: bool = False):
    """The reference evaluation's generation: chat template with an empty system text, greedy, no
    repetition penalty, stopping at end-of-text only. Returns (text, logits at the prompt's end)."""
    from .chat import Chat
    from .engine import SamplingParams
    from .model import GenerationResult, _results
    pieces, _ = Chat(model, system="")._turn_pieces(text, image)
    params = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=0)
    req = model.engine.submit(pieces, params, max_new_tokens, stop_strings=[], stop_ids=[], use_eos=True,
                              keep_prompt_logits=keep_prompt_logits)
    out = "".join(_results(req, GenerationResult()))
    return out, req.prompt_logits


def _first_token_ids(model: "Model", words: Sequence[str]) -> List[int]:
    """The distinct ids of the spellings that are one token each; else the first token of the first."""
    ids = []
    for w in words:
        t = model.tokenize(w)
        if len(t) == 1 and t[0] not in ids:
            ids.append(t[0])
    if not ids:
        ids = [model.tokenize(words[0])[0]]
    return ids


YES_SPELLINGS = ("yes", "Yes", " yes", " Yes", "YES")
NO_SPELLINGS = ("no", "No", " no", " No", "NO")


def yes_probability(model: "Model", logits) -> float:
    """p(yes) / (p(yes) + p(no)) of the answer's first token, each word summed over its one-token
    spellings."""
    import numpy as np
    x = np.asarray(logits, dtype=np.float64)
    p = np.exp(x - x.max())
    p /= p.sum()
    yes = _first_token_ids(model, YES_SPELLINGS)
    no = [i for i in _first_token_ids(model, NO_SPELLINGS) if i not in yes]
    py, pn = float(p[yes].sum()), float(p[no].sum()) if no else 0.0
    return py / (py + pn) if py + pn > 0 else 0.5


def iconqa_reference_prompt(model: "Model", text: str) -> Tuple[List[int], int]:
    """The reference's IconQA prompt as ids (BOS first, as its forward() adds it) and where the image goes."""
    from .chat import IMAGE_PLACEHOLDER
    pre, post = ICONQA_INSTRUCTION.format(text).split(IMAGE_PLACEHOLDER, 1)
    bos = model.metadata.get("tokenizer.ggml.bos_token_id")
    ids = ([int(bos)] if bos is not None else []) + model.tokenize(pre)
    at = len(ids)
    return ids + model.tokenize(post), at


def rank_candidates(model: "Model", text: str, image, choices: Sequence[str]) -> Dict[str, List[float]]:
    """Both rankings of IconQA's candidates: ``reference`` the mean log-probability of candidate + "\\n"
    after the reference prompt; ``chat`` the total log-probability of the candidate as the answer of
    the chat template (empty system text)."""
    emb = model.encode_image_embedding(image)
    ids, at = iconqa_reference_prompt(model, text)
    cands = [model.tokenize(c + ICONQA_END) for c in choices]
    sums = model.score(ids, cands, image=emb, image_at=at)
    ref = [s / len(c) for s, c in zip(sums, cands)]
    cids, cat, _ = _chat_ids(model, text, emb)
    chat = model.score(cids, [model.tokenize(c) if c else model.tokenize(" ") for c in choices], image=emb,
                       image_at=cat)
    return {"reference": ref, "chat": chat}


# ---- one item ---------------------------------------------------------------------------------

def evaluate_item(model: "Model", task: str, item: dict, max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """The record of one item: its id, image, prompt, answer, and ``paper`` (the reference evaluation's
    score) and ``metric`` (the benchmark's own; for Hateful Memes the probability of "yes")."""
    text = question_text(task, item)
    rec: Dict[str, Any] = {"id": item["id"], "task": task, "image": item["image"]}
    if task == "iconvqa":
        rec["prompt"] = ICONQA_INSTRUCTION.format(text)
        rec["choices"] = item["choices"]
        rec["label"] = item["label"]
        r = rank_candidates(model, text, item["image"], item["choices"])
        top, top_chat = M.argmax_first(r["reference"]), M.argmax_first(r["chat"])
        rec.update(answer=item["choices"][top], answer_index=top, scores=r["reference"],
                   chat_answer_index=top_chat, chat_scores=r["chat"],
                   paper=float(top == item["label"]), metric=float(top_chat == item["label"]))
        return rec
    rec["prompt"] = _template_text(model, text)
    raw, logits = generate(model, text, item["image"], max_new_tokens, keep_prompt_logits=task == "hm")
    raw = M.reference_clean(raw)
    short = M.reference_short_answer(raw)
    rec["raw"] = raw
    rec["answer"] = short
    if task == "gqa":
        rec["label"] = item["label"]
        rec.update(paper=M.paper_gqa(raw, item["label"]), metric=M.exact_match(short, item["label"]))
    elif task == "vsr":
        rec["label"] = item["label"]
        yn = M.yes_no(short)
        rec.update(paper=M.paper_vsr(raw, item["label"]),
                   metric=float(yn is not None and yn == (item["label"] == "true")))
    elif task == "vizwiz":
        rec["answers"] = item["answers"]
        rec.update(paper=M.paper_vizwiz(short, item["answers"]), metric=M.vqa_accuracy(short, item["answers"]))
    elif task == "hm":
        rec["label"] = item["label"]
        pred = M.paper_hm_prediction(short)
        rec.update(prediction=pred, paper=float(pred == item["label"]), metric=yes_probability(model, logits))
    return rec


def error_record(task: str, item: dict, err: BaseException) -> dict:
    return {"id": item["id"], "task": task, "image": item["image"], "error": f"{type(err).__name__}: {err}"}


# ---- the summary ------------------------------------------------------------------------------

def summarize(task: str, records: Sequence[dict]) -> Dict[str, Any]:
    """The task's two scores over the records (in %; ROC-AUC for Hateful Memes as a fraction x 100).
    Items that failed count as wrong in both, as an unreadable picture would in the reference (which
    stops instead)."""
    n = len(records)
    ok = [r for r in records if "error" not in r]
    paper = M.mean([float(r.get("paper", 0.0)) for r in records]) * 100 if n else 0.0
    out: Dict[str, Any] = {"task": task, "items": n, "errors": n - len(ok), "paper": paper,
                           "metric_name": METRIC_NAMES[task]}
    if task == "hm":
        auc = M.roc_auc([r["label"] for r in ok], [r["metric"] for r in ok])
        out["metric"] = None if auc is None else auc * 100
        out["answered"] = sum(1 for r in ok if r.get("prediction") is not None)
    else:
        out["metric"] = M.mean([float(r.get("metric", 0.0)) for r in records]) * 100 if n else 0.0
    return out


def format_summary(rows: Sequence[Dict[str, Any]]) -> str:
    lines = [f"{'task':8s} {'items':>6s} {'errors':>6s} {'paper':>8s}  {'metric':>8s}  metric name",
             "-" * 60]
    for s in rows:
        m = "n/a" if s["metric"] is None or (isinstance(s["metric"], float) and math.isnan(s["metric"])) \
            else f"{s['metric']:.2f}"
        lines.append(f"{s['task']:8s} {s['items']:6d} {s['errors']:6d} {s['paper']:8.2f}  {m:>8s}  "
                     f"{s['metric_name']}")
    return "\n".join(lines)
