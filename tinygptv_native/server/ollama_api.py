"""ollama's API: /api/chat, /api/generate (images as base64, NDJSON streaming, streaming by default),
/api/tags, /api/show, /api/ps and /api/version, so that ollama clients work unchanged.

Options: ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``repeat_penalty``, ``seed``,
``num_predict`` (negative: the model's default) and ``stop``; others (``num_ctx``...) are ignored, as
are ``format``, ``keep_alive`` and ``context``. ``/api/generate`` applies the chat template, as
ollama does, unless ``raw`` is true (then the prompt is continued as plain text); an empty prompt
answers at once with ``done_reason`` "load". Errors are ollama's ``{"error": "message"}``; a stream
that fails mid-way ends with such a line.
"""
from __future__ import annotations

import datetime as _dt
import json
import time
from typing import Any, AsyncIterator, Dict, List

import anyio
from starlette.responses import JSONResponse, Response, StreamingResponse

from .errors import APIError, bad_request
from .openai_api import _note, _shutdown_error, start_text, whole_answer
from .schemas import boolean, integer, number, obj, read_json, stop_list, string

FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
              12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
              32: "BF16"}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat().replace("+00:00", "Z")


class NDJSONResponse(StreamingResponse):
    """One JSON object a line, streamed; the generator is cancelled when the client goes away."""

    def __init__(self, items: AsyncIterator[dict]):
        super().__init__(items, media_type="application/x-ndjson")
        self.items = items

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async with anyio.create_task_group() as tg:
            async def watch() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch)
            try:
                async for item in self.items:
                    await send({"type": "http.response.body", "more_body": True,
                                "body": (json.dumps(item, ensure_ascii=False) + "\n").encode()})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:  # the client went away while we wrote
                pass
            finally:
                await self.items.aclose()
            tg.cancel_scope.cancel()


def options_of(body: dict) -> Dict[str, Any]:
    """The generation settings of an ollama request's ``options``."""
    o = obj(body, "options")
    kw: Dict[str, Any] = {}
    for name, key in (("temperature", "temperature"), ("top_p", "top_p"), ("min_p", "min_p"),
                      ("repeat_penalty", "repetition_penalty")):
        v = number(o, name, src="options.")
        if v is not None:
            kw[key] = v
    v = integer(o, "top_k", lo=0, src="options.")
    if v is not None:
        kw["top_k"] = v
    v = integer(o, "seed", src="options.")
    if v is not None:
        kw["seed"] = v & 0xFFFFFFFFFFFFFFFF
    v = integer(o, "num_predict", src="options.")
    if v is not None and v >= 0:
        kw["max_new_tokens"] = v
    stops = stop_list(o, "stop", src="options.")
    if stops:
        kw["stop"] = stops
    return kw


def images_of(m: dict, where: str, st, count: List[int]) -> List[dict]:
    imgs = m.get("images")
    if imgs is None:
        return []
    if not isinstance(imgs, list):
        raise bad_request(f"'{where}.images' must be a list of base64 strings", param=f"{where}.images",
                          code="invalid_type")
    out = []
    for j, s in enumerate(imgs):
        count[0] += 1
        if count[0] > st.cfg.max_images:
            raise bad_request(f"more than {st.cfg.max_images} images in one request", code="too_many_images")
        out.append({"type": "image", "image": st.images.from_base64(s, f"{where}.images[{j}]")})
    return out


def chat_messages(body: dict, st) -> List[dict]:
    msgs = body.get("messages")
    if msgs is None:
        raise bad_request("'messages' is required", param="messages", code="missing_field")
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("'messages' must be a non-empty list", param="messages", code="invalid_type")
    count = [0]
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"'{where}' must be an object", param=where, code="invalid_type")
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            raise bad_request(f"'{where}.role' must be 'system', 'user' or 'assistant', got {role!r:.40}",
                              param=f"{where}.role", code="invalid_value")
        text = string(m, "content", default="", src=where + ".")
        parts: List[dict] = images_of(m, where, st, count)
        out.append({"role": role, "content": parts + [{"type": "text", "text": text}] if parts else text})
    st.metrics.images.inc(count[0])
    return out


def stats(job) -> dict:
    r = job.result
    total = time.perf_counter() - job.t_admit
    out = {"total_duration": int(total * 1e9), "load_duration": 0}
    if r is not None:
        out.update(prompt_eval_count=max(0, job.prompt_positions - r.cached_tokens),
                   prompt_eval_duration=int(r.prompt_ms * 1e6), eval_count=r.completion_tokens,
                   eval_duration=int(r.generation_ms * 1e6))
    return out


def done_reason(job) -> str:
    r = job.result
    return "length" if r is not None and r.finish_reason == "length" else "stop"


