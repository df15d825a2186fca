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

A Chat is a light handle: the recorded conversation (token ids and image embeddings) and its turns.
Each question sends the whole conversation to the model's engine, which finds the sequence whose KV
cache already holds the longest part of it (normally the one that answered the last question) and
evaluates only the rest: a follow-up costs its own tokens, the image is encoded once, and a new
conversation reuses the system text. ``Chat.from_messages`` rebuilds a chat from an OpenAI-shaped
history without generating the old answers.
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


Recorded = Union[List[int], "_core.ImageEmbedding"]


class Chat:
    """A conversation with a model. Not for concurrent use: give each thread its own Chat (they may share
    one Model, and are then answered together). Create with :meth:`Model.new_chat` or
    :meth:`Chat.from_messages`."""

    def __init__(self, model: "Model", system: Optional[str] = None):
        self.model = model
        self.template = model.chat_template.with_system(system)
        self.history: List[Message] = []
        self.last: Optional["GenerationResult"] = None
        self.images_encoded = 0   # images this chat sent to the encoder (the engine's cache may have had them)
        self._pieces: List[Recorded] = []  # the conversation as recorded
        self._active: Optional["weakref.ref[ChatStream]"] = None  # the unfinished stream, if any
        self._busy = threading.Lock()
        self._request = None
        self.prompt_positions = 0  # positions of the conversation up to the end of the last prompt

    @property
    def prompt_logits(self) -> Optional[np.ndarray]:
        """The logits at the end of the last prompt (what the answer's first token was sampled from)."""
        return self._request.prompt_logits if self._request is not None else None

    @classmethod
    def from_messages(cls, model: "Model", messages: Sequence[dict]) -> "Chat":
        """A chat holding an OpenAI-shaped history (``role`` system / user / assistant, ``content`` a string
        or a list of ``text`` and ``image_url`` / ``image`` parts), the answers taken as given."""
        from .model import _message_parts
        system = None
        msgs = list(messages)
        if msgs and isinstance(msgs[0], dict) and msgs[0].get("role") == "system":
            system = _message_parts(msgs[0], 0)[0]
            msgs = msgs[1:]
        c = cls(model, system=system)
        for i, msg in enumerate(msgs, start=1 if system is not None else 0):
            text, images = _message_parts(msg, i)
            role = msg.get("role")
            if role == "user":
                c._record_turn(text, images, i)
            elif role == "assistant":
                if images:
                    raise ValueError(f"message {i}: an assistant message cannot hold images")
                if not c.history or c.history[-1].role != "user":
                    raise ValueError(f"message {i}: an assistant message must follow a user message")
                c._record_answer_text(text, model.tokenize(text) if text else [], None)
            elif role == "system":
                raise ValueError(f"message {i}: a system message may only come first")
            else:
                raise ValueError(f"message {i}: unknown role {role!r} (expected 'system', 'user' or 'assistant')")
        return c

    def __repr__(self) -> str:
        turns = sum(1 for h in self.history if h.role == "user")
        return f"Chat(turns={turns}, positions={self.n_tokens}/{self.model.n_ctx}, images_encoded={self.images_encoded})"

    # ---- state -------------------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        """Positions of the recorded conversation (image embeddings count as n_image_tokens)."""
        return sum(_length(p) for p in self._pieces)

    def tokens(self, n_positions: Optional[int] = None) -> List[Union[int, np.ndarray]]:
        """The recorded conversation (its first n_positions positions): token ids, with each image as its
        (n_image_tokens, n_embd) array."""
        out: List[Union[int, np.ndarray]] = []
        left = self.n_tokens if n_positions is None else int(n_positions)
        for p in self._pieces:
            if left <= 0:
                break
            if isinstance(p, list):
                out.extend(p[:left])
            else:
                out.append(p.numpy())
            left -= _length(p)
        return out

    def reset(self) -> None:
        """Forgets the conversation (and the image). The next question starts a new one; the engine still
        reuses whatever its cache holds of it (the system text)."""
        self._finish_active()
        self.history.clear()
        self._pieces.clear()
        self.last = None
        self._request = None
        self.prompt_positions = 0

    clear = reset

    def _finish_active(self) -> None:
        it = self._active() if self._active is not None else None
        self._active = None
        if it is not None:
            it.close()  # runs the stream's cleanup: the partial answer is kept

    # ---- asking ------------------------------------------------------------------------------
    def ask(self, prompt: str, *, image: Any = None, stream: bool = False, return_result: bool = False,
            max_new_tokens: Optional[int] = None, temperature: Optional[float] = None, top_p: Optional[float] = None,
            top_k: Optional[int] = None, min_p: Optional[float] = None, repetition_penalty: Optional[float] = None,
            seed: Optional[int] = None, stop: Optional[Sequence[str]] = None, ignore_eos: bool = False,
            n_probs: int = 0, reserve_new_tokens: bool = False):
        """Asks a question (optionally about a new image) and returns the answer text, or an iterator of text
        pieces when ``stream=True``, or the GenerationResult when ``return_result=True`` (not streaming).

        Sampling settings default to the model's own (its metadata). Raises ContextOverflowError, before
        anything changes, when the conversation plus this turn does not fit in n_ctx; an answer that
        reaches the end of the context stops there (finish_reason "length"), as llama.cpp's do.
        On KeyboardInterrupt the partial answer is kept in the history and in ``last`` (finish_reason
        "interrupted") and the exception propagates; a stream that is closed or dropped early ends the same
        way. ``stop`` adds stop strings to the model's; ``ignore_eos`` generates ``max_new_tokens`` tokens,
        ignoring end-of-text, the model's stop ids and stop strings (for benchmarks and tests). ``n_probs``
        > 0 records each answer token's log-probability and the ``n_probs`` most probable tokens in
        ``GenerationResult.logprobs``. ``reserve_new_tokens`` refuses (ContextOverflowError) a turn that
        leaves fewer than ``max_new_tokens`` positions, for callers that promise that many (a server
        whose client asked for max_tokens)."""
        self._finish_active()
        params, n_new = self.model._chat_params(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                                top_k=top_k, min_p=min_p, repetition_penalty=repetition_penalty,
                                                seed=seed)
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this Chat is already answering in another thread; give each thread its own Chat")
        try:
            gen = self._start(prompt, image, params, n_new, stop, ignore_eos, n_probs, reserve_new_tokens)
        except BaseException:
            self._busy.release()
            raise
        if stream:
            self._active = weakref.ref(gen)
            return gen
        text = "".join(gen)
        return gen.result if return_result else text

    def _turn_pieces(self, prompt: str, image: Any) -> Tuple[List[Recorded], float]:
        """One user turn as recorded pieces (the image encoded, or found in the engine's cache), and the
        encode time in ms."""
        m = self.model
        pieces = self.template.turn(prompt, first=not self.history, image=image is not None)
        emb = None
        ms = 0.0
        if image is not None:
            t0 = time.perf_counter()
            emb = m.encode_image_embedding(image)  # bad images fail here, nothing changed
            ms = (time.perf_counter() - t0) * 1e3
        out: List[Recorded] = []
        for p in pieces:
            if isinstance(p, str):
                ids = m.tokenize(p) if p else []
                if ids:
                    out.append(ids)
            else:
                out.append(emb)
        return out, ms

    def _record_turn(self, text: str, images: list, index: int) -> None:
        if len(images) > 1:
            raise ValueError(f"message {index}: {len(images)} images in one user message; this model takes one "
                             f"image per turn")
        pieces, _ = self._turn_pieces(text, images[0] if images else None)
        if images:
            self.images_encoded += 1
        self._pieces.extend(pieces)
        self.history.append(Message("user", text, image=bool(images)))

    def _start(self, prompt: str, image: Any, params, max_new_tokens: int, stop: Optional[Sequence[str]],
               ignore_eos: bool = False, n_probs: int = 0, reserve_new_tokens: bool = False) -> "ChatStream":
        """Checks, encodes and submits one user turn; returns its stream (not started)."""
        from .model import GenerationResult, _results, check_stop
        m = self.model
        stops = ([] if ignore_eos else list(self.template.stop_strings)) + [s for s in check_stop(stop) if s]
        new, encode_ms = self._turn_pieces(prompt, image)
        stop_ids = () if ignore_eos else self.template.stop_ids
        whole = self._pieces + new
        n_total = sum(_length(p) for p in whole)
        n_turn = sum(_length(p) for p in new)
        if n_total > m.n_ctx:
            raise _core.ContextOverflowError(
                f"the conversation ({self.n_tokens} positions) plus this turn ({n_turn}) needs {n_total} "
                f"positions, more than n_ctx {m.n_ctx}; start a new conversation or use a larger n_ctx")
        if reserve_new_tokens and n_total + max_new_tokens > m.n_ctx:
            raise _core.ContextOverflowError(
                f"the conversation and this turn ({n_total} positions) plus max_new_tokens ({max_new_tokens}) need "
                f"{n_total + max_new_tokens} positions, more than n_ctx {m.n_ctx}")
        if n_total == 0:
            raise ValueError("empty prompt: the template and the text produce no tokens")
        req = m.engine.submit(whole, params, max_new_tokens, stop_strings=stops, stop_ids=stop_ids,
                              use_eos=not ignore_eos, keep_prompt_logits=True, n_probs=n_probs)
        self._request = req
        self.prompt_positions = n_total
        if image is not None:
            self.images_encoded += 1
        result = GenerationResult(image_encode_ms=encode_ms)
        result.image_tokens = m.n_image_tokens if image is not None else 0
        result.cached_tokens = req.cached
        # text positions evaluated: those past the cached prefix that are not image rows
        pos, img_evaluated = 0, 0
        for p in whole:
            if not isinstance(p, list):
                img_evaluated += max(0, pos + p.n_rows - max(pos, req.cached))
            pos += _length(p)
        result.prompt_tokens = n_total - req.cached - img_evaluated
        self._pieces.extend(new)
        self.history.append(Message("user", prompt, image=image is not None))
        self.last = result
        return ChatStream(self, _results(req, result), result)

    def _record_answer(self) -> None:
        """Keeps the answer in the history; the recorded ids are the generated ones when they spell the kept
        text, else the text's own tokens."""
        res = self.last
        m = self.model
        gen = list(res.token_ids)
        ids = gen if m.detokenize(gen) == res.text else (m.tokenize(res.text) if res.text else [])
        self._record_answer_text(res.text, ids, res.finish_reason)
        if logger.isEnabledFor(20):
            logger.info("answer of %d tokens (%s)\n%s", res.completion_tokens, res.finish_reason, res.summary(),
                        extra={"result": res})

    def _record_answer_text(self, text: str, ids: List[int], finish_reason: Optional[str]) -> None:
        suffix = self.model.tokenize(self.template.answer_suffix) if self.template.answer_suffix else []
        if ids or suffix:
            self._pieces.append(list(ids) + suffix)
        self.history.append(Message("assistant", text, finish_reason=finish_reason))


