"""OpenAI's API: /v1/chat/completions, /v1/completions and /v1/models, as the ``openai`` client
and OpenAI-compatible tools use them.

Chat messages hold text and ``image_url`` parts (data URLs, bare base64, ``file://`` under the media
folder); earlier turns may hold images too. Sampling: ``temperature``, ``top_p``, ``seed``, ``stop``,
``max_tokens`` / ``max_completion_tokens``, ``logprobs`` / ``top_logprobs``, and the engine's
``top_k``, ``min_p``, ``repeat_penalty`` (also ``repetition_penalty``) and ``ignore_eos``; settings
not given take the model's own (its GGUF metadata) for chats and the sampler's defaults for plain
completions. ``n`` must be 1. Unknown fields are ignored. Responses carry ``usage`` (with
``prompt_tokens_details.cached_tokens``) and llama-server-style ``timings``.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

from sse_starlette.sse import EventSourceResponse
from starlette.responses import JSONResponse, Response

from .errors import APIError, bad_request
from .runner import TextStream, collect
from .schemas import boolean, integer, number, obj, read_json, stop_list, string

FINISH = {"stop": "stop", "length": "length", "interrupted": "stop"}


# ---- requests ----------------------------------------------------------------------------------
def parse_messages(body: dict, st) -> Tuple[List[dict], int]:
    """The conversation in the model's terms (images as checked bytes) and its number of images."""
    msgs = body.get("messages")
    if msgs is None:
        raise bad_request("'messages' is required", param="messages", code="missing_field")
    if not isinstance(msgs, list):
        raise bad_request("'messages' must be a list of messages", param="messages", code="invalid_type")
    if not msgs:
        raise bad_request("'messages' must not be empty", param="messages", code="invalid_value")
    out: List[dict] = []
    n_images = 0
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"'{where}' must be an object", param=where, code="invalid_type")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise bad_request(f"'{where}.role' must be 'system', 'user' or 'assistant', got {role!r:.40}",
                              param=f"{where}.role", code="invalid_value")
        content = m.get("content")
        if content is None or isinstance(content, str):
            out.append({"role": role, "content": content or ""})
            continue
        if not isinstance(content, list):
            raise bad_request(f"'{where}.content' must be a string or a list of parts", param=f"{where}.content",
                              code="invalid_type")
        parts: List[dict] = []
        for j, part in enumerate(content):
            pw = f"{where}.content[{j}]"
            if not isinstance(part, dict):
                raise bad_request(f"'{pw}' must be an object", param=pw, code="invalid_type")
            kind = part.get("type")
            if kind in ("text", "input_text"):
                text = part.get("text")
                if not isinstance(text, str):
                    raise bad_request(f"'{pw}.text' must be a string", param=f"{pw}.text", code="invalid_type")
                parts.append({"type": "text", "text": text})
            elif kind in ("image_url", "input_image"):
                url = part.get("image_url")
                if isinstance(url, dict):
                    url = url.get("url")
                if not isinstance(url, str):
                    raise bad_request(f"'{pw}.image_url' must be a string or an object with a 'url' string",
                                      param=f"{pw}.image_url", code="invalid_type")
                n_images += 1
                if n_images > st.cfg.max_images:
                    raise bad_request(f"more than {st.cfg.max_images} images in one request", param=pw,
                                      code="too_many_images")
                parts.append({"type": "image", "image": st.images.from_url(url, pw)})
            else:
                raise bad_request(f"'{pw}.type' must be 'text' or 'image_url', got {kind!r:.40}",
                                  param=f"{pw}.type", code="invalid_value")
        out.append({"role": role, "content": parts})
    return out, n_images


def max_tokens_of(body: dict, st, default: Optional[int]) -> Optional[int]:
    limit = st.cfg.max_tokens_limit or st.model().n_ctx
    n = integer(body, "max_completion_tokens", lo=1, hi=limit)
    if n is None:
        n = integer(body, "max_tokens", lo=1, hi=limit)
    return default if n is None else n


