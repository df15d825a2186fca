"""Conversations about an image: prompt assembly from the model's chat template, and the Chat class.

A prompt is built from the template stored in the GGUF file (``tinygptv.chat.*``):

* first turn: ``system + template``, where ``{prompt}`` becomes the user's text and ``<ImageHere>`` the
  image embeddings (without an image, the ``<Img><ImageHere></Img> `` span is left out);
* later turns: the previous answer, then ``answer_suffix + turn_template`` (an image sent with a later
  turn goes in front of the text, wrapped as in the first turn).

The template is split on its own ``<ImageHere>`` *before* the user's text is put in, and the text is
tokenized as plain text, so a user who types ``<ImageHere>``, ``###`` or ``<|endoftext|>`` gets those
characters, not a second image, an early end of the turn or a control token. Each text piece between
images is tokenized as one string, as the reference implementation does.

A Chat owns one native session (KV cache). The image is encoded once and its embeddings stay in the
cache: a follow-up question costs only its own tokens. The cache always holds a prefix of the recorded
conversation (``Chat.tokens()``); tokens recorded but not yet evaluated (the tail of the last answer) are
fed with the next question.

A new conversation reuses what it shares with the one before: ``Chat.reset()`` keeps the first text
piece (the system text up to the image) in the cache, and ``Model.chat()`` hands its finished session
to the next ``Model.chat()`` the same way. The next first turn evaluates only from where its token ids
stop matching (``GenerationResult.cached_tokens`` counts the reused positions). The logits are the same
as without reuse: every position is computed with the same arithmetic whether it is evaluated in one
batch or in two (each batch of at least two positions).
"""
from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._logging import logger

if TYPE_CHECKING:  # pragma: no cover
    from .model import GenerationResult, Model

IMAGE_PLACEHOLDER = "<ImageHere>"
PROMPT_PLACEHOLDER = "{prompt}"
TASK_TAGS = ("[vqa]", "[caption]", "[refer]", "[grounding]", "[identify]", "[detection]")


class _Image:
    """Marks where image embeddings go in a list of prompt pieces."""
    __slots__ = ()

    def __repr__(self) -> str:
        return "IMAGE"


IMAGE = _Image()
Piece = Union[str, _Image]


