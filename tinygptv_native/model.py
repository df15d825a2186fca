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
from .engine import Engine, Request, SamplingParams, check_max_new_tokens
from .gpu import DEVICES, choose_device
from .gpu_plan import check_gpu_layers

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
    # with n_probs: per answer token (id, log-probability, [(id, log-probability)] of the most probable)
    logprobs: List[Tuple[int, float, List[Tuple[int, float]]]] = field(default_factory=list)

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

    The model is immutable and may be shared by threads. Its answers run in one engine context of
    ``n_parallel`` sequences (``n_ctx`` positions each) with one thread pool: calls from several threads
    (``generate``, ``chat``, their own Chats) are decoded together, each in its own sequence, and a
    request whose prompt starts like one the context still holds (a conversation resent whole, the
    system text) evaluates only the rest.

    ``device``: where the decoder runs. ``"auto"`` (default) takes a discrete GPU (Vulkan) whose memory holds
    the model's plan (tinygptv_native.gpu_plan) at ``n_ctx`` x ``n_parallel``, else the CPU; ``"gpu"`` takes
    Vulkan device ``gpu`` (default 0) or raises (VulkanError: no backend, loader or device; ValueError: the
    model does not fit ``gpu_budget_mb``, default the device's memory, or has weight types the GPU does not
    multiply); ``"cpu"`` the CPU. On the GPU the image encoder still runs on the CPU threads; its embeddings
    go to the device as rows of the batch. ``.device`` and ``.gpu`` say what was chosen.

    ``gpu_layers`` (llama.cpp's -ngl): only the first that many decoder layers go to the GPU, their weights and
    KV cache (the plan counts only those); the other layers, the output norm and head run on the CPU threads,
    the hidden state handed over once per step. None (default): all; 0: the decoder stays on the CPU. A value
    outside [0, n_layer] raises ValueError. ``.gpu_layers`` says how many are on the GPU (0 on the CPU).
    """

    def __init__(self, path: Optional[PathLike] = None, *, n_threads: Optional[int] = None, n_ctx: Optional[int] = None,
                 n_parallel: int = 4, seed: Optional[int] = None, verbose: bool = False, kv_type: str = "f16",
                 image_cache_mb: float = 64.0, device: str = "auto", gpu: Optional[int] = None,
                 gpu_budget_mb: Optional[float] = None, gpu_layers: Optional[int] = None):
        if path is None:
            from .demo import demo_model_path
            path = demo_model_path()
            log.warning("no model given: using the embedded demo model (%s)", Path(path).name)
        if n_threads is not None and (int(n_threads) < 1 or int(n_threads) > 512):
            raise ValueError(f"n_threads must be in [1, 512], got {n_threads}")
        ctx_given = n_ctx is not None
        n_ctx = 2048 if n_ctx is None else n_ctx
        if int(n_ctx) < 1:
            raise ValueError(f"n_ctx must be positive, got {n_ctx}")
        if not 1 <= int(n_parallel) <= 256:
            raise ValueError(f"n_parallel must be in [1, 256], got {n_parallel}")
        if kv_type not in ("f16", "f32"):
            raise ValueError(f"kv_type must be 'f16' or 'f32', got {kv_type!r}")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        if gpu_budget_mb is not None and not float(gpu_budget_mb) > 0:
            raise ValueError(f"gpu_budget_mb must be positive, got {gpu_budget_mb}")
        if isinstance(path, (bytes, os.PathLike)):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, bytes or os.PathLike, got {type(path).__name__}")
        self.path = path
        self.verbose = verbose
        if verbose:
            set_verbose(True)
        t0 = time.perf_counter()
        self._model = _core.Model(self.path, int(n_threads or 0))
        self._tok = _core.tokenizer_from_model(self._model)
        check_gpu_layers(gpu_layers, self._model.n_layer)
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.n_threads = int(n_threads) if n_threads is not None else default_threads()
        self.n_ctx = int(n_ctx)
        self.n_parallel = int(n_parallel)
        self.seed = seed
        self.kv_f16 = kv_type == "f16"
        self.image_cache_mb = float(image_cache_mb)
        # The decoder's device: chosen before anything is uploaded, from the file's memory plan. The GPU's KV
        # cache is F16, so kv_type='f32' keeps the CPU.
        if device == "cpu" and gpu_layers:
            raise ValueError(f"gpu_layers={gpu_layers} puts layers on a GPU but device='cpu' uses none")
        if device != "cpu" and not self.kv_f16:
            if device == "gpu":
                raise ValueError("the GPU decoder keeps its KV cache in F16: kv_type='f32' needs device='cpu'")
            device = "cpu"
            gpu = None
        self.gpu: Optional[int] = choose_device(self.path, device, gpu, self.n_ctx, self.n_parallel, gpu_budget_mb,
                                                gpu_layers)
        self.device = "cpu" if self.gpu is None else "gpu"
        self._gpu_layers = gpu_layers
        self.metadata = self._model.metadata()
        self._chat_template = None
        self._engine: Optional[Engine] = None
        self._engine_lock = threading.Lock()
        self._local = threading.local()  # last_result per thread
        if ctx_given and self.n_ctx > self._model.n_ctx_train:
            log.warning("n_ctx %d is larger than the %d positions the model was trained on: answers past them "
                        "may degrade", self.n_ctx, self._model.n_ctx_train)
        if self.gpu is not None:
            _ = self.engine  # the weights go to the device now, so a failure shows here, not at the first answer

    # ---- basic facts -------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self._model.n_vocab

    @property
    def n_embd(self) -> int:
        return self._model.n_embd

    @property
    def n_layer(self) -> int:
        return self._model.n_layer

    @property
    def gpu_layers(self) -> int:
        """The decoder layers on the GPU (the first ones): n_layer unless gpu_layers was given, 0 on the CPU."""
        if self.gpu is None:
            return 0
        return self.n_layer if self._gpu_layers is None else int(self._gpu_layers)

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

    @property
    def tokenizer(self) -> "_core.Tokenizer":
        return self._tok

    @property
    def engine(self) -> Engine:
        """The engine context (created on first use: its KV cache is reserved as sequences are written)."""
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = Engine(self._model, self._tok, n_ctx=self.n_ctx, n_seq=self.n_parallel,
                                          n_threads=self.n_threads, kv_f16=self.kv_f16,
                                          image_cache_mb=self.image_cache_mb, gpu=self.gpu,
                                          gpu_layers=self._gpu_layers if self.gpu is not None else None)
        return self._engine

    @property
    def last_result(self) -> Optional[GenerationResult]:
        """The result of this thread's latest generate() or chat()."""
        return getattr(self._local, "last_result", None)

    @last_result.setter
    def last_result(self, r: Optional[GenerationResult]) -> None:
        self._local.last_result = r

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
        """Logits of every position, computed from scratch (no cached prefix).

        Without an image: shape (len(ids), n_vocab). With an image, its embeddings are inserted before
        token index ``image_at`` (default 0) and the result has len(ids) + n_image_tokens rows.
        """
        ids = self._check_ids(ids)
        emb = self.encode_image_embedding(image) if image is not None else None
        at = 0 if image_at is None else int(image_at)
        if emb is None and not ids:
            raise ValueError("logits() needs at least one token")
        if emb is not None and not 0 <= at <= len(ids):
            raise ValueError(f"image_at {at} is outside [0, {len(ids)}]")
        n = len(ids) + (emb.n_rows if emb is not None else 0)
        if n > self.n_ctx:
            raise _core.ContextOverflowError(f"{n} positions exceed n_ctx {self.n_ctx}")
        eng = self.engine
        seq = eng.reserve()
        try:
            eng.ctx.clear(seq)
            b = _core.Batch()
            pos = 0
            for i, t in enumerate(ids):
                if emb is not None and i == at:
                    for r in range(emb.n_rows):
                        b.add_image_row(emb, r, seq, pos, True)
                        pos += 1
                b.add_token(t, seq, pos, True)
                pos += 1
            if emb is not None and at == len(ids):
                for r in range(emb.n_rows):
                    b.add_image_row(emb, r, seq, pos, True)
                    pos += 1
            return eng.ctx.decode(b)
        finally:
            eng.release(seq)

    def score(self, prompt: Union[str, Sequence[int]], continuations: Sequence[Union[str, Sequence[int]]], *,
              image=None, chat: bool = False, image_at: Optional[int] = None) -> List[float]:
        """The log-likelihood of each continuation after the prompt: the sum over its tokens of
        log p(token | prompt, the tokens before it), for ranking candidate answers. The prompt is
        evaluated once; each continuation costs its own tokens. ``chat=True`` puts the prompt into the
        model's chat template as a first turn (with ``image`` spliced in) and scores the continuations
        as the answer; otherwise the prompt is plain text or ids and an image goes before token index
        ``image_at`` of the prompt's tokens (default 0, in front)."""
        if image_at is not None and (chat or image is None):
            raise ValueError("image_at places an image in a plain prompt: it needs an image and chat=False")
        if isinstance(prompt, str) or chat:
            from .chat import Chat
            if chat:
                if not isinstance(prompt, str):
                    raise TypeError("with chat=True the prompt must be a str")
                pieces, _ = Chat(self)._turn_pieces(prompt, image)
            else:
                pieces = _with_image(self, self.tokenize(prompt), image, image_at)
        else:
            pieces = _with_image(self, [int(t) for t in prompt], image, image_at)
        cands = [self.tokenize(c) if isinstance(c, str) else [int(t) for t in c] for c in continuations]
        if any(not c for c in cands):
            raise ValueError("every continuation needs at least one token")
        n_prompt = sum(len(p) if isinstance(p, list) else p.n_rows for p in pieces)
        if n_prompt == 0:
            raise ValueError("score() needs a non-empty prompt")
        if n_prompt + max((len(c) for c in cands), default=0) > self.n_ctx:
            raise _core.ContextOverflowError(f"the prompt ({n_prompt} positions) and the longest continuation do not "
                                             f"fit in n_ctx {self.n_ctx}")

        def log_softmax(rows: np.ndarray) -> np.ndarray:
            r = rows.astype(np.float64)
            m = r.max(axis=1, keepdims=True)
            return r - m - np.log(np.exp(r - m).sum(axis=1, keepdims=True))

        eng = self.engine
        seq = eng.reserve()
        try:
            eng.ctx.clear(seq)
            b = _core.Batch()
            pos = 0
            for p in pieces:
                for r in range(len(p) if isinstance(p, list) else p.n_rows):
                    last = pos == n_prompt - 1
                    if isinstance(p, list):
                        b.add_token(p[r], seq, pos, last)
                    else:
                        b.add_image_row(p, r, seq, pos, last)
                    pos += 1
            first = log_softmax(eng.ctx.decode(b))[0]
            out = []
            for c in cands:
                total = float(first[c[0]])
                if len(c) > 1:
                    eng.ctx.truncate(seq, n_prompt)
                    b = _core.Batch()
                    for j, t in enumerate(c[:-1]):
                        b.add_token(t, seq, n_prompt + j, True)
                    lp = log_softmax(eng.ctx.decode(b))
                    total += float(sum(lp[j, t] for j, t in enumerate(c[1:])))
                out.append(total)
            return out
        finally:
            eng.release(seq)

    def _check_ids(self, ids: Sequence[int]) -> List[int]:
        """The ids as ints, each checked to be a token of the vocabulary."""
        if isinstance(ids, (str, bytes)):
            raise TypeError("expected a sequence of token ids; tokenize() turns text into ids")
        out = []
        for i, t in enumerate(ids):
            if isinstance(t, bool) or not hasattr(t, "__index__"):
                raise TypeError(f"token id {i} must be an integer, got {type(t).__name__}")
            t = int(t)
            if not 0 <= t < self.n_vocab:
                raise ValueError(f"token id {t} (index {i}) is outside the vocabulary [0, {self.n_vocab})")
            out.append(t)
        return out

    # ---- images ------------------------------------------------------------------------------
    def preprocess(self, image) -> np.ndarray:
        """The normalised (3, S, S) float32 input of an image (path, bytes, PIL image or array)."""
        from .image import preprocess_for_model
        return preprocess_for_model(image, self._model)

    def encode_image_embedding(self, image) -> "_core.ImageEmbedding":
        """The image's projected embeddings as the engine holds them (cached by the pixels' content)."""
        if isinstance(image, _core.ImageEmbedding):
            return image
        if not self.has_vision:
            raise _core.ModelError(f"this model (general.architecture '{self.arch}') has no vision encoder")
        return self.engine.ctx.encode_image(self.preprocess(image))

    def encode_image(self, image) -> np.ndarray:
        """The projected image embeddings, float32 (n_image_tokens, n_embd), ready to splice into a prompt."""
        return self.encode_image_embedding(image).numpy()

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
                     repetition_penalty=None, seed=None) -> Tuple[SamplingParams, int]:
        """The sampling settings of one answer: the model's defaults, overridden where given; checked."""
        p = self.chat_defaults
        for name, v, conv in (("temperature", temperature, float), ("top_p", top_p, float), ("top_k", top_k, int),
                              ("min_p", min_p, float), ("repetition_penalty", repetition_penalty, float),
                              ("seed", seed, int)):
            if v is not None:
                setattr(p, name, conv(v))
        n = self.default_max_new_tokens if max_new_tokens is None else max_new_tokens
        return p.check(), check_max_new_tokens(n)

    def new_chat(self, system: Optional[str] = None) -> "Chat":
        """A new conversation. ``system`` replaces the model's system text."""
        from .chat import Chat
        return Chat(self, system=system)

    def chat(self, prompt: str, *, image=None, stream: bool = False, return_result: bool = False,
             max_new_tokens: Optional[int] = None, temperature: Optional[float] = None, top_p: Optional[float] = None,
             top_k: Optional[int] = None, min_p: Optional[float] = None, repetition_penalty: Optional[float] = None,
             seed: Optional[int] = None, stop: Optional[Sequence[str]] = None, ignore_eos: bool = False,
             n_probs: int = 0):
        """One question, optionally about an image (a path, bytes, PIL image or uint8 numpy array). Returns
        the answer text, an iterator of text pieces with ``stream=True``, or the GenerationResult with
        ``return_result=True``. Settings default to the model's own (metadata); ``self.last_result`` holds
        the result of this thread's latest call."""
        from .chat import Chat
        c = Chat(self)
        out = c.ask(prompt, image=image, stream=stream, return_result=return_result, max_new_tokens=max_new_tokens,
                    temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                    repetition_penalty=repetition_penalty, seed=seed, stop=stop, ignore_eos=ignore_eos,
                    n_probs=n_probs)
        self.last_result = c.last
        return out

    def chat_completion(self, messages: Sequence[dict], *, stream: bool = False, max_new_tokens: Optional[int] = None,
                        temperature: Optional[float] = None, top_p: Optional[float] = None,
                        top_k: Optional[int] = None, min_p: Optional[float] = None,
                        repetition_penalty: Optional[float] = None, seed: Optional[int] = None,
                        stop: Optional[Sequence[str]] = None, ignore_eos: bool = False, n_probs: int = 0,
                        reserve_new_tokens: bool = False):
        """The answer to a whole conversation given as OpenAI-shaped messages (``role`` system / user /
        assistant; ``content`` a string or a list of ``text`` and ``image_url`` / ``image`` parts); the
        last message is the user's question. Earlier answers are taken as given, not generated again,
        and the part of the conversation a sequence of the engine still holds is not evaluated again.
        Returns the GenerationResult, or with ``stream=True`` a ChatStream of text pieces (its
        ``result`` complete at the end)."""
        from .chat import Chat
        msgs = list(messages)
        if not msgs or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "user":
            raise ValueError("the last message must be the user's (role 'user')")
        c = Chat.from_messages(self, msgs[:-1])
        text, images = _message_parts(msgs[-1], len(msgs) - 1)
        if len(images) > 1:
            raise ValueError(f"message {len(msgs) - 1}: {len(images)} images in one user message; this model takes "
                             f"one image per turn")
        out = c.ask(text, image=images[0] if images else None, stream=stream, return_result=not stream,
                    max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                    repetition_penalty=repetition_penalty, seed=seed, stop=stop, ignore_eos=ignore_eos,
                    n_probs=n_probs, reserve_new_tokens=reserve_new_tokens)
        self.last_result = c.last
        return out

    # ---- generation --------------------------------------------------------------------------
    def generate(self, prompt: Union[str, Sequence[int]], *, max_new_tokens: int = 128,
                 temperature: Optional[float] = None, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 min_p: Optional[float] = None, repetition_penalty: Optional[float] = None,
                 seed: Optional[int] = None, stop: Optional[Sequence[str]] = None, stream: bool = False,
                 stop_ids: Optional[Sequence[int]] = None, n_probs: int = 0, return_result: bool = False):
        """Continue a text prompt (or a list of token ids). Returns the new text, or an iterator of text
        pieces when ``stream=True``. Generation ends at ``max_new_tokens``, at an end-of-text token, at
        a token in ``stop_ids`` or at a string in ``stop`` (not included in the text). Sampling settings
        default to the sampler's (SamplingParams()). ``return_result`` returns the GenerationResult
        (with ``n_probs``: each token's log-probability and the most probable ones)."""
        ids = self.tokenize(prompt) if isinstance(prompt, str) else self._check_ids(prompt)
        if not ids:
            raise ValueError("generate() needs a non-empty prompt")
        p = SamplingParams(seed=seed if seed is not None else self.seed)
        for name, v, conv in (("temperature", temperature, float), ("top_p", top_p, float), ("top_k", top_k, int),
                              ("min_p", min_p, float), ("repetition_penalty", repetition_penalty, float)):
            if v is not None:
                setattr(p, name, conv(v))
        stop = check_stop(stop)
        req = self.engine.submit([ids], p, max_new_tokens, stop_strings=stop or [], stop_ids=stop_ids or [],
                                 penalty_history=ids, n_probs=n_probs)
        result = GenerationResult(prompt_tokens=len(ids))
        self.last_result = result
        it = _results(req, result)
        if stream:
            return it
        text = "".join(it)
        return result if return_result else text

    def close(self) -> None:
        """Ends the engine (its thread, its context and KV cache); a later call makes a new one."""
        with self._engine_lock:
            eng, self._engine = self._engine, None
        if eng is not None:
            eng.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _with_image(model: Model, ids: List[int], image, image_at: Optional[int]) -> list:
    """Prompt pieces: the ids with the image's embeddings before index image_at (default 0)."""
    if image is None:
        return [ids]
    at = 0 if image_at is None else int(image_at)
    if not 0 <= at <= len(ids):
        raise ValueError(f"image_at {at} is outside [0, {len(ids)}]")
    return [ids[:at], model.encode_image_embedding(image), ids[at:]]


