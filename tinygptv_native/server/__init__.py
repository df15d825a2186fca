"""`tinygptv serve`: an OpenAI- and ollama-compatible HTTP server with a web chat page.

One Model is shared by every request; its engine decodes up to ``--parallel`` answers together and
the rest wait in a bounded queue. Modules:

* ``config``      ServerConfig: the model, limits, keys, origins, media folder
* ``app``         the Starlette application: model loading, middleware (log, key, CORS), routes, page
* ``runner``      the bridge between the event loop and the engine: admission, worker threads, cancel
* ``openai_api``  /v1/chat/completions, /v1/completions, /v1/models
* ``ollama_api``  /api/chat, /api/generate, /api/tags, /api/show, /api/ps, /api/version
* ``schemas``     request bodies: size limit, JSON, field types
* ``images``      image parts: data URLs, base64, file:// under the media folder; size limits
* ``metrics``     Prometheus metrics (prometheus_client)
* ``main``        the command line (``tinygptv serve``)
* ``static/``     the chat page (HTML, CSS, JS; nothing loaded from other sites)

Starlette, uvicorn, sse-starlette and prometheus_client come with the ``server`` extra:
``pip install "tinygptv-native[server]"``. Importing this package needs none of them;
:func:`create_app` does.
"""
from __future__ import annotations

from .config import ServerConfig

__all__ = ["ServerConfig", "create_app"]


def create_app(config: "ServerConfig", **kwargs):
    """The Starlette application serving ``config`` (see :func:`tinygptv_native.server.app.create_app`)."""
    from .app import create_app as _create
    return _create(config, **kwargs)
