"""The model's engine: one native context (KV cache of several sequences, one thread pool) and the loop
that steps it, so that requests from any number of threads are decoded together.

Callers submit a prompt (pieces of token ids and image embeddings) and read its tokens as they come.
A background thread makes one ``Generator.step()`` call per step for every active sequence; the core
releases the GIL while it runs. Requests beyond the context's sequences wait for a free one.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from . import _core

Piece = Union[List[int], "_core.ImageEmbedding"]

_END = object()
_IDLE_EXIT_S = 2.0


class Event(NamedTuple):
    """What one step gave a request: a token of the answer (or -1), text now safe to show, and with
    ``n_probs`` the token's log-probability and the most probable ids [(id, logprob)]."""
    token: int
    text: str
    logprob: float = 0.0
    top: Optional[List[Tuple[int, float]]] = None


@dataclass
class SamplingParams:
    """Sampling settings, defaults from the core's sampler. temperature == 0 means greedy (argmax)."""
    temperature: float = field(default_factory=lambda: _core.sampling_defaults()["temperature"])
    top_k: int = field(default_factory=lambda: _core.sampling_defaults()["top_k"])
    top_p: float = field(default_factory=lambda: _core.sampling_defaults()["top_p"])
    min_p: float = field(default_factory=lambda: _core.sampling_defaults()["min_p"])
    repetition_penalty: float = field(default_factory=lambda: _core.sampling_defaults()["repetition_penalty"])
    penalty_last_n: int = field(default_factory=lambda: _core.sampling_defaults()["penalty_last_n"])
    seed: Optional[int] = None

    def check(self) -> "SamplingParams":
        """Raises ValueError naming the first bad setting (the core's rules, the only ones)."""
        _core.check_sampling(float(self.temperature), int(self.top_k), float(self.top_p), float(self.min_p),
                             float(self.repetition_penalty), int(self.penalty_last_n))
        return self


def check_max_new_tokens(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__") or int(n) < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {n!r}")
    return int(n)


class Request:
    """One prompt being answered. Iterate ``events()`` for (token, text) pairs; ``cancel()`` stops it."""

    def __init__(self, engine: "Engine", prompt: Sequence[Piece], params: SamplingParams, max_new_tokens: int,
                 stop_strings: Sequence[str], stop_ids: Sequence[int], use_eos: bool, penalty_history: Sequence[int],
                 n_probs: int = 0):
        self._engine = engine
        self.prompt = list(prompt)
        self.params = params
        self.max_new_tokens = max_new_tokens
        self.stop_strings = [s for s in stop_strings if s]
        self.stop_ids = [int(t) for t in stop_ids]
        self.use_eos = use_eos
        self.penalty_history = [int(t) for t in penalty_history]
        self.n_probs = int(n_probs)
        self.seq = -1
        self.ticket = 0                       # names this request in the engine's events
        self.cached = 0                       # prompt positions the sequence's cache already held
        self.n_prompt = sum(p.n_rows if hasattr(p, "n_rows") else len(p) for p in self.prompt)
        self.prompt_done = 0                  # prompt positions in the cache so far (progress of a long prompt)
        self.tokens: List[int] = []           # the answer's tokens so far
        self.finish_reason: Optional[str] = None
        self.t_submit = time.perf_counter()
        self.t_first: Optional[float] = None  # the first step that produced something (the prompt is done)
        self.t_end: Optional[float] = None
        self.keep_prompt_logits = False       # copy the logits at the prompt's end (tests, inspection)
        self.prompt_logits = None
        self._q: "queue.SimpleQueue" = queue.SimpleQueue()
        self._cancelled = False

    def _core_args(self) -> dict:
        import os
        p = self.params
        seed = p.seed if p.seed is not None else int.from_bytes(os.urandom(8), "little")
        return dict(max_new_tokens=self.max_new_tokens, temperature=float(p.temperature), top_k=int(p.top_k),
                    top_p=float(p.top_p), min_p=float(p.min_p), repetition_penalty=float(p.repetition_penalty),
                    penalty_last_n=int(p.penalty_last_n), seed=int(seed) & 0xFFFFFFFFFFFFFFFF,
                    stop_ids=self.stop_ids, stop_strings=self.stop_strings, use_eos=self.use_eos,
                    penalty_history=self.penalty_history, n_probs=self.n_probs)

    def events(self) -> Iterator[Event]:
        """Events as the engine produces them, until the answer ends. Closing the iterator
        early (or an exception in the consumer, KeyboardInterrupt included) cancels the request."""
        try:
            while True:
                item = self._q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if self.finish_reason is None:
                self.cancel()
                # wait for the loop to acknowledge (a step at most), unless this is the loop's own thread
                # (a dropped stream collected there)
                while self.finish_reason is None and threading.current_thread() is not self._engine._thread:
                    item = self._q.get()
                    if item is _END or isinstance(item, BaseException):
                        break

    def cancel(self) -> None:
        self._engine._cancel(self)

    @property
    def prompt_ms(self) -> float:
        t = self.t_first if self.t_first is not None else self.t_end
        return (t - self.t_submit) * 1e3 if t is not None else 0.0

    @property
    def generation_ms(self) -> float:
        if self.t_first is None or self.t_end is None:
            return 0.0
        return (self.t_end - self.t_first) * 1e3


