"""The Python face of the engine: load a GGUF file, tokenize, get logits, generate text."""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._logging import set_verbose
from ._text import StopMatcher

if TYPE_CHECKING:  # pragma: no cover
    from .chat import Chat, ChatTemplate

log = logging.getLogger("tinygptv_native")

PathLike = Union[str, "os.PathLike[str]"]


def default_threads() -> int:
    """Threads to use when the caller does not say: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class SamplingParams:
    """Sampling settings. temperature == 0 means greedy (argmax)."""
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repetition_penalty: float = 1.0
    penalty_last_n: int = 64
    seed: Optional[int] = None


@dataclass
class GenerationResult:
    """What one answer produced, with its timings."""
    text: str = ""
    finish_reason: str = "length"  # "stop", "length" or "interrupted"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    image_tokens: int = 0
    image_encode_ms: float = 0.0
    prompt_ms: float = 0.0
    generation_ms: float = 0.0
    cached_tokens: int = 0  # positions reused from the KV cache (earlier turns of a chat)
    token_ids: List[int] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text

    @property
    def prompt_tokens_per_s(self) -> float:
        n = self.prompt_tokens + self.image_tokens
        return n / (self.prompt_ms / 1e3) if self.prompt_ms > 0 else 0.0

    @property
    def generation_tokens_per_s(self) -> float:
        return self.completion_tokens / (self.generation_ms / 1e3) if self.generation_ms > 0 else 0.0

    @property
    def usage(self) -> dict:
        """OpenAI-style token counts (the image's positions count as prompt tokens)."""
        p = self.prompt_tokens + self.image_tokens
        return {"prompt_tokens": p, "completion_tokens": self.completion_tokens,
                "total_tokens": p + self.completion_tokens}

    @property
    def timings(self) -> dict:
        """llama-server-style timings (ms and tokens per second), plus the image encode time."""
        p = self.prompt_tokens + self.image_tokens
        return {"image_encode_ms": self.image_encode_ms, "prompt_n": p, "prompt_ms": self.prompt_ms,
                "prompt_per_second": self.prompt_tokens_per_s, "predicted_n": self.completion_tokens,
                "predicted_ms": self.generation_ms, "predicted_per_second": self.generation_tokens_per_s,
                "cache_n": self.cached_tokens}

    def summary(self) -> str:
        """Timings in a few lines, in the style of llama.cpp and ollama's --verbose output."""
        lines = []
        if self.image_tokens:
            lines.append(f"image encode:      {self.image_encode_ms:10.2f} ms ({self.image_tokens} positions)")
        p = self.prompt_tokens + self.image_tokens
        lines.append(f"prompt eval:       {self.prompt_ms:10.2f} ms / {p} positions "
                     f"({self.prompt_tokens_per_s:.2f} tokens/s), {self.cached_tokens} cached")
        lines.append(f"generation:        {self.generation_ms:10.2f} ms / {self.completion_tokens} tokens "
                     f"({self.generation_tokens_per_s:.2f} tokens/s), finish: {self.finish_reason}")
        return "\n".join(lines)


class Model:
    """A TinyGPT-V (or plain Phi-2) model loaded from a GGUF file.

    The model is immutable and may be shared by threads; each generation or chat runs in its own
    session (KV cache). ``n_ctx`` is the context size of the sessions this model creates.
    """

    def __init__(self, path: Optional[PathLike] = None, *, n_threads: Optional[int] = None, n_ctx: int = 2048,
                 seed: Optional[int] = None, verbose: bool = False, kv_type: str = "f16"):
        if path is None:
            from .demo import demo_model_path
            path = demo_model_path()
            log.warning("no model given: using the embedded demo model (%s)", Path(path).name)
        if n_threads is not None and (int(n_threads) < 1 or int(n_threads) > 512):
            raise ValueError(f"n_threads must be in [1, 512], got {n_threads}")
        if int(n_ctx) < 1:
            raise ValueError(f"n_ctx must be positive, got {n_ctx}")
        if kv_type not in ("f16", "f32"):
            raise ValueError(f"kv_type must be 'f16' or 'f32', got {kv_type!r}")
        self.path = str(path)
        self.verbose = verbose
        if verbose:
            set_verbose(True)
        t0 = time.perf_counter()
        self._model = _core.Model(self.path, int(n_threads or 0))
        self._tok = _core.tokenizer_from_model(self._model)
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.n_threads = int(n_threads) if n_threads is not None else default_threads()
        self.n_ctx = int(n_ctx)
        self.seed = seed
        self.kv_f16 = kv_type == "f16"
        self.metadata = self._model.metadata()
        self._chat_template = None
        self.last_result: Optional[GenerationResult] = None
        # The session of the last finished one-shot chat(), rewound to the prompt prefix it still holds
        # (token ids): the next chat() reuses the part of its prompt that matches (the system text).
        self._idle: Optional[Tuple["_core.Session", Tuple[int, ...]]] = None
        self._idle_lock = threading.Lock()
        log.info("loaded %s in %.0f ms: arch %s, %d layers, vocab %d", self.path, self.load_ms, self._model.arch,
                 self._model.n_layer, self._model.n_vocab)

    # ---- basic facts -------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self._model.n_vocab

    @property
    def n_embd(self) -> int:
        return self._model.n_embd

    @property
    def arch(self) -> str:
        return self._model.arch

    @property
    def has_vision(self) -> bool:
        return self._model.has_vision

    @property
    def image_size(self) -> Optional[int]:
        return self._model.image_size

    @property
    def n_image_tokens(self) -> int:
        return self._model.n_image_tokens

    def _session(self, n_ctx: Optional[int] = None) -> "_core.Session":
        return _core.Session(self._model, int(n_ctx or self.n_ctx), self.n_threads, self.kv_f16)

    def _take_session(self, need: int) -> Tuple["_core.Session", Tuple[int, ...]]:
        """A session with room for ``need`` positions and the token ids its KV cache starts with: the idle
        one left by the last chat() when it is big enough, else a new, empty one."""
        with self._idle_lock:
            idle, self._idle = self._idle, None
        if idle is not None and idle[0].n_ctx >= need:
            return idle
        return self._session(need), ()

    def _keep_session(self, session: "_core.Session", prefix: Sequence[int]) -> None:
        """Keeps a finished chat's session for the next chat(), holding only ``prefix`` (its first ids)."""
        session.rewind(len(prefix))
        with self._idle_lock:
            self._idle = (session, tuple(prefix))

    # ---- text --------------------------------------------------------------------------------
    def tokenize(self, text: Union[str, bytes], *, special: bool = False) -> List[int]:
        """Token ids of text. No BOS is added. ``special`` also matches control tokens."""
        if isinstance(text, bytes):
            return list(self._tok.encode_bytes(text, special))
        return list(self._tok.encode(text, special))

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids (invalid UTF-8 becomes U+FFFD)."""
        return bytes(self._tok.decode(list(ids))).decode("utf-8", "replace")

    def logits(self, ids: Sequence[int], image=None, image_at: Optional[int] = None) -> np.ndarray:
        """Logits of every position, computed in a fresh context.

        Without an image: shape (len(ids), n_vocab). With an image, its embeddings are inserted before
        token index ``image_at`` (default 0) and the result has len(ids) + n_image_tokens rows.
        """
        ids = np.asarray(list(ids), dtype=np.int32)
        if image is None:
            if len(ids) == 0:
                raise ValueError("logits() needs at least one token")
            s = self._session(len(ids))
            return s.eval_tokens(ids, True)
        emb = self.encode_image(image)
        at = 0 if image_at is None else int(image_at)
        if not 0 <= at <= len(ids):
            raise ValueError(f"image_at {at} is outside [0, {len(ids)}]")
        x = np.concatenate([self._model.embed_tokens(ids[:at]), emb, self._model.embed_tokens(ids[at:])])
        s = self._session(len(x))
        return s.eval_embeddings(np.ascontiguousarray(x, dtype=np.float32), True)

    # ---- images ------------------------------------------------------------------------------
    def preprocess(self, image) -> np.ndarray:
        """The normalised (3, S, S) float32 input of an image (path, bytes, PIL image or array)."""
        from .image import preprocess_for_model
        return preprocess_for_model(image, self._model)

    def encode_image(self, image) -> np.ndarray:
        """The projected image embeddings, float32 (n_image_tokens, n_embd), ready to splice into a prompt."""
        pixels = self.preprocess(image)
        s = _core.Session(self._model, 1, self.n_threads, self.kv_f16)
        return s.encode_image(pixels)

    # ---- chat --------------------------------------------------------------------------------
    @property
    def chat_template(self) -> "ChatTemplate":
        """The prompt format of this model (from its metadata)."""
        if self._chat_template is None:
            from .chat import ChatTemplate
            self._chat_template = ChatTemplate.from_metadata(self.metadata)
        return self._chat_template

    @property
    def chat_defaults(self) -> SamplingParams:
        """The sampling settings of the model's own demo (metadata), as used by chat() and Chat.ask()."""
        md, p = self.metadata, f"{self.arch}.chat."
        # Hugging Face generate() defaults where the metadata says nothing: top_k 50, no min_p; the
        # repetition penalty covers every generated token.
        return SamplingParams(temperature=float(md.get(p + "temperature", 0.8)), top_k=50,
                              top_p=float(md.get(p + "top_p", 0.95)), min_p=0.0,
                              repetition_penalty=float(md.get(p + "repetition_penalty", 1.0)), penalty_last_n=-1,
                              seed=self.seed)

    @property
    def default_max_new_tokens(self) -> int:
        return int(self.metadata.get(f"{self.arch}.chat.max_new_tokens", 256))

    def _chat_params(self, *, max_new_tokens=None, temperature=None, top_p=None, top_k=None, min_p=None,
                     repetition_penalty=None, seed=None):
        """The sampling settings of one answer: the model's defaults, overridden where given; validated."""
        p = self.chat_defaults
        if temperature is not None:
            p.temperature = float(temperature)
        if top_p is not None:
            p.top_p = float(top_p)
        if top_k is not None:
            p.top_k = int(top_k)
        if min_p is not None:
            p.min_p = float(min_p)
        if repetition_penalty is not None:
            p.repetition_penalty = float(repetition_penalty)
        if seed is not None:
            p.seed = int(seed)
        n = self.default_max_new_tokens if max_new_tokens is None else max_new_tokens
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if not (p.temperature >= 0 and np.isfinite(p.temperature)):
            raise ValueError(f"temperature must be >= 0, got {p.temperature}")
        if not 0 < p.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {p.top_p}")
        if not 0 <= p.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {p.min_p}")
        if not (p.repetition_penalty > 0 and np.isfinite(p.repetition_penalty)):
            raise ValueError(f"repetition_penalty must be > 0, got {p.repetition_penalty}")
        return p, int(n)

    def new_chat(self, system: Optional[str] = None, *, n_ctx: Optional[int] = None) -> "Chat":
        """A new conversation (its own KV cache). ``system`` replaces the model's system text."""
        from .chat import Chat
        return Chat(self, system=system, n_ctx=n_ctx)

    def chat(self, image, prompt: str, *, stream: bool = False, return_result: bool = False,
             max_new_tokens: Optional[int] = None, temperature: Optional[float] = None, top_p: Optional[float] = None,
             top_k: Optional[int] = None, min_p: Optional[float] = None, repetition_penalty: Optional[float] = None,
             seed: Optional[int] = None, stop: Optional[Sequence[str]] = None, ignore_eos: bool = False):
        """One question about an image (a path, bytes, PIL image, uint8 numpy array, or None for a text-only
        question). Returns the answer text, an iterator of text pieces with ``stream=True``, or the
        GenerationResult with ``return_result=True``. Settings default to the model's own (metadata);
        ``self.last_result`` holds the result of the latest call."""
        _, n = self._chat_params(max_new_tokens=max_new_tokens)
        from .chat import Chat
        c = Chat(self, n_ctx=self.n_ctx, _fit_ctx=True)
        out = c.ask(prompt, image, stream=stream, return_result=return_result, max_new_tokens=n,
                    temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                    repetition_penalty=repetition_penalty, seed=seed, stop=stop, ignore_eos=ignore_eos)
        self.last_result = c.last
        return out

    # ---- generation --------------------------------------------------------------------------
    def generate(self, prompt: Union[str, Sequence[int]], *, max_new_tokens: int = 128, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repetition_penalty: float = 1.0,
                 seed: Optional[int] = None, stop: Optional[Sequence[str]] = None, stream: bool = False,
                 stop_ids: Optional[Sequence[int]] = None):
        """Continue a text prompt (or a list of token ids). Returns the new text, or an iterator of text
        pieces when ``stream=True``. Generation ends at ``max_new_tokens``, at an end-of-text token, at
        a token in ``stop_ids`` or at a string in ``stop`` (not included in the text)."""
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise ValueError("generate() needs a non-empty prompt")
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty,
                                seed=seed if seed is not None else self.seed)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if len(ids) + max_new_tokens > self.n_ctx:
            raise _core.ContextOverflowError(
                f"prompt of {len(ids)} tokens plus max_new_tokens {max_new_tokens} exceeds n_ctx {self.n_ctx}")
        session = self._session()
        result = GenerationResult(prompt_tokens=len(ids))
        t0 = time.perf_counter()
        logits = session.eval_tokens(np.asarray(ids, dtype=np.int32), False)
        result.prompt_ms = (time.perf_counter() - t0) * 1e3
        it = self._run(session, ids, logits, params, max_new_tokens, stop or [], stop_ids or [], result)
        self.last_result = result
        if stream:
            return it
        return "".join(it)

    def _sampling_kwargs(self, p: SamplingParams) -> dict:
        seed = p.seed if p.seed is not None else int.from_bytes(os.urandom(8), "little")
        return dict(temperature=float(p.temperature), top_k=int(p.top_k), top_p=float(p.top_p),
                    min_p=float(p.min_p), repetition_penalty=float(p.repetition_penalty),
                    penalty_last_n=int(p.penalty_last_n), seed=int(seed) & 0xFFFFFFFFFFFFFFFF)

    def _run(self, session, history: List[int], logits: np.ndarray, params: SamplingParams, max_new_tokens: int,
             stop: Sequence[str], stop_ids: Sequence[int], result: GenerationResult,
             commit_last: bool = False, use_eos: bool = True) -> Iterator[str]:
        """The token loop shared by generate() and chats: yields text pieces, fills ``result``."""
        gen = _core.Generator(session, self._tok, list(history), logits, **self._sampling_kwargs(params))
        dec = _core.StreamDecoder(self._tok)
        matcher = StopMatcher(stop)
        end_ids = set(int(t) for t in stop_ids)
        eos = self._tok.eos
        if eos >= 0 and use_eos:
            end_ids.add(eos)
        t0 = time.perf_counter()
        result.finish_reason = "length"
        try:
            hit = False
            for _ in range(max_new_tokens):
                if session.n_past >= session.n_ctx:
                    break
                tok = gen.step()
                if tok in end_ids:
                    result.finish_reason = "stop"
                    break
                result.token_ids.append(tok)
                result.completion_tokens += 1
                text, hit = matcher.push(dec.push(tok))
                if text:
                    result.text += text
                    yield text
                if hit:
                    result.finish_reason = "stop"
                    break
            if not hit:  # the held-back tail was not a stop string after all
                tail, hit = matcher.push(dec.flush())
                tail += "" if hit else matcher.flush()
                if tail:
                    result.text += tail
                    yield tail
            if commit_last and result.finish_reason != "stop":
                gen.commit()
        except (KeyboardInterrupt, GeneratorExit):
            result.finish_reason = "interrupted"
            raise
        finally:
            result.generation_ms = (time.perf_counter() - t0) * 1e3