def _length(p: Recorded) -> int:
    return len(p) if isinstance(p, list) else p.n_rows


class ChatStream:
    """The answer of Chat.ask(..., stream=True): iterate for text pieces. ``result`` is the
    GenerationResult (complete once the iteration ends). Closing it, or dropping it, before the end stops
    generation: the partial answer is kept with finish_reason "interrupted"."""

    def __init__(self, chat: Chat, it: Iterator[str], result: "GenerationResult"):
        self._chat = chat
        self._it = it
        self._done = False
        self.result = result
        self.prompt_positions = chat.prompt_positions  # the whole prompt, cached part included

    def __iter__(self) -> "ChatStream":
        return self

    @property
    def prompt_progress(self) -> Tuple[int, int]:
        """(positions of the prompt in the KV cache so far, positions of the whole prompt): progress while a
        long prompt is evaluated, before the first piece comes."""
        req = self._chat._request
        return (req.prompt_done, req.n_prompt) if req is not None else (0, 0)

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        try:
            return next(self._it)
        except StopIteration:
            self._finish()
            raise
        except BaseException:
            self._it.close()
            self._finish()
            raise

    def close(self) -> None:
        if not self._done:
            try:
                self._it.close()
            finally:
                self._finish()

    def cancel(self) -> None:
        """Stops generation; may be called from any thread, also while another thread is waiting in
        ``next()`` (which then ends soon, the request being freed at once, queued or running). The
        iteration ends with the partial answer (finish_reason "interrupted"); the reading thread
        still closes the stream."""
        req = self._chat._request
        if req is not None:
            req.cancel()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        chat = self._chat
        try:
            chat._record_answer()
        finally:
            if chat._active is not None and chat._active() is self:
                chat._active = None
            chat._busy.release()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