class Engine:
    """A native Context of ``n_seq`` sequences and the thread that steps its Generator."""

    def __init__(self, core_model: "_core.Model", tokenizer: "_core.Tokenizer", *, n_ctx: int, n_seq: int,
                 n_threads: int, kv_f16: bool, n_batch: int = 512, image_cache_mb: float = 64.0,
                 gpu: Optional[int] = None, gpu_layers: Optional[int] = None):
        self.ctx = _core.Context(core_model, int(n_ctx), int(n_seq), int(n_threads), bool(kv_f16),
                                 float(image_cache_mb), -1 if gpu is None else int(gpu),
                                 -1 if gpu_layers is None else int(gpu_layers))
        self.gen = _core.Generator(self.ctx, tokenizer, int(n_batch))
        self.n_ctx = int(n_ctx)
        self.n_seq = int(n_seq)
        self._cv = threading.Condition()
        self._waiting: List[Request] = []
        self._running: dict = {}   # sequence -> the request it answers now
        self._tickets: dict = {}   # ticket -> request: events name their request by ticket
        self._cancels: List[Request] = []
        self._reserved: set = set()
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a free sequence."""
        with self._cv:
            return len(self._waiting)

    @property
    def n_busy(self) -> int:
        """Sequences answering a request now."""
        with self._cv:
            return len(self._running)

    # ---- requests ----------------------------------------------------------------------------
    def submit(self, prompt: Sequence[Piece], params: SamplingParams, max_new_tokens: int, *,
               stop_strings: Sequence[str] = (), stop_ids: Sequence[int] = (), use_eos: bool = True,
               penalty_history: Sequence[int] = (), keep_prompt_logits: bool = False, n_probs: int = 0) -> Request:
        """Starts answering a prompt. A bad request raises here (nothing changes); a request that finds
        every sequence busy waits for one (its errors then come out of ``events()``)."""
        params.check()
        req = Request(self, prompt, params, check_max_new_tokens(max_new_tokens), stop_strings, stop_ids, use_eos,
                      penalty_history, n_probs)
        req.keep_prompt_logits = keep_prompt_logits
        with self._cv:
            if self._closed:
                raise RuntimeError("the model's engine is closed")
            if not self._waiting and self.gen.has_free_slot:
                self._start(req)  # raises on a bad request
            else:
                self._waiting.append(req)
            self._ensure_thread()
            self._cv.notify_all()
        return req

    def _start(self, req: Request) -> None:
        req.seq, req.cached, req.ticket = self.gen.submit(req.prompt, **req._core_args())
        req.prompt_done = req.cached
        req.t_submit = time.perf_counter()
        self._running[req.seq] = req
        self._tickets[req.ticket] = req

    def _cancel(self, req: Request) -> None:
        with self._cv:
            if req.finish_reason is not None or req._cancelled:
                return
            req._cancelled = True
            if req in self._waiting:
                self._waiting.remove(req)
                self._finish(req, "interrupted")
                req._q.put(_END)
                return
            self._cancels.append(req)
            self._cv.notify_all()

    def _finish(self, req: Request, reason: str) -> None:
        req.finish_reason = reason
        req.t_end = time.perf_counter()

    # ---- the loop ----------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="tinygptv-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cv:
                idle_since = time.monotonic()
                while not self._running and not self._waiting and not self._cancels:
                    # an idle engine lets its thread go (a later request starts another), so that a
                    # Model nobody uses any more can be collected
                    if self._closed or time.monotonic() - idle_since > _IDLE_EXIT_S:
                        self._thread = None
                        return
                    self._cv.wait(timeout=0.5)
                for req in self._cancels:
                    if req.finish_reason is None and req.seq >= 0 and self._running.get(req.seq) is req:
                        self._deliver(self.gen.cancel(req.seq))
                self._cancels.clear()
                while self._waiting and self.gen.has_free_slot:
                    req = self._waiting.pop(0)
                    try:
                        self._start(req)
                    except Exception as e:  # a bad request: its consumer gets the error
                        self._finish(req, "error")
                        req._q.put(e)
                        req._q.put(_END)
                if not self._running:
                    continue
            try:
                events = self.gen.step()
            except Exception as e:  # e.g. out of memory: every running request ends with the error
                with self._cv:
                    for req in list(self._running.values()):
                        try:
                            self.gen.cancel(req.seq)
                        except Exception:  # it had ended in the failed step
                            pass
                        self._finish(req, "error")
                        req._q.put(e)
                        req._q.put(_END)
                    self._running.clear()
                    self._tickets.clear()
                continue
            with self._cv:
                for ev in events:
                    self._deliver(ev)
                for req in self._running.values():
                    if req.t_first is None:
                        req.prompt_done = self.ctx.n_past(req.seq)

    def _deliver(self, ev) -> None:
        # By ticket, not by sequence: a request that ends in a step frees its sequence at once, and a
        # submit() before the events are delivered may take it for another request.
        seq, tok, text, finished, reason, logprob, top, ticket = ev
        req = self._tickets.get(ticket)
        if req is None or req.finish_reason is not None:
            return
        now = time.perf_counter()
        if req.t_first is None:
            req.t_first = now
            if req.keep_prompt_logits:
                req.prompt_logits = self.gen.prompt_logits(seq)
        if tok >= 0:
            req.tokens.append(tok)
        if tok >= 0 or text:
            req._q.put(Event(tok, text, logprob, top))
        if finished:
            if self._running.get(seq) is req:
                del self._running[seq]
            self._tickets.pop(ticket, None)
            self._finish(req, reason)
            req._q.put(_END)

    # ---- direct use of a sequence (logits of a fresh evaluation) ------------------------------
    def reserve(self) -> int:
        """A free sequence taken out of the generator's use until release(); waits for one."""
        while True:
            with self._cv:
                seq = self.gen.reserve() if self.gen.has_free_slot else -1
                if seq >= 0:
                    return seq
                self._cv.wait(timeout=0.05)

    def release(self, seq: int) -> None:
        with self._cv:
            self.gen.release(seq)
            self._cv.notify_all()

    def close(self, timeout: float = 2.0) -> None:
        """Lets the stepping thread end once nothing is running (a closed engine takes no new request)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