def sampling_of(body: dict) -> Dict[str, Any]:
    """The engine's sampling settings named in an OpenAI-style body (types checked; the engine checks
    the ranges)."""
    kw: Dict[str, Any] = {}
    for name, key in (("temperature", "temperature"), ("top_p", "top_p"), ("min_p", "min_p")):
        v = number(body, name)
        if v is not None:
            kw[key] = v
    for name in ("repeat_penalty", "repetition_penalty"):
        v = number(body, name)
        if v is not None:
            kw["repetition_penalty"] = v
    v = integer(body, "top_k", lo=0)
    if v is not None:
        kw["top_k"] = v
    v = integer(body, "seed")
    if v is not None:
        kw["seed"] = v & 0xFFFFFFFFFFFFFFFF
    for name in ("presence_penalty", "frequency_penalty"):  # accepted, not used: checked for type only
        number(body, name)
    return kw


def check_n(body: dict) -> None:
    n = integer(body, "n")
    if n is not None and n != 1:
        raise bad_request(f"'n' must be 1 (one answer per request), got {n}", param="n", code="unsupported_value")


# ---- responses ---------------------------------------------------------------------------------
def usage_of(job) -> dict:
    r = job.result
    p = max(job.prompt_positions, r.prompt_tokens + r.image_tokens)
    return {"prompt_tokens": p, "completion_tokens": r.completion_tokens, "total_tokens": p + r.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens}}


def timings_of(job) -> dict:
    t = dict(job.result.timings)
    if job.ttft_s is not None:
        t["ttft_ms"] = job.ttft_s * 1e3
    return t


def finish_of(job) -> str:
    return FINISH.get(job.result.finish_reason, "stop")


class TokenText:
    """Token ids as OpenAI shows them: text and UTF-8 bytes (memoised: the vocabulary is fixed)."""

    def __init__(self, model):
        self._tok = model.tokenizer
        self._memo: Dict[int, Tuple[str, List[int]]] = {}

    def __call__(self, tid: int) -> Tuple[str, List[int]]:
        v = self._memo.get(tid)
        if v is None:
            b = bytes(self._tok.decode([int(tid)]))
            v = self._memo[tid] = (b.decode("utf-8", "replace"), list(b))
        return v


def chat_logprobs(st, entries, n_top: int) -> dict:
    tt = st.token_text()
    content = []
    for tid, lp, top in entries:
        s, b = tt(tid)
        tops = []
        for t2, lp2 in top[:n_top]:
            s2, b2 = tt(t2)
            tops.append({"token": s2, "logprob": float(lp2), "bytes": b2})
        content.append({"token": s, "logprob": float(lp), "bytes": b, "top_logprobs": tops})
    return {"content": content}