@dataclass(frozen=True)
class ChatTemplate:
    """The prompt format and stop conditions of a model (from its ``tinygptv.chat.*`` metadata)."""
    system: str = ""
    template: str = "Instruct: {prompt}\nOutput:"
    turn_template: str = "\nInstruct: {prompt}\nOutput:"
    answer_suffix: str = ""
    stop_strings: Tuple[str, ...] = ()
    stop_ids: Tuple[int, ...] = ()

    @classmethod
    def from_metadata(cls, md: Dict[str, Any]) -> "ChatTemplate":
        arch = md.get("general.architecture", "")
        p = f"{arch}.chat."
        if p + "template" not in md:  # a plain language model: Phi-2's documented QA format
            return cls(stop_strings=("Instruct:",))
        t = cls(system=str(md.get(p + "system", "")), template=str(md[p + "template"]),
                turn_template=str(md.get(p + "turn_template", md[p + "template"])),
                answer_suffix=str(md.get(p + "answer_suffix", "")),
                stop_strings=tuple(str(s) for s in md.get(p + "stop_strings", []) or []),
                stop_ids=tuple(int(i) for i in md.get(p + "stop_ids", []) or []))
        for name, s in (("template", t.template), ("turn_template", t.turn_template)):
            if PROMPT_PLACEHOLDER not in s:
                raise _core.ModelError(f"{p}{name} has no {PROMPT_PLACEHOLDER} placeholder: {s!r}")
        if t.template.count(IMAGE_PLACEHOLDER) > 1:
            raise _core.ModelError(f"{p}template has more than one {IMAGE_PLACEHOLDER}: {t.template!r}")
        return t

    def with_system(self, system: Optional[str]) -> "ChatTemplate":
        if system is None:
            return self
        return ChatTemplate(system, self.template, self.turn_template, self.answer_suffix, self.stop_strings,
                            self.stop_ids)

    def _image_span(self) -> Tuple[int, int]:
        """[start, end) of the image part of the first-turn template: ``<Img><ImageHere></Img>`` and one
        following space; (-1, -1) when the template has no image."""
        t = self.template
        i = t.find(IMAGE_PLACEHOLDER)
        if i < 0:
            return -1, -1
        a, b = i, i + len(IMAGE_PLACEHOLDER)
        if t[:a].endswith("<Img>") and t[b:].startswith("</Img>"):
            a, b = a - len("<Img>"), b + len("</Img>")
        if t[b:b + 1] == " ":
            b += 1
        return a, b

    @property
    def takes_images(self) -> bool:
        return IMAGE_PLACEHOLDER in self.template

    def turn(self, prompt: str, *, first: bool, image: bool) -> List[Piece]:
        """The pieces of one user turn: strings and IMAGE, with the user's text put in literally."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        a, b = self._image_span()
        if image and a < 0:
            raise _core.ModelError("this model's chat template has no image placeholder, so it cannot take an image")
        if first:
            t = self.system + (self.template if image or a < 0 else self.template[:a] + self.template[b:])
        elif image:  # the image span of the first turn, in front of the prompt
            span = self.template[a:b]
            t = self.turn_template.replace(PROMPT_PLACEHOLDER, span + PROMPT_PLACEHOLDER, 1)
        else:
            t = self.turn_template
        if image:
            pre, post = t.split(IMAGE_PLACEHOLDER, 1)
            parts: List[Piece] = [pre, IMAGE, post]
        else:
            parts = [t]
        # Only now is the user's text put in: the first {prompt} of the template's own pieces.
        out: List[Piece] = []
        done = False
        for p in parts:
            if isinstance(p, str) and not done and PROMPT_PLACEHOLDER in p:
                p = p.replace(PROMPT_PLACEHOLDER, prompt, 1)
                done = True
            out.append(p)
        return out


@dataclass
class Message:
    """One entry of Chat.history."""
    role: str          # "user" or "assistant"
    text: str
    image: bool = False  # an image was sent with this user turn
    finish_reason: Optional[str] = None  # assistant turns: "stop", "length" or "interrupted"

    def __iter__(self):  # allows `for role, text in chat.history`
        return iter((self.role, self.text))


@dataclass
class _Span:
    """A stretch of the conversation: token ids, or one image's embeddings."""
    ids: List[int] = field(default_factory=list)
    image: Optional[np.ndarray] = None

    @property
    def n(self) -> int:
        return len(self.image) if self.image is not None else len(self.ids)