async def _run(request, st, job, stream: bool, piece_obj, final_obj):
    """Non-streaming: one JSON object; streaming: NDJSON lines, the last one with done true."""
    try:
        await job.started()
    except BaseException:
        job.cancel("disconnect")
        raise
    if not stream:
        done = await whole_answer(job, request, st)
        if isinstance(done, Response):
            return done
        text, _ = done
        return JSONResponse(final_obj(text))

    async def items():
        try:
            async for text, _ in job.pieces():
                if text:
                    yield piece_obj(text)
            if job.cancel_reason == "shutdown":
                raise _shutdown_error()
            yield final_obj("")
        except APIError as e:
            request.state.stream_error = e.status
            yield e.ollama_body()
        finally:
            if not job.done:
                job.cancel("disconnect")
            _note(request, job, st)

    return NDJSONResponse(items())


async def chat(request):
    st = request.app.state.server
    body = await read_json(request, st.cfg.max_body_bytes)
    model = st.model()
    stream = boolean(body, "stream", default=True)
    kw = options_of(body)
    messages = await anyio.to_thread.run_sync(chat_messages, body, st)
    name = st.cfg.model_name
    job = st.runner.start(lambda: model.chat_completion(messages, stream=True, **kw))

    def piece(text: str) -> dict:
        return {"model": name, "created_at": now_iso(), "message": {"role": "assistant", "content": text},
                "done": False}

    def final(text: str) -> dict:
        return {"model": name, "created_at": now_iso(), "message": {"role": "assistant", "content": text},
                "done": True, "done_reason": done_reason(job), **stats(job)}

    return await _run(request, st, job, stream, piece, final)


async def generate(request):
    st = request.app.state.server
    body = await read_json(request, st.cfg.max_body_bytes)
    model = st.model()
    stream = boolean(body, "stream", default=True)
    prompt = string(body, "prompt", default="")
    system = string(body, "system")
    raw = boolean(body, "raw", default=False)
    kw = options_of(body)
    name = st.cfg.model_name
    images = await anyio.to_thread.run_sync(lambda: images_of(body, "body", st, [0]))
    st.metrics.images.inc(len(images))
    if not prompt and not images:  # ollama's way to load a model
        return JSONResponse({"model": name, "created_at": now_iso(), "response": "", "done": True,
                             "done_reason": "load"})
    if raw:
        if images:
            raise bad_request("'raw' prompts cannot take images", param="raw", code="unsupported_value")
        ids = model.tokenize(prompt)
        max_new = kw.pop("max_new_tokens", 128)
        stop = kw.pop("stop", [])
        job = st.runner.start(lambda: start_text(model, ids, kw, max_new, stop, 0))
    else:
        messages: List[dict] = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": images + [{"type": "text", "text": prompt}]})
        job = st.runner.start(lambda: model.chat_completion(messages, stream=True, **kw))

    def piece(text: str) -> dict:
        return {"model": name, "created_at": now_iso(), "response": text, "done": False}

    def final(text: str) -> dict:
        return {"model": name, "created_at": now_iso(), "response": text, "done": True,
                "done_reason": done_reason(job), **stats(job)}

    return await _run(request, st, job, stream, piece, final)


# ---- model listings ------------------------------------------------------------------------------
def details(st) -> dict:
    m = st.model()
    ft = m.metadata.get("general.file_type")
    return {"parent_model": "", "format": "gguf", "family": m.arch,
            "families": [m.arch] + (["clip"] if m.has_vision else []),
            "parameter_size": st.parameter_size, "quantization_level": FILE_TYPES.get(ft, str(ft))}


def listing(st) -> dict:
    return {"name": st.cfg.model_name, "model": st.cfg.model_name, "modified_at": st.modified_at,
            "size": st.file_size, "digest": st.digest, "details": details(st)}


async def tags(request):
    st = request.app.state.server
    return JSONResponse({"models": [listing(st)]})


async def ps(request):
    st = request.app.state.server
    item = listing(st)
    item.update(expires_at="9999-12-31T23:59:59Z", size_vram=0, context_length=st.model().n_ctx)
    return JSONResponse({"models": [item]})


async def show(request):
    st = request.app.state.server
    await read_json(request, st.cfg.max_body_bytes)
    m = st.model()
    d = m.chat_defaults
    params = "\n".join(f"{k} {v:g}" for k, v in (("temperature", d.temperature), ("top_p", d.top_p),
                                                   ("top_k", d.top_k), ("repeat_penalty", d.repetition_penalty)))
    t = m.chat_template
    return JSONResponse({"modelfile": "", "parameters": params, "template": t.system + t.template,
                         "details": details(st), "modified_at": st.modified_at,
                         "model_info": {"general.architecture": m.arch, f"{m.arch}.context_length": m.n_ctx,
                                        f"{m.arch}.embedding_length": m.n_embd,
                                        "general.parameter_count": st.parameter_count},
                         "capabilities": ["completion", "vision"] if m.has_vision else ["completion"]})


async def version(request):
    from .. import __version__
    return JSONResponse({"version": __version__})

