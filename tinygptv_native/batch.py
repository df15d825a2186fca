"""Answering many items: questions about a folder or a list of images (``tinygptv batch``) and the
benchmark items of ``tinygptv eval``.

Items go to the model from ``n_parallel`` threads, so the engine decodes that many sequences together;
the records are written to a JSONL file in input order as soon as every earlier one is done, so an
interrupted run leaves a clean prefix and the next run carries on after it. A failing item (an
unreadable picture) becomes a record with an ``error`` field; the run goes on.
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
ITEM_ERRORS = (ValueError, OSError, RuntimeError)  # ImageError and ContextOverflowError are among them


class Progress:
    """A one-line progress bar on stderr: done/total, rate and time left. Off when stderr is not a
    terminal, unless forced."""

    def __init__(self, total: int, *, done: int = 0, desc: str = "", enabled: Optional[bool] = None,
                 stream=None):
        self.total, self.done, self.desc = total, done, desc
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start_done = done
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._lock = threading.Lock()

    @staticmethod
    def _clock(s: float) -> str:
        s = int(round(s))
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"

    def line(self) -> str:
        el = time.perf_counter() - self.t0
        new = self.done - self.start_done
        rate = new / el if el > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else None
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * 24)
        eta = self._clock(left) if left is not None else "?"
        return (f"{self.desc}[{bar:24s}] {self.done}/{self.total} {frac * 100:5.1f}% "
                f"{rate:6.2f} items/s elapsed {self._clock(el)} ETA {eta}")

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.perf_counter()
            if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
                self._last = now
                self.stream.write("\r" + self.line())
                self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()


# ---- the output file ----------------------------------------------------------------------------

def read_records(path: str) -> List[dict]:
    """The complete records of a JSONL output (a torn last line, from an interrupted run, is cut off)."""
    if not os.path.exists(path):
        return []
    out: List[dict] = []
    good = 0
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
        pos += len(line)
        good = pos
    if good != len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return out


class OrderedWriter:
    """Writes records as lines of a JSONL file in the order of their slots, whatever order they come in."""

    def __init__(self, path: str, n: int, append: bool = True):
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        self.f = open(path, "a" if append else "w", encoding="utf-8")
        self.n = n
        self.next = 0
        self.pending: Dict[int, dict] = {}
        self.lock = threading.Lock()

    def put(self, slot: int, record: dict) -> None:
        with self.lock:
            self.pending[slot] = record
            while self.next in self.pending:
                self.f.write(json.dumps(self.pending.pop(self.next), ensure_ascii=False) + "\n")
                self.next += 1
            self.f.flush()

    def close(self) -> None:
        self.f.close()


def run_items(items: Sequence[Any], fn: Callable[[Any], dict], writer: Optional[OrderedWriter], *,
              workers: int, progress: Optional[Progress] = None) -> List[dict]:
    """fn(item) for every item from ``workers`` threads; records written in order (and returned)."""
    out: List[Optional[dict]] = [None] * len(items)
    if not items:
        return []
    with cf.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tinygptv-batch") as ex:
        futs = {ex.submit(fn, it): i for i, it in enumerate(items)}
        try:
            for fut in cf.as_completed(futs):
                i = futs[fut]
                rec = fut.result()
                out[i] = rec
                if writer is not None:
                    writer.put(i, rec)
                if progress is not None:
                    progress.update()
        except BaseException:
            for f in futs:
                f.cancel()
            raise
    return [r for r in out if r is not None]


# ---- batch items --------------------------------------------------------------------------------

def read_batch_input(path: str, question: Optional[str] = None) -> Tuple[List[dict], str]:
    """The items of a JSONL or CSV file (fields ``image`` and ``question``, more kept), or of a folder of
    pictures (each with ``question``). Returns the items and the folder their image paths are relative to."""
    if os.path.isdir(path):
        if not question:
            raise ValueError("a folder of pictures needs --question")
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS)
                       and os.path.isfile(os.path.join(path, n)))
        return [{"image": n, "question": question} for n in names], path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input not found: '{path}'")
    base = os.path.dirname(os.path.abspath(path))
    items: List[dict] = []
    if path.lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                items.append(dict(row))
    else:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e})") from None
                if not isinstance(d, dict):
                    raise ValueError(f"{path}:{n}: an item must be a JSON object")
                items.append(d)
    for n, d in enumerate(items, 1):
        if not d.get("question"):
            if not question:
                raise ValueError(f"{path}: item {n} has no 'question' (or give --question for all)")
            d["question"] = question
        if "image" not in d:
            d["image"] = None  # a text-only question
    return items, base


@dataclass
class BatchSettings:
    """How batch items are answered (picklable, for Ray actors)."""
    base_dir: str = "."
    max_new_tokens: Optional[int] = None
    temperature: float = 0.0
    seed: Optional[int] = None
    system: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)  # more sampling settings for chat()


def answer_item(model, item: dict, s: BatchSettings) -> dict:
    """The item with ``answer`` added, or ``error`` when it could not be answered."""
    rec = dict(item)
    img = item.get("image")
    path = None if img in (None, "") else (img if os.path.isabs(str(img)) else os.path.join(s.base_dir, str(img)))
    try:
        chat = model.new_chat(system=s.system)
        res = chat.ask(str(item["question"]), image=path, return_result=True, max_new_tokens=s.max_new_tokens,
                       temperature=s.temperature, seed=s.seed, **s.extra)
        rec["answer"] = res.text.strip()
    except ITEM_ERRORS as e:
        rec["error"] = f"{type(e).__name__}: {e}"
    return rec


def resume_batch(out_path: str, items: Sequence[dict], overwrite: bool) -> int:
    """How many items the output already answers (its records are the input's first ones, in order)."""
    if overwrite or not os.path.exists(out_path):
        if overwrite and os.path.exists(out_path):
            os.remove(out_path)
        return 0
    done = read_records(out_path)
    if len(done) > len(items):
        raise ValueError(f"'{out_path}' holds {len(done)} records, more than the {len(items)} items of the input; "
                         f"use --overwrite or another --output")
    for i, r in enumerate(done):
        if r.get("image") != items[i].get("image") or r.get("question") != items[i].get("question"):
            raise ValueError(f"'{out_path}' line {i + 1} is not the answer to item {i + 1} of this input; use "
                             f"--overwrite or another --output")
    return len(done)



# ---- jobs: what a worker needs to answer items (plain data, so Ray can ship it) -----------------

def job_spec(kind: str, model_path: str, *, task: Optional[str] = None, n_threads: Optional[int] = None,
             n_ctx: int = 2048, n_parallel: int = 4, seed: Optional[int] = None,
             max_new_tokens: Optional[int] = None, settings: Optional[BatchSettings] = None, device: str = "auto",
             gpu: Optional[int] = None, gpu_layers: Optional[int] = None) -> dict:
    if kind not in ("eval", "batch"):
        raise ValueError(f"unknown job kind {kind!r}")
    return {"kind": kind, "model": str(model_path), "task": task, "n_threads": n_threads, "n_ctx": int(n_ctx),
            "n_parallel": int(n_parallel), "seed": seed, "max_new_tokens": max_new_tokens,
            "settings": asdict(settings) if settings is not None else None, "device": device, "gpu": gpu,
            "gpu_layers": gpu_layers}


def load_job_model(spec: dict):
    from .model import Model
    return Model(spec["model"], n_threads=spec["n_threads"], n_ctx=spec["n_ctx"], n_parallel=spec["n_parallel"],
                 seed=spec["seed"], device=spec.get("device", "auto"), gpu=spec.get("gpu"),
                 gpu_layers=spec.get("gpu_layers"))


def item_function(model, spec: dict) -> Callable[[dict], dict]:
    """fn(item) -> record for the job; never raises for one bad item."""
    if spec["kind"] == "eval":
        from .evaluation import MAX_NEW_TOKENS, error_record, evaluate_item
        task = spec["task"]
        n_new = spec["max_new_tokens"] if spec["max_new_tokens"] is not None else MAX_NEW_TOKENS

        def fn(item: dict) -> dict:
            try:
                return evaluate_item(model, task, item, n_new)
            except ITEM_ERRORS as e:
                return error_record(task, item, e)
        return fn
    s = BatchSettings(**spec["settings"])
    return lambda item: answer_item(model, item, s)
