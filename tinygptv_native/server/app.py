"""The Starlette application: the model (loaded in a background thread, so /health answers at once),
middleware (request log and metrics, CORS, API key), routes and the chat page."""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import ollama_api, openai_api
from .config import ServerConfig
from .errors import APIError, error_response
from .images import ImageReader
from .metrics import Metrics, endpoint_label
from .runner import Runner

log = logging.getLogger("tinygptv_native.server")

STATIC = Path(__file__).resolve().parent / "static"
PROTECTED = ("/v1/", "/api/")


class ServerState:
    """What the routes share: the settings, the model (once loaded), the runner, metrics, limits."""

    def __init__(self, cfg: ServerConfig, loader: Optional[Callable[[], Any]] = None,
                 on_load_error: Optional[Callable[[BaseException], None]] = None):
        self.cfg = cfg
        self.runner = Runner(cfg.n_parallel, cfg.max_queue)
        self.images = ImageReader(media_dir=cfg.media_dir, max_bytes=cfg.max_image_bytes,
                                  max_pixels=cfg.max_image_pixels)
        self.metrics = Metrics(queue_depth=lambda: self._engine_stat("queue_depth"),
                               busy=lambda: self._engine_stat("n_busy"), in_flight=lambda: self.runner.in_flight)
        from .. import __version__
        self.fingerprint = f"tinygptv-native-{__version__}"
        self._model: Any = cfg.model
        self._loader = loader
        self._on_load_error = on_load_error
        self.load_error: Optional[str] = None
        self.loaded = threading.Event()
        self.created = int(time.time())
        self.file_size = 0
        self.modified_at = ""
        self.digest = ""
        self.parameter_count = 0
        self.parameter_size = ""
        self._token_text = None
        self._owns_model = cfg.model is None

    # ---- the model ---------------------------------------------------------------------------
    def start_loading(self) -> None:
        if self._model is not None:
            self._describe(self._model)
            self.loaded.set()
            return
        threading.Thread(target=self._load, name="tinygptv-load", daemon=True).start()

    def _load(self) -> None:
        try:
            t0 = time.perf_counter()
            if self._loader is not None:
                m = self._loader()
            else:
                from ..model import Model
                m = Model(self.cfg.model_path, n_threads=self.cfg.n_threads, n_ctx=self.cfg.n_ctx,
                          n_parallel=self.cfg.n_parallel, device=self.cfg.device, gpu=self.cfg.gpu,
                          gpu_layers=self.cfg.gpu_layers)
            self._describe(m)
            self._model = m
            where = "CPU" if getattr(m, "gpu", None) is None else f"Vulkan device {m.gpu}"
            if getattr(m, "gpu", None) is not None and m.gpu_layers < m.n_layer:
                where += f" for the first {m.gpu_layers} of {m.n_layer} layers, the rest on the CPU"
            log.info("model %s ready in %.1f s (%s, n_ctx %d, %d parallel sequences, %d threads, decoder on the %s)",
                     self.cfg.model_name, time.perf_counter() - t0, m.arch, m.n_ctx, m.n_parallel, m.n_threads, where)
        except BaseException as e:  # noqa: BLE001 - reported through /health and the callback
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("the model did not load: %s", self.load_error)
            if self._on_load_error is not None:
                self._on_load_error(e)
        finally:
            self.loaded.set()

    def _describe(self, m) -> None:
        """File facts for the model listings (cheap: the GGUF header, not the weights)."""
        from .. import _core
        st = os.stat(m.path)
        self.file_size = st.st_size
        self.created = int(st.st_mtime)
        self.modified_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))
        self.digest = hashlib.sha256(f"{os.path.realpath(m.path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        n = 0
        for _name, _typ, shape, _off, _nbytes in _core.GGUFReader(m.path).tensors():
            k = 1
            for d in shape:
                k *= d
            n += k
        self.parameter_count = n
        self.parameter_size = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"

    def model(self):
        """The loaded model, or 503 (loading) / 500 (failed to load)."""
        m = self._model
        if m is not None and self.loaded.is_set():
            return m
        if self.load_error is not None:
            raise APIError(500, f"the model failed to load: {self.load_error}", code="model_load_failed")
        raise APIError(503, "the model is loading; retry shortly", code="model_loading", headers={"Retry-After": "1"})

    def token_text(self):
        if self._token_text is None:
            self._token_text = openai_api.TokenText(self.model())
        return self._token_text

    def _engine_stat(self, name: str) -> float:
        m = self._model
        if m is None or m._engine is None:
            return 0.0
        return float(getattr(m._engine, name))

    # ---- shutdown ----------------------------------------------------------------------------
    def begin_shutdown(self) -> None:
        """New requests get 503; in-flight ones get ``shutdown_grace`` seconds, then are cancelled
        (call on the event loop)."""
        self.runner.begin_shutdown(self.cfg.shutdown_grace)

    def close(self) -> None:
        self.runner.close()
        if self._owns_model and self._model is not None:
            self._model.close()


# ---- middleware ----------------------------------------------------------------------------------
class AccessLog:
    """Logs each request (method, path, status, tokens, ms) and counts it in the metrics."""

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [0]
        scope.setdefault("state", {})

        async def send_(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_)
        except Exception:
            status[0] = status[0] or 500
            raise
        finally:
            ms = (time.perf_counter() - t0) * 1e3
            rs = scope.get("state") or {}
            code = rs.get("stream_error") or status[0] or 499
            toks = rs.get("tokens")
            tok_s = f" prompt={toks[0]} cached={toks[1]} completion={toks[2]}" if toks else ""
            path = scope.get("path", "")
            log.info("%s %s %d%s %.1f ms", scope.get("method", "?"), path, code, tok_s, ms)
            ep = endpoint_label(path)
            m = self.state.metrics
            m.requests.labels(ep, str(code)).inc()
            m.latency.labels(ep).observe(ms / 1e3)


class APIKeyGuard:
    """With API keys set: /v1/*, /api/* and /metrics need one (``Authorization: Bearer KEY`` or
    ``x-api-key: KEY``). The page, its files and /health do not."""

    def __init__(self, app, keys):
        self.app = app
        self.keys = [k.encode() for k in keys]

    def _ok(self, scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            elif name == b"x-api-key":
                given = value.strip()
            else:
                continue
            if any(hmac.compare_digest(given, k) for k in self.keys):
                return True
        return False

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if (scope["type"] == "http" and self.keys and (path.startswith(PROTECTED) or path == "/metrics")
                and scope.get("method") != "OPTIONS" and not self._ok(scope)):
            err = APIError(401, "a valid API key is required (Authorization: Bearer KEY)", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
            return await error_response(err, path)(scope, receive, send)
        return await self.app(scope, receive, send)


# ---- plain routes ----------------------------------------------------------------------------------
async def health(request: Request):
    st: ServerState = request.app.state.server
    if st.load_error is not None:
        return JSONResponse({"status": "error", "error": st.load_error}, status_code=500)
    if st._model is None or not st.loaded.is_set():
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})
    if st.runner.closing:
        return JSONResponse({"status": "shutting down"}, status_code=503)
    return JSONResponse({"status": "ok", "model": st.cfg.model_name, "slots_busy": int(st._engine_stat("n_busy")),
                         "slots_total": st.cfg.n_parallel, "queue_depth": int(st._engine_stat("queue_depth")),
                         "in_flight": st.runner.in_flight})


async def metrics(request: Request):
    data, ctype = request.app.state.server.metrics.exposition()
    return Response(data, media_type=ctype)


async def index(request: Request):
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def page_config(request: Request):
    """What the page needs to know before its first request (no model facts: those need the key)."""
    st: ServerState = request.app.state.server
    return JSONResponse({"auth": bool(st.cfg.api_keys), "model": st.cfg.model_name})


async def _api_error(request: Request, exc: APIError):
    return error_response(exc, request.url.path)


async def _http_error(request: Request, exc: HTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    msg = exc.detail if exc.status_code != 404 else f"no such endpoint: {request.method} {request.url.path}"
    return error_response(APIError(exc.status_code, str(msg), code=code, headers=exc.headers), request.url.path)


async def _internal_error(request: Request, exc: Exception):
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error_response(APIError(500, f"internal error: {type(exc).__name__}", code="internal_error"),
                          request.url.path)


def create_app(cfg: ServerConfig, *, loader: Optional[Callable[[], Any]] = None,
               on_load_error: Optional[Callable[[BaseException], None]] = None) -> Starlette:
    """The application for ``cfg``. The model loads in a background thread when the app starts
    (``loader`` replaces ``Model(cfg.model_path, ...)``); ``on_load_error`` is told when it fails.
    ``app.state.server`` is the ServerState."""
    cfg.check()
    state = ServerState(cfg, loader, on_load_error)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.start_loading()
        try:
            yield
        finally:
            state.close()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/page-config", page_config, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/completions", openai_api.completions, methods=["POST"]),
        Route("/v1/models", openai_api.models, methods=["GET"]),
        Route("/api/chat", ollama_api.chat, methods=["POST"]),
        Route("/api/generate", ollama_api.generate, methods=["POST"]),
        Route("/api/tags", ollama_api.tags, methods=["GET"]),
        Route("/api/ps", ollama_api.ps, methods=["GET"]),
        Route("/api/show", ollama_api.show, methods=["POST"]),
        Route("/api/version", ollama_api.version, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    middleware = [Middleware(AccessLog, state=state)]
    if cfg.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins),
                                     allow_methods=["GET", "POST", "OPTIONS"],
                                     allow_headers=["Authorization", "Content-Type", "X-API-Key"], max_age=600))
    middleware.append(Middleware(APIKeyGuard, keys=list(cfg.api_keys)))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={APIError: _api_error, HTTPException: _http_error,
                                        Exception: _internal_error})
    app.state.server = state
    return app
