"""`tinygptv serve` on 127.0.0.1 with the demo model, driven by the official `openai` client and by
httpx (ollama's API): answers equal to Model.chat's and Model.generate's greedy ones, streaming and
usage chunks, log-probabilities, the cache reused by a resent conversation, errors as the clients'
own exception types, the API key, the list of bad requests (each a 4xx JSON error, and nothing
changes), limits, a client that goes away, the queue limit, /health while loading, and the command
line (a clean exit on SIGTERM, a stream cut by shutdown ending with an error event)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")
pytest.importorskip("prometheus_client")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

sys.path.insert(0, os.path.dirname(__file__))
from fixtures.proc import CHILD_CWD, child_env  # noqa: E402
from server_helpers import data_url, png_header_only, running, slow_steps, wait_until  # noqa: E402

from tinygptv_native import Model  # noqa: E402
from tinygptv_native.demo import demo_image_path  # noqa: E402
from tinygptv_native.server import ServerConfig  # noqa: E402

IMG = demo_image_path().read_bytes()
URL = data_url(IMG)
QUESTIONS = ["Describe the image.", "How many shapes are there?", "What color is the circle?",
             "[refer] where is the green triangle?"]


@pytest.fixture(scope="module")
def model():
    m = Model(n_threads=2, n_parallel=4)
    yield m
    m.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    (d / "example.png").write_bytes(IMG)
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.png").write_bytes(IMG)
    os.symlink(outside / "secret.png", d / "link.png")
    return d, outside


@pytest.fixture(scope="module")
def server(model, media):
    cfg = ServerConfig(model=model, n_parallel=model.n_parallel, max_queue=16, media_dir=str(media[0]),
                       max_body_bytes=4 << 20, max_image_bytes=2 << 20, max_image_pixels=4_000_000)
    with running(cfg) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def user(text, url=URL):
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": text}]}


def quiet(server):
    """Nothing left running: no request in flight, no sequence busy, none queued."""
    eng = server.state._model.engine
    return server.state.runner.in_flight == 0 and eng.n_busy == 0 and eng.queue_depth == 0


# ---- answers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("question", QUESTIONS)
def test_chat_plain_and_streamed_equal_model_chat(model, client, question):
    want = model.chat(question, image=IMG, temperature=0)
    r = client.chat.completions.create(model="demo", messages=[user(question)], temperature=0)
    assert r.choices[0].message.content == want
    assert r.choices[0].finish_reason == "stop" and r.object == "chat.completion"
    assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > model.n_image_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0
    assert r.model_extra["timings"]["predicted_n"] == r.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="demo", messages=[user(question)], temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == r.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    # the same picture again: its positions come from the cache
    assert last.usage.prompt_tokens_details.cached_tokens >= model.n_image_tokens


def test_stream_without_usage_and_stop_strings(model, client):
    want = model.chat("Describe the image.", image=IMG, temperature=0, stop=["green"])
    chunks = list(client.chat.completions.create(model="demo", messages=[user("Describe the image.")],
                                                 temperature=0, stop="green", stream=True))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert "green" not in want


def test_max_tokens_and_sampling_fields(model, client):
    r = client.chat.completions.create(model="demo", messages=[user("Describe the image.")], temperature=0,
                                       max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    assert r.choices[0].message.content == model.chat("Describe the image.", image=IMG, temperature=0,
                                                      max_new_tokens=3)
    r = client.chat.completions.create(model="demo", messages=[user("Describe the image.")],
                                       max_completion_tokens=2, temperature=0.7, top_p=0.9, seed=7,
                                       extra_body={"top_k": 5, "min_p": 0.05, "repeat_penalty": 1.1,
                                                   "unknown_field": {"ignored": True}})
    assert r.usage.completion_tokens <= 2
    again = client.chat.completions.create(model="demo", messages=[user("Describe the image.")],
                                           max_completion_tokens=2, temperature=0.7, top_p=0.9, seed=7,
                                           extra_body={"top_k": 5, "min_p": 0.05, "repeat_penalty": 1.1})
    assert again.choices[0].message.content == r.choices[0].message.content  # seeded


def test_conversation_resent_reuses_the_cache(model, client):
    """Turn 2 of a chat about one picture, resent whole: equals Chat.ask's second answer, and the
    first turn (picture included) comes from the cache."""
    c = model.new_chat()
    a1 = c.ask("How many shapes are there?", image=IMG, temperature=0)
    a2 = c.ask("Describe the image.", temperature=0)
    msgs = [user("How many shapes are there?")]
    r1 = client.chat.completions.create(model="demo", messages=msgs, temperature=0)
    assert r1.choices[0].message.content == a1
    msgs += [{"role": "assistant", "content": a1}, {"role": "user", "content": "Describe the image."}]
    r2 = client.chat.completions.create(model="demo", messages=msgs, temperature=0)
    assert r2.choices[0].message.content == a2
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens
    assert r2.model_extra["timings"]["image_encode_ms"] == 0.0


def test_system_message(model, client):
    want = model.chat_completion([{"role": "system", "content": "You answer."}, user("Describe the image.")],
                                 temperature=0).text
    r = client.chat.completions.create(model="demo", temperature=0, messages=[
        {"role": "system", "content": "You answer."}, user("Describe the image.")])
    assert r.choices[0].message.content == want


def test_logprobs(model, client):
    r = client.chat.completions.create(model="demo", messages=[user("Describe the image.")], temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(e.token for e in content) == r.choices[0].message.content
    for e in content:
        assert e.logprob <= 0 and bytes(e.bytes).decode("utf-8", "replace") == e.token
        assert len(e.top_logprobs) == 3
        lps = [t.logprob for t in e.top_logprobs]
        assert lps == sorted(lps, reverse=True) and e.logprob <= lps[0] + 1e-6
    chunks = list(client.chat.completions.create(model="demo", messages=[user("Describe the image.")],
                                                 temperature=0, logprobs=True, top_logprobs=1, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert all(len(e.top_logprobs) == 1 for e in streamed)


def test_completions_equal_generate(model, client):
    prompt = "<s>[INST] How many"
    want = model.generate(prompt, max_new_tokens=12, temperature=0)
    r = client.completions.create(model="demo", prompt=prompt, max_tokens=12, temperature=0)
    assert r.choices[0].text == want and r.object == "text_completion"
    assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(model="demo", prompt=prompt, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert chunks[-1].usage.completion_tokens == 12
    ids = model.tokenize(prompt)
    r = client.completions.create(model="demo", prompt=ids, max_tokens=12, temperature=0, logprobs=2)
    assert r.choices[0].text == want
    assert len(r.choices[0].logprobs.tokens) == 12 and all(len(t) == 2 for t in r.choices[0].logprobs.top_logprobs)


def test_models_health_metrics(server, client):
    models = client.models.list().data
    assert [m.id for m in models] == ["demo-q8_0"]
    assert models[0].model_extra["input_modalities"] == ["text", "image"]
    h = httpx.get(server.url + "/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    for name in ("tinygptv_requests_total", "tinygptv_completion_tokens_total", "tinygptv_queue_depth",
                 "tinygptv_busy_sequences", "tinygptv_request_duration_seconds_bucket",
                 "tinygptv_time_to_first_token_seconds_count", "tinygptv_prompt_tokens_total"):
        assert name in text, name
    assert 'tinygptv_requests_total{endpoint="/v1/chat/completions",status="200"}' in text


def test_page_is_served(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"] and "/static/app.js" in r.text
    for f in ("app.js", "style.css"):
        assert httpx.get(server.url + "/static/" + f).status_code == 200
    # nothing loaded from other sites
    for f in ("index.html", "app.js", "style.css"):
        body = httpx.get(server.url + ("/" if f == "index.html" else "/static/" + f)).text
        assert not re.search(r"""(?:src|href|action)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|"""
                             r"""fetch\(\s*["'`](?:https?:)?//|@import""", body), f


# ---- ollama -------------------------------------------------------------------------------------------
def test_ollama_chat_and_generate(model, server):
    b64 = URL.split(",", 1)[1]
    want = model.chat("Describe the image.", image=IMG, temperature=0)
    msgs = [{"role": "user", "content": "Describe the image.", "images": [b64]}]
    with httpx.stream("POST", server.url + "/api/chat", timeout=60,
                      json={"model": "demo", "messages": msgs, "options": {"temperature": 0}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert all(not x["done"] for x in lines[:-1]) and lines[-1]["done"] and lines[-1]["done_reason"] == "stop"
    assert "".join(x["message"]["content"] for x in lines) == want
    assert lines[-1]["eval_count"] >= 1 and lines[-1]["total_duration"] > 0
    r = httpx.post(server.url + "/api/chat", timeout=60,
                   json={"model": "demo", "messages": msgs, "stream": False, "options": {"temperature": 0}}).json()
    assert r["message"] == {"role": "assistant", "content": want} and r["done"]

    r = httpx.post(server.url + "/api/generate", timeout=60, json={
        "model": "demo", "prompt": "Describe the image.", "images": [b64], "stream": False,
        "options": {"temperature": 0, "num_predict": 4}}).json()
    assert r["response"] == model.chat("Describe the image.", image=IMG, temperature=0, max_new_tokens=4)
    assert r["done_reason"] == "length"
    with httpx.stream("POST", server.url + "/api/generate", timeout=60, json={
            "model": "demo", "prompt": "Describe the image.", "images": [b64], "options": {"temperature": 0}}) as s:
        lines = [json.loads(line) for line in s.iter_lines() if line]
    assert "".join(x["response"] for x in lines) == want and lines[-1]["done"]
    raw = httpx.post(server.url + "/api/generate", timeout=60, json={
        "model": "demo", "prompt": "<s>[INST] How many", "raw": True, "stream": False,
        "options": {"temperature": 0, "num_predict": 10}}).json()
    assert raw["response"] == model.generate("<s>[INST] How many", max_new_tokens=10, temperature=0)
    load = httpx.post(server.url + "/api/generate", json={"model": "demo"}).json()
    assert load["done"] and load["done_reason"] == "load"


def test_ollama_listings(server):
    tags = httpx.get(server.url + "/api/tags").json()["models"]
    assert tags[0]["name"] == "demo-q8_0" and tags[0]["details"]["format"] == "gguf"
    assert tags[0]["details"]["quantization_level"] == "Q8_0" and tags[0]["size"] > 0
    show = httpx.post(server.url + "/api/show", json={"model": "demo-q8_0"}).json()
    assert "vision" in show["capabilities"]
    assert httpx.get(server.url + "/api/ps").json()["models"][0]["name"] == "demo-q8_0"
    assert "version" in httpx.get(server.url + "/api/version").json()


def test_ollama_python_client(model, server):
    ollama = pytest.importorskip("ollama")
    c = ollama.Client(host=server.url)
    assert [m.model for m in c.list().models] == ["demo-q8_0"]
    assert "vision" in c.show("demo-q8_0").capabilities
    pic = str(demo_image_path())
    parts = list(c.chat(model="demo-q8_0", stream=True, options={"temperature": 0},
                        messages=[{"role": "user", "content": "Describe the image.", "images": [pic]}]))
    assert "".join(p.message.content for p in parts) == model.chat("Describe the image.", image=IMG, temperature=0)
    assert parts[-1].done and parts[-1].done_reason == "stop"
    r = c.generate(model="demo-q8_0", prompt="How many shapes are there?", images=[pic], options={"temperature": 0})
    assert r.response == "three" and r.eval_count == 1
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model="demo-q8_0", messages=[{"role": "wizard", "content": "hi"}])
    assert e.value.status_code == 400 and "role" in e.value.error


def test_ollama_errors_are_ollama_shaped(server):
    r = httpx.post(server.url + "/api/chat", json={"model": "demo", "messages": "hello"})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    r = httpx.post(server.url + "/api/chat", json={"model": "demo", "messages": [{"role": "user", "content": "hi"}],
                                                   "options": {"temperature": "warm"}})
    assert r.status_code == 400 and "options.temperature" in r.json()["error"]


# ---- errors -------------------------------------------------------------------------------------------
def test_errors_raise_the_clients_exception_types(model, client):
    with pytest.raises(openai.BadRequestError, match="'n' must be 1"):
        client.chat.completions.create(model="demo", messages=[user("Hi")], n=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="demo", messages=[user("Hi")], temperature="hot")
    with pytest.raises(openai.BadRequestError, match="the last message must be the user's"):
        client.chat.completions.create(model="demo", messages=[{"role": "assistant", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo", messages=[user("Hi")], max_tokens=model.n_ctx - 10)
    assert e.value.code == "context_length_exceeded" and e.value.status_code == 400
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo", messages=[user("word " * 3000)])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.UnprocessableEntityError, match="not a recognised image"):
        client.chat.completions.create(model="demo", messages=[user("Hi", data_url(b"\x89PNG\r\n\x1a\nbroken"))])
    with pytest.raises(openai.PermissionDeniedError, match="outside the media folder"):
        client.chat.completions.create(model="demo", messages=[user("Hi", "file:///etc/passwd")])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="demo", input="x")
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="demo", messages=[user("Hi", data_url(png_header_only(3000, 3000)))])
    assert e.value.status_code == 413


def _big_body():
    return b'{"messages": [{"role": "user", "content": "' + b"a" * (5 << 20) + b'"}]}'


def _chunked_big_body():
    yield b'{"messages": [{"role": "user", "content": "'
    for _ in range(5):
        yield b"a" * (1 << 20)
    yield b'"}]}'


BAD = {
    "malformed json": dict(content=b'{"messages": [', status=400, match="not valid JSON"),
    "not an object": dict(json=[1, 2], status=400, match="JSON object"),
    "empty body": dict(content=b"", status=400, match="empty"),
    "messages missing": dict(json={"model": "x"}, status=400, match="'messages' is required"),
    "messages a string": dict(json={"messages": "hi"}, status=400, match="'messages' must be a list"),
    "content a number": dict(json={"messages": [{"role": "user", "content": 5}]}, status=400, match="content"),
    "bad role": dict(json={"messages": [{"role": "wizard", "content": "x"}]}, status=400, match="role"),
    "bad part type": dict(json={"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, status=400,
                          match="type"),
    "temperature a string": dict(json={"messages": [{"role": "user", "content": "x"}], "temperature": "1"},
                                 status=400, match="'temperature' must be a number"),
    "max_tokens a float": dict(json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5},
                               status=400, match="max_tokens"),
    "max_tokens zero": dict(json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
                            status=400, match="max_tokens"),
    "stream a string": dict(json={"messages": [{"role": "user", "content": "x"}], "stream": "yes"},
                            status=400, match="stream"),
    "stop a number": dict(json={"messages": [{"role": "user", "content": "x"}], "stop": 3}, status=400,
                          match="stop"),
    "negative top_k": dict(json={"messages": [{"role": "user", "content": "x"}], "top_k": -1}, status=400,
                           match="top_k"),
    "top_p out of range": dict(json={"messages": [{"role": "user", "content": "x"}], "top_p": 3.0}, status=400,
                               match="top_p"),
    "huge body": dict(content=_big_body(), status=413, match="limit"),
    "huge chunked body": dict(content=_chunked_big_body, status=413, match="limit"),
    "decompression bomb png": dict(image=data_url(png_header_only(100_000, 100_000)), status=413,
                                   match="decompression bomb"),
    "png over the pixel limit": dict(image=data_url(png_header_only(4000, 4000)), status=413, match="pixels"),
    "image over the byte limit": dict(image=data_url(b"\0" * (5 << 19)), status=413, match="larger than the limit"),
    "non-image data url": dict(image=data_url(b"hello", "text/plain"), status=400, match="not an image"),
    "not base64": dict(image="data:image/png;base64,@@@@", status=400, match="base64"),
    "image bytes that are text": dict(image=data_url(b"just some text, not a picture"), status=422,
                                      match="not a recognised image"),
    "path outside media dir": dict(image="file:///etc/hostname", status=403, match="outside the media folder"),
    "dot-dot path": dict(image="file://{media}/../outside/secret.png", status=403, match="outside the media folder"),
    "symlink out of media dir": dict(image="file://{media}/link.png", status=403, match="outside the media folder"),
    "missing media file": dict(image="file://{media}/nothing.png", status=400, match="no such file"),
    "remote url": dict(image="https://example.com/cat.png", status=400, match="not fetched"),
    "too many images": dict(json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": URL}}] * 9}]}, status=400, match="more than 8 images"),
    "two images in one turn": dict(json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": URL}}] * 2}]}, status=400, match="one image per turn"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_requests(server, media, name):
    case = dict(BAD[name])
    status, match = case.pop("status"), case.pop("match")
    if "image" in case:
        url = case.pop("image").replace("{media}", str(media[0]))
        case["json"] = {"messages": [user("Describe the image.", url)]}
    if callable(case.get("content")):
        case["content"] = case["content"]()
    before = httpx.get(server.url + "/metrics").text
    r = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                   headers={"Content-Type": "application/json"}, **case)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert match in err["message"] and err["type"] and "code" in err
    # nothing changed: nothing running, no tokens counted, and the server still answers
    assert wait_until(lambda: quiet(server))
    after = httpx.get(server.url + "/metrics").text
    tokens = [line for line in after.splitlines() if line.startswith("tinygptv_completion_tokens_total")]
    assert tokens == [line for line in before.splitlines() if line.startswith("tinygptv_completion_tokens_total")]
    ok = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
        "messages": [user("How many shapes are there?")], "temperature": 0})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "three"


def test_unknown_route_and_method(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_file_url_under_media_dir(model, client, media):
    url = "file://" + str(media[0] / "example.png")
    r = client.chat.completions.create(model="demo", messages=[user("Describe the image.", url)], temperature=0)
    assert r.choices[0].message.content == model.chat("Describe the image.", image=IMG, temperature=0)
    raw = URL.split(",", 1)[1]  # bare base64 is taken too
    r = client.chat.completions.create(model="demo", messages=[user("How many shapes are there?", raw)],
                                       temperature=0)
    assert r.choices[0].message.content == "three"


def test_file_urls_refused_without_media_dir(model):
    with running(ServerConfig(model=model, n_parallel=model.n_parallel)) as s:
        r = httpx.post(s.url + "/v1/chat/completions", json={
            "messages": [user("Hi", "file://" + str(demo_image_path()))]})
        assert r.status_code == 403 and "--media-dir" in r.json()["error"]["message"]


# ---- keys -----------------------------------------------------------------------------------------------
def test_api_key_enforced(model):
    with running(ServerConfig(model=model, n_parallel=model.n_parallel, api_keys=["sekret", "other"])) as s:
        for key in ("wrong", ""):
            c = openai.OpenAI(base_url=s.url + "/v1", api_key=key or "x", max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                c.chat.completions.create(model="demo", messages=[user("How many shapes are there?")])
            with pytest.raises(openai.AuthenticationError):
                c.models.list()
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": [user("Hi")]})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.post(s.url + "/api/chat", json={"messages": []}).status_code == 401
        assert httpx.get(s.url + "/api/tags").status_code == 401
        assert httpx.get(s.url + "/metrics").status_code == 401
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="sekret", max_retries=0)
        r = c.chat.completions.create(model="demo", messages=[user("How many shapes are there?")], temperature=0)
        assert r.choices[0].message.content == "three"
        assert httpx.get(s.url + "/api/tags", headers={"x-api-key": "other"}).status_code == 200
        assert httpx.get(s.url + "/metrics", headers={"Authorization": "Bearer other"}).status_code == 200
        # the page, its files and /health need no key; the page learns that it must ask for one
        assert httpx.get(s.url + "/").status_code == 200
        assert httpx.get(s.url + "/static/app.js").status_code == 200
        assert httpx.get(s.url + "/health").status_code == 200
        assert httpx.get(s.url + "/page-config").json()["auth"] is True


def test_cors(model):
    with running(ServerConfig(model=model, n_parallel=model.n_parallel)) as s:
        r = httpx.get(s.url + "/health", headers={"Origin": "http://elsewhere.test"})
        assert "access-control-allow-origin" not in r.headers
    with running(ServerConfig(model=model, n_parallel=model.n_parallel, cors_origins=["http://app.test"],
                              api_keys=["k"])) as s:
        r = httpx.options(s.url + "/v1/chat/completions", headers={
            "Origin": "http://app.test", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.test"
        r = httpx.get(s.url + "/v1/models", headers={"Origin": "http://app.test", "Authorization": "Bearer k"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.test"


# ---- serving behaviour ----------------------------------------------------------------------------------
def _long_stream_body(n=1500):
    return {"messages": [user("Describe the image.")], "stream": True, "max_tokens": n, "ignore_eos": True,
            "temperature": 0}


@pytest.fixture
def slowed(model):
    with slow_steps(model.engine):
        yield


def test_client_gone_mid_stream_frees_its_sequence(server, slowed):
    eng = server.state._model.engine
    before = server.state.metrics.cancelled.labels("disconnect")._value.get()
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=_long_stream_body(), timeout=60) as r:
        it = r.iter_lines()
        got = [line for line, _ in zip(it, range(6))]
        assert any(line.startswith("data:") for line in got)
        assert eng.n_busy == 1
    assert wait_until(lambda: quiet(server), 3.0)
    assert server.state.metrics.cancelled.labels("disconnect")._value.get() == before + 1


def test_client_gone_before_a_plain_answer_frees_its_sequence(server, slowed):
    body = dict(_long_stream_body(), stream=False)
    eng = server.state._model.engine
    before = server.state.metrics.cancelled.labels("disconnect")._value.get()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=0.3)
    assert wait_until(lambda: quiet(server), 3.0), (eng.n_busy, server.state.runner.in_flight)
    assert server.state.metrics.cancelled.labels("disconnect")._value.get() == before + 1


def test_queue_limit_gives_503_with_retry_after(model, slowed):
    cfg = ServerConfig(model=model, n_parallel=model.n_parallel, max_queue=0)
    with running(cfg) as s:
        streams = [httpx.stream("POST", s.url + "/v1/chat/completions", json=_long_stream_body(), timeout=60)
                   for _ in range(model.n_parallel)]
        responses = [st.__enter__() for st in streams]
        try:
            assert wait_until(lambda: s.state.runner.in_flight == model.n_parallel)
            c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
            with pytest.raises(openai.InternalServerError) as e:
                c.chat.completions.create(model="demo", messages=[user("Hi")])
            assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "1"
            assert e.value.code == "queue_full"
        finally:
            for st in streams:
                st.__exit__(None, None, None)
        assert wait_until(lambda: s.state.runner.in_flight == 0, 3.0)
        r = c.chat.completions.create(model="demo", messages=[user("How many shapes are there?")], temperature=0)
        assert r.choices[0].message.content == "three"


def test_requests_beyond_parallel_wait_in_the_queue(model, server, client):
    """More requests than sequences: the rest wait (queue depth seen in /metrics) and all are answered."""
    want = model.chat("Describe the image.", image=IMG, temperature=0, max_new_tokens=200, ignore_eos=True)
    results, depth = [], []

    def one():
        r = client.chat.completions.create(model="demo", messages=[user("Describe the image.")], temperature=0,
                                           max_tokens=200, extra_body={"ignore_eos": True})
        results.append(r.choices[0].message.content)

    threads = [threading.Thread(target=one) for _ in range(model.n_parallel * 2)]
    for t in threads:
        t.start()
    t0 = time.time()
    while any(t.is_alive() for t in threads) and time.time() - t0 < 60:
        depth.append(server.state._model.engine.queue_depth)
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert results == [want] * len(threads)
    assert max(depth) >= 1


def test_health_is_503_while_loading(model):
    gate = threading.Event()

    def loader():
        gate.wait(30)
        return model

    with running(ServerConfig(), wait_ready=False, loader=loader) as s:
        r = httpx.get(s.url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": [user("Hi")]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading" and r.headers["retry-after"]
        gate.set()
        assert wait_until(lambda: httpx.get(s.url + "/health").status_code == 200)
        r = httpx.post(s.url + "/v1/chat/completions",
                       json={"messages": [user("How many shapes are there?")], "temperature": 0})
        assert r.json()["choices"][0]["message"]["content"] == "three"


def test_load_failure_is_reported(model):
    def loader():
        raise ValueError("broken file")

    with running(ServerConfig(), wait_ready=False, loader=loader) as s:
        assert wait_until(lambda: httpx.get(s.url + "/health").status_code == 500)
        assert "broken file" in httpx.get(s.url + "/health").json()["error"]
        r = httpx.get(s.url + "/v1/models")
        assert r.status_code == 500 and "broken file" in r.json()["error"]["message"]


# ---- the command line --------------------------------------------------------------------------------------
def _start_cli(*args):
    p = subprocess.Popen([sys.executable, "-m", "tinygptv_native", "serve", "--port", "0", "-t", "2", *args],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=child_env(),
                         cwd=CHILD_CWD)
    lines = []
    t0 = time.time()
    while time.time() - t0 < 60:
        line = p.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "listening on" in line:
            url = line.split("listening on ", 1)[1].split()[0]
            assert wait_until(lambda: httpx.get(url + "/health").status_code == 200, 30)
            threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True).start()
            return p, url, lines
    p.kill()
    raise AssertionError("".join(lines))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_shuts_down_cleanly(sig):
    p, url, lines = _start_cli("--shutdown-grace", "0.5", "--parallel", "2", "-c", "8192")
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        r = c.chat.completions.create(model="demo", messages=[user("How many shapes are there?")], temperature=0)
        assert r.choices[0].message.content == "three"
        # a stream that cannot finish within the grace period: it ends with an error event, not a success
        s = c.chat.completions.create(model="demo", messages=[user("Describe the image.")], stream=True,
                                      max_tokens=8000, temperature=0, extra_body={"ignore_eos": True})
        first = next(iter(s))
        assert first.choices[0].delta.role == "assistant"
        t0 = time.time()
        p.send_signal(sig)
        with pytest.raises(openai.APIError, match="shut down before the answer was complete"):
            for _ in s:
                pass
        assert p.wait(30) == 0
        assert time.time() - t0 < 20
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    log = "".join(lines)
    assert "POST /v1/chat/completions 200 prompt=" in log and "completion=" in log


def test_cli_refuses_bad_options_and_missing_packages(monkeypatch, capsys):
    from tinygptv_native import cli
    from tinygptv_native.server import main as server_main
    assert cli.main(["serve", "--parallel", "0"]) == 1
    assert "--parallel must be in [1, 256]" in capsys.readouterr().err
    assert cli.main(["serve", "--media-dir", "/nonexistent/folder"]) == 1
    assert "is not a folder" in capsys.readouterr().err
    monkeypatch.setattr(server_main, "SERVER_PACKAGES", ("starlette", "no_such_package_for_the_server"))
    assert cli.main(["serve"]) == 1
    assert 'pip install "tinygptv-native[server]"' in capsys.readouterr().err