class Chat:
    """A conversation with a model. Not for concurrent use: give each thread its own Chat (they may share
    one Model). Create with :meth:`Model.new_chat`."""

    def __init__(self, model: "Model", system: Optional[str] = None, n_ctx: Optional[int] = None,
                 _fit_ctx: bool = False):
        self.model = model
        self._fit_ctx = _fit_ctx  # one-shot chats size their KV cache to the one turn they hold
        self.template = model.chat_template.with_system(system)
        self.n_ctx = int(n_ctx or model.n_ctx)
        self.history: List[Message] = []
        self.last: Optional["GenerationResult"] = None
        self.images_encoded = 0   # how many times this chat ran the vision encoder
        self._session: Optional[_core.Session] = None
        self._spans: List[_Span] = []      # the conversation as recorded (text ids and images)
        self._n_eval = 0                   # how many positions of it are in the KV cache
        self._kv_prefix: Tuple[int, ...] = ()  # ids the cache starts with from an earlier conversation
        self._active: Optional["weakref.ref[ChatStream]"] = None  # the unfinished stream, if any
        self._busy = threading.Lock()
        self.prompt_logits: Optional[np.ndarray] = None  # logits at the end of the last prompt
        self.prompt_positions = 0  # positions of the conversation up to the end of the last prompt

    def __repr__(self) -> str:
        turns = sum(1 for h in self.history if h.role == "user")
        return (f"Chat(turns={turns}, positions={self.n_tokens}/{self.n_ctx}, "
                f"images_encoded={self.images_encoded})")

    # ---- state -------------------------------------------------------------------------------
    @property
    def n_past(self) -> int:
        """Positions of the conversation held in the KV cache."""
        return self._session.n_past if self._session is not None else 0

    @property
    def n_tokens(self) -> int:
        """Positions of the recorded conversation (image embeddings count as n_image_tokens)."""
        return sum(s.n for s in self._spans)

    def tokens(self, n_positions: Optional[int] = None) -> List[Union[int, np.ndarray]]:
        """The recorded conversation (its first n_positions positions): token ids, with each image as its
        (n_image_tokens, n_embd) array."""
        out: List[Union[int, np.ndarray]] = []
        left = self.n_tokens if n_positions is None else int(n_positions)
        for s in self._spans:
            if left <= 0:
                break
            if s.image is not None:
                out.append(s.image)
            else:
                out.extend(s.ids[:left])
            left -= s.n
        return out

    def reset(self) -> None:
        """Forgets the conversation (and the image); the next question starts a new one, reusing the start
        of this one's prompt (the system text) that is still in the KV cache where it matches."""
        self._finish_active()
        keep = self._kept_prefix()
        self.history.clear()
        self._spans.clear()
        self._n_eval = 0
        self.last = None
        self.prompt_logits = None
        self.prompt_positions = 0
        if self._session is not None:
            self._session.rewind(len(keep))
            self._kv_prefix = tuple(keep)

    clear = reset

    def _kept_prefix(self) -> List[int]:
        """The evaluated ids of the conversation's first piece, when it is text of two tokens or more."""
        first = self._spans[0] if self._spans else None
        if first is None or first.image is not None:
            return []
        keep = first.ids[:min(len(first.ids), self._n_eval)]
        return keep if len(keep) >= 2 else []

    def _release_session(self) -> None:
        """A one-shot chat (Model.chat) is done: its session goes back to the model with the prefix."""
        s, self._session = self._session, None
        if s is not None:
            self.model._keep_session(s, self._kept_prefix())

    def _finish_active(self) -> None:
        it = self._active() if self._active is not None else None
        self._active = None
        if it is not None:
            it.close()  # runs the stream's cleanup: the partial answer is kept

    def _get_session(self, need: int) -> "_core.Session":
        if self._session is None:
            if self._fit_ctx:  # sized to the turn, rounded up so that the next chat() can reuse it
                self._session, self._kv_prefix = self.model._take_session(min(self.n_ctx, -(-need // 128) * 128))
            else:
                self._session = self.model._session(self.n_ctx)
        return self._session

    # ---- asking ------------------------------------------------------------------------------
    def ask(self, prompt: str, image: Any = None, *, stream: bool = False, return_result: bool = False,
            max_new_tokens: Optional[int] = None, temperature: Optional[float] = None, top_p: Optional[float] = None,
            top_k: Optional[int] = None, min_p: Optional[float] = None, repetition_penalty: Optional[float] = None,
            seed: Optional[int] = None, stop: Optional[Sequence[str]] = None, ignore_eos: bool = False):
        """Asks a question (optionally about a new image) and returns the answer text, or an iterator of text
        pieces when ``stream=True``, or the GenerationResult when ``return_result=True`` (not streaming).

        Sampling settings default to the model's own (its metadata). Raises ContextOverflowError, before
        anything changes, when the conversation plus this turn plus ``max_new_tokens`` exceeds n_ctx.
        On KeyboardInterrupt the partial answer is kept in the history and in ``last`` (finish_reason
        "interrupted") and the exception propagates; a stream that is closed or dropped early ends the same
        way. ``stop`` adds stop strings to the model's; ``ignore_eos`` generates ``max_new_tokens`` tokens,
        ignoring end-of-text, the model's stop ids and stop strings (for benchmarks and tests)."""
        self._finish_active()
        params, n_new = self.model._chat_params(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                                top_k=top_k, min_p=min_p, repetition_penalty=repetition_penalty,
                                                seed=seed)
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this Chat is already answering in another thread; give each thread its own Chat")
        try:
            it = self._start(prompt, image, params, n_new, stop, ignore_eos)
        except BaseException:
            self._busy.release()
            raise
        gen = ChatStream(self, it)
        if stream:
            self._active = weakref.ref(gen)
            return gen
        text = "".join(gen)
        return gen.result if return_result else text

    def _start(self, prompt: str, image: Any, params, max_new_tokens: int, stop: Optional[Sequence[str]],
               ignore_eos: bool = False):
        """Checks, encodes and evaluates one user turn; returns the token loop (not started)."""
        from .model import GenerationResult
        m = self.model
        first = not self.history
        pieces = self.template.turn(prompt, first=first, image=image is not None)
        pixels = m.preprocess(image) if image is not None else None  # bad images fail here, nothing changed
        new_ids: List[List[int]] = []
        n_turn = 0
        for p in pieces:
            if isinstance(p, str):
                ids = m.tokenize(p) if p else []
                new_ids.append(ids)
                n_turn += len(ids)
            else:
                n_turn += m.n_image_tokens
        pending = self.n_tokens - self._n_eval
        need = self._n_eval + pending + n_turn + max_new_tokens
        if need > self.n_ctx:
            raise _core.ContextOverflowError(
                f"the conversation ({self.n_tokens} positions) plus this turn ({n_turn}) plus max_new_tokens "
                f"({max_new_tokens}) needs {need} positions, more than n_ctx {self.n_ctx}; "
                f"start a new conversation or use a larger n_ctx")
        if self._n_eval + pending + n_turn == 0:
            raise ValueError("empty prompt: the template and the text produce no tokens")
        if stop is not None and isinstance(stop, str):
            stop = [stop]
        stops = ([] if ignore_eos else list(self.template.stop_strings)) + [s for s in (stop or []) if s]
        stop_ids = () if ignore_eos else self.template.stop_ids

        result = GenerationResult()
        session = self._get_session(need)
        emb = None
        if pixels is not None:
            t0 = time.perf_counter()
            emb = session.encode_image(pixels)
            result.image_encode_ms = (time.perf_counter() - t0) * 1e3
            result.image_tokens = len(emb)
            self.images_encoded += 1

        # New spans: the not-yet-evaluated tail of the conversation, then this turn.
        spans: List[_Span] = []
        k = 0
        for p in pieces:
            if isinstance(p, str):
                if new_ids[k]:
                    spans.append(_Span(ids=new_ids[k]))
                k += 1
            else:
                spans.append(_Span(image=emb))
        reuse = self._reuse_prefix(session, spans)
        if reuse:  # the first piece is recorded now; its first `reuse` positions are in the cache already
            self._spans.append(spans.pop(0))
            self._n_eval = reuse
        tail = self._unevaluated()
        x = self._embed(tail + spans)
        before = self._n_eval
        result.cached_tokens = before
        result.prompt_tokens = sum(s.n for s in tail + spans if s.image is None)
        t0 = time.perf_counter()
        try:
            logits = session.eval_embeddings(x, False)
        except BaseException:
            if reuse:  # back to an empty conversation whose cache starts with the reused ids
                self._kv_prefix = tuple(self._spans.pop().ids[:reuse])
                self._n_eval = 0
            session.rewind(before)  # nothing changed
            raise
        result.prompt_ms = (time.perf_counter() - t0) * 1e3
        self._spans.extend(spans)
        self._n_eval = self.n_tokens
        self.prompt_logits = logits
        self.prompt_positions = self._n_eval
        self.history.append(Message("user", prompt, image=emb is not None))
        self.last = result
        return m._run(session, [], logits, params, max_new_tokens, stops, stop_ids, result, use_eos=not ignore_eos)

    def _reuse_prefix(self, session: "_core.Session", spans: List[_Span]) -> int:
        """On a first turn, how many leading ids of its first (text) piece the session's cache holds from an
        earlier conversation; the cache is cut to them (to nothing when they are not worth reusing)."""
        kept, self._kv_prefix = self._kv_prefix, ()
        if self._spans or not kept:
            return 0
        first = spans[0].ids if spans and spans[0].image is None else []
        n = 0
        while n < min(len(kept), len(first)) and kept[n] == first[n]:
            n += 1
        # at least two positions evaluated in each batch (a single one takes the one-row attention path)
        if n < 2 or sum(s.n for s in spans) - n < 2:
            n = 0
        session.rewind(n)
        return n

    def _evaluated_spans(self) -> List[_Span]:
        """The spans, cut at what the KV cache holds."""
        out, n = [], 0
        for s in self._spans:
            if n + s.n <= self._n_eval:
                out.append(s)
            elif s.image is None and n < self._n_eval:
                out.append(_Span(ids=s.ids[: self._n_eval - n]))
            n += s.n
        return out

    def _unevaluated(self) -> List[_Span]:
        out, n = [], 0
        for s in self._spans:
            if n >= self._n_eval:
                out.append(s)
            elif n + s.n > self._n_eval:
                assert s.image is None, "an image is never split"
                out.append(_Span(ids=s.ids[self._n_eval - n:]))
            n += s.n
        return out

    def _embed(self, spans: List[_Span]) -> np.ndarray:
        rows = [s.image if s.image is not None else self.model._model.embed_tokens(np.asarray(s.ids, dtype=np.int32))
                for s in spans if s.n]
        return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)

    def _record_answer(self) -> None:
        """Keeps the answer text in the history and makes the KV cache a prefix of the recorded tokens:
        the generated ids when they spell the kept text, else the text's own tokens (the cache is cut back
        to the longest prefix it shares with them)."""
        res = self.last
        m = self.model
        gen = list(res.token_ids)
        text = res.text
        if m.detokenize(gen) == text:
            ids = gen
        else:
            ids = m.tokenize(text) if text else []
        suffix = m.tokenize(self.template.answer_suffix) if self.template.answer_suffix else []
        # The cache holds the prompt and the generated ids except the last sampled one (still pending).
        n_gen_eval = self._session.n_past - self._n_eval
        common = 0
        while common < min(len(ids), n_gen_eval) and ids[common] == gen[common]:
            common += 1
        self._session.rewind(self._n_eval + common)
        self._spans.append(_Span(ids=ids + suffix))
        self._n_eval += common
        res.token_ids = gen
        self.history.append(Message("assistant", text, finish_reason=res.finish_reason))
        if logger.isEnabledFor(20):
            logger.info("answer of %d tokens (%s)\n%s", res.completion_tokens, res.finish_reason, res.summary())


class ChatStream:
    """The answer of Chat.ask(..., stream=True): iterate for text pieces. ``result`` is the
    GenerationResult (complete once the iteration ends). Closing it, or dropping it, before the end stops
    generation: the partial answer is kept with finish_reason "interrupted"."""

    def __init__(self, chat: Chat, it: Iterator[str]):
        self._chat = chat
        self._it = it
        self._done = False
        self.result = chat.last

    def __iter__(self) -> "ChatStream":
        return self

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        try:
            return next(self._it)
        except StopIteration:
            self._finish(False)
            raise
        except BaseException:
            self._finish(True)
            raise

    def close(self) -> None:
        if not self._done:
            try:
                self._it.close()
            finally:
                self._finish(True)

    def _finish(self, interrupted: bool) -> None:
        if self._done:
            return
        self._done = True
        chat = self._chat
        try:
            if interrupted:
                self.result.finish_reason = "interrupted"
            chat._record_answer()
        finally:
            if chat._active is not None and chat._active() is self:
                chat._active = None
            if chat._fit_ctx:
                chat._release_session()
            chat._busy.release()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