def text_logprobs(st, entries, n_top: int, offset: int) -> dict:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs (dicts), text_offset."""
    tt = st.token_text()
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for tid, lp, top in entries:
        s, _ = tt(tid)
        out["tokens"].append(s)
        out["token_logprobs"].append(float(lp))
        out["top_logprobs"].append({tt(t2)[0]: float(lp2) for t2, lp2 in top[:n_top]})
        out["text_offset"].append(offset)
        offset += len(s)
    return out


def _note(request, job, st) -> None:
    """Tokens for the request log and the metrics."""
    if job.result is not None:
        r = job.result
        request.state.tokens = (job.prompt_positions, r.cached_tokens, r.completion_tokens)
        st.metrics.count_result(r, job.prompt_positions)
    if job.ttft_s is not None:
        st.metrics.ttft.observe(job.ttft_s)
    if job.cancel_reason is not None:
        st.metrics.cancelled.labels(job.cancel_reason).inc()


def _shutdown_error() -> APIError:
    return APIError(503, "the server shut down before the answer was complete", code="shutting_down")


async def sse_response(request, st, gen) -> EventSourceResponse:
    grace = st.cfg.shutdown_grace + 2.0  # the runner cancels first; then this ends the stream anyway
    return EventSourceResponse(gen, ping=15, shutdown_grace_period=grace, sep="\n")


# ---- /v1/chat/completions ----------------------------------------------------------------------
async def chat_completions(request):
    import anyio
    st = request.app.state.server
    body = await read_json(request, st.cfg.max_body_bytes)
    model = st.model()
    check_n(body)
    stream = boolean(body, "stream", default=False)
    include_usage = boolean(obj(body, "stream_options"), "include_usage", default=False, src="stream_options.")
    want_lp = boolean(body, "logprobs", default=False)
    n_top = integer(body, "top_logprobs", lo=0, hi=20, default=0)
    if n_top and not want_lp:
        raise bad_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs", code="invalid_value")
    kw = sampling_of(body)
    kw["max_new_tokens"] = max_tokens_of(body, st, None)
    # a client that names max_tokens is promised that many positions (else the answer stops at the
    # context's end, finish_reason "length")
    kw["reserve_new_tokens"] = kw["max_new_tokens"] is not None
    kw["stop"] = stop_list(body)
    kw["ignore_eos"] = boolean(body, "ignore_eos", default=False)
    if want_lp:
        kw["n_probs"] = max(1, n_top)
    messages, n_images = await anyio.to_thread.run_sync(parse_messages, body, st)
    st.metrics.images.inc(n_images)

    job = st.runner.start(lambda: model.chat_completion(messages, stream=True, **kw), want_logprobs=want_lp)
    try:
        await job.started()
    except BaseException:
        job.cancel("disconnect")
        raise
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    name = st.cfg.model_name
    fingerprint = st.fingerprint

    if not stream:
        done = await whole_answer(job, request, st)
        if isinstance(done, Response):
            return done
        text, lps = done
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "logprobs": chat_logprobs(st, lps, n_top) if want_lp else None, "finish_reason": finish_of(job)}
        return JSONResponse({"id": cid, "object": "chat.completion", "created": created, "model": name,
                             "system_fingerprint": fingerprint, "choices": [choice], "usage": usage_of(job),
                             "timings": timings_of(job)})

    def chunk(delta: dict, finish: Optional[str] = None, logprobs: Any = None) -> str:
        c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
             "system_fingerprint": fingerprint,
             "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
        if include_usage:
            c["usage"] = None
        return json.dumps(c, ensure_ascii=False)

    async def events():
        try:
            yield {"data": chunk({"role": "assistant", "content": ""})}
            async for text, lp in job.pieces():
                if text or lp:
                    yield {"data": chunk({"content": text},
                                         logprobs=chat_logprobs(st, lp, n_top) if want_lp and lp else None)}
            if job.cancel_reason == "shutdown":
                raise _shutdown_error()
            yield {"data": chunk({}, finish_of(job))}
            if include_usage:
                yield {"data": json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                           "model": name, "system_fingerprint": fingerprint, "choices": [],
                                           "usage": usage_of(job), "timings": timings_of(job)})}
            yield {"data": "[DONE]"}
        except APIError as e:  # a failure mid-way: an error event, never a truncated success
            request.state.stream_error = e.status
            yield {"data": json.dumps(e.openai_body())}
        finally:
            if not job.done:
                job.cancel("disconnect")
            _note(request, job, st)

    return await sse_response(request, st, events())


# ---- /v1/completions ---------------------------------------------------------------------------
def prompt_ids(body: dict, model) -> List[int]:
    p = body.get("prompt")
    if p is None:
        raise bad_request("'prompt' is required", param="prompt", code="missing_field")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]
    if isinstance(p, str):
        ids = model.tokenize(p)
    elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        if any(not 0 <= t < model.n_vocab for t in p):
            raise bad_request(f"'prompt' holds token ids outside [0, {model.n_vocab})", param="prompt",
                              code="invalid_value")
        ids = list(p)
    elif isinstance(p, list):
        raise bad_request("'prompt' must be a string, a list of token ids, or a list of one of those (one "
                          "prompt per request)", param="prompt", code="invalid_type")
    else:
        raise bad_request("'prompt' must be a string or a list of token ids", param="prompt", code="invalid_type")
    if not ids:
        raise bad_request("'prompt' is empty", param="prompt", code="invalid_value")
    return ids


def start_text(model, ids: List[int], kw: Dict[str, Any], max_new: int, stop: List[str], n_probs: int):
    """A plain continuation's stream (the sampler's defaults where the request says nothing)."""
    from .. import _core
    from ..engine import SamplingParams
    if len(ids) + max_new > model.n_ctx:
        raise _core.ContextOverflowError(
            f"the prompt ({len(ids)} tokens) plus max_tokens ({max_new}) needs {len(ids) + max_new} positions, "
            f"more than the context of {model.n_ctx}")
    p = SamplingParams(seed=model.seed)
    for k, v in kw.items():
        setattr(p, k, v)
    return TextStream(model, ids, p, max_new, stop, n_probs)


async def completions(request):
    st = request.app.state.server
    body = await read_json(request, st.cfg.max_body_bytes)
    model = st.model()
    check_n(body)
    if integer(body, "best_of") not in (None, 1):
        raise bad_request("'best_of' must be 1", param="best_of", code="unsupported_value")
    if boolean(body, "echo", default=False):
        raise bad_request("'echo' is not supported", param="echo", code="unsupported_value")
    if string(body, "suffix"):
        raise bad_request("'suffix' is not supported", param="suffix", code="unsupported_value")
    stream = boolean(body, "stream", default=False)
    include_usage = boolean(obj(body, "stream_options"), "include_usage", default=False, src="stream_options.")
    n_top = integer(body, "logprobs", lo=0, hi=20)
    want_lp = n_top is not None
    kw = sampling_of(body)
    max_new = max_tokens_of(body, st, 16)
    stop = stop_list(body)
    ids = prompt_ids(body, model)
    job = st.runner.start(lambda: start_text(model, ids, kw, max_new, stop, max(1, n_top or 0) if want_lp else 0),
                          want_logprobs=want_lp)
    try:
        await job.started()
    except BaseException:
        job.cancel("disconnect")
        raise
    cid = "cmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    name = st.cfg.model_name

    if not stream:
        done = await whole_answer(job, request, st)
        if isinstance(done, Response):
            return done
        text, lps = done
        choice = {"index": 0, "text": text, "logprobs": text_logprobs(st, lps, n_top or 0, 0) if want_lp else None,
                  "finish_reason": finish_of(job)}
        return JSONResponse({"id": cid, "object": "text_completion", "created": created, "model": name,
                             "system_fingerprint": st.fingerprint, "choices": [choice], "usage": usage_of(job),
                             "timings": timings_of(job)})

    async def events():
        offset = 0
        try:
            async for text, lp in job.pieces():
                if text or lp:
                    c = {"id": cid, "object": "text_completion", "created": created, "model": name,
                         "choices": [{"index": 0, "text": text, "finish_reason": None,
                                      "logprobs": text_logprobs(st, lp, n_top or 0, offset) if want_lp and lp
                                      else None}]}
                    offset += len(text)
                    yield {"data": json.dumps(c, ensure_ascii=False)}
            if job.cancel_reason == "shutdown":
                raise _shutdown_error()
            yield {"data": json.dumps({"id": cid, "object": "text_completion", "created": created, "model": name,
                                       "choices": [{"index": 0, "text": "", "logprobs": None,
                                                    "finish_reason": finish_of(job)}]})}
            if include_usage:
                yield {"data": json.dumps({"id": cid, "object": "text_completion", "created": created,
                                           "model": name, "choices": [], "usage": usage_of(job),
                                           "timings": timings_of(job)})}
            yield {"data": "[DONE]"}
        except APIError as e:
            request.state.stream_error = e.status
            yield {"data": json.dumps(e.openai_body())}
        finally:
            if not job.done:
                job.cancel("disconnect")
            _note(request, job, st)

    return await sse_response(request, st, events())


# ---- /v1/models --------------------------------------------------------------------------------
def model_card(st) -> dict:
    m = st.model()
    return {"id": st.cfg.model_name, "object": "model", "created": st.created, "owned_by": "tinygptv-native",
            "input_modalities": ["text", "image"] if m.has_vision else ["text"], "output_modalities": ["text"],
            "meta": {"architecture": m.arch, "n_ctx": m.n_ctx, "n_parallel": m.n_parallel, "n_vocab": m.n_vocab,
                     "n_embd": m.n_embd, "image_size": m.image_size,
                     "n_image_tokens": m.n_image_tokens if m.has_vision else 0, "size": st.file_size}}


async def models(request):
    st = request.app.state.server
    return JSONResponse({"object": "list", "data": [model_card(st)]})

async def whole_answer(job, request, st):
    """A non-streamed answer: (text, log-probabilities), or the response for a job ended by the server's
    shutdown (raised) or by its client going away (499)."""
    try:
        text, lps = await collect(job, request)
    finally:
        _note(request, job, st)
    if job.cancel_reason == "shutdown":
        raise _shutdown_error()
    if job.cancel_reason == "disconnect":
        return Response(status_code=499)
    return text, lps