def _results(req: Request, result: GenerationResult) -> Iterator[str]:
    """The text pieces of a request, filling ``result`` as they come."""
    events = req.events()
    whole = False
    try:
        for tok, text, logprob, top in events:
            if tok >= 0:
                result.token_ids.append(tok)
                result.completion_tokens += 1
                if top is not None:
                    result.logprobs.append((tok, logprob, top))
            if text:
                result.text += text
                yield text
        whole = True
    finally:
        events.close()  # cancels the request when the consumer stopped early
        # the engine may have run ahead of a consumer that stopped: the answer is what it took
        result.finish_reason = (req.finish_reason or "interrupted") if whole else "interrupted"
        result.cached_tokens = req.cached
        result.prompt_ms = req.prompt_ms
        result.generation_ms = req.generation_ms


def check_stop(stop) -> List[str]:
    """Stop strings as a list: one string or a sequence of strings."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise TypeError(f"stop must be a string or a list of strings, got {stop!r:.60}")
    return list(stop)


def _message_parts(msg: dict, index: int) -> Tuple[str, list]:
    """The text and the images of one OpenAI-shaped message."""
    if not isinstance(msg, dict) or "role" not in msg:
        raise ValueError(f"message {index} must be a dict with a 'role', got {msg!r:.80}")
    content = msg.get("content")
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, (list, tuple)):
        raise ValueError(f"message {index}: content must be a string or a list of parts, got {type(content).__name__}")
    texts, images = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise ValueError(f"message {index}, part {j}: image_url needs a 'url' string")
            images.append(_image_from_url(url, index, j))
        elif kind == "image":
            images.append(part.get("image"))
        else:
            raise ValueError(f"message {index}, part {j}: unknown part type {kind!r} (expected 'text', 'image_url' "
                             f"or 'image')")
    return "\n".join(texts), images


def _image_from_url(url: str, index: int, part: int):
    """The image of an image_url part: a data: URL (base64) or a local path (file:// or plain)."""
    import base64
    import binascii
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if ";base64" not in head:
            raise ValueError(f"message {index}, part {part}: only base64 data: URLs are supported")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"message {index}, part {part}: the data: URL is not valid base64 ({e})") from None
    if url.startswith("file://"):
        return url[len("file://"):]
    if "://" in url:
        raise ValueError(f"message {index}, part {part}: cannot fetch {url[:80]!r}; send the image as a data: URL")
    return url
