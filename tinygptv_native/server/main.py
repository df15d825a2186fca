"""`tinygptv serve`: the command line of the server. Importing this module needs only the standard
library; the server's packages are imported when the command runs."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

SERVER_PACKAGES = ("starlette", "uvicorn", "sse_starlette", "prometheus_client")
INSTALL_HINT = 'pip install "tinygptv-native[server]"'


def add_command(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("serve", help="an OpenAI- and ollama-compatible HTTP server with a web chat page",
                       description="Serve a model over HTTP: OpenAI's /v1/chat/completions, /v1/completions and "
                                   "/v1/models, ollama's /api/chat, /api/generate and /api/tags, /health, /metrics, "
                                   "and a chat page at /. Requests are decoded together (--parallel) and wait in "
                                   "a queue beyond that (--max-queue).")
    p.add_argument("-m", "--model", help="GGUF model file (default: the embedded demo model)")
    p.add_argument("--alias", help="the model's name in /v1/models and /api/tags (default: the file name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("-np", "--parallel", type=int, default=4, help="sequences decoded together (default 4)")
    p.add_argument("-c", "--ctx", "--ctx-size", type=int, default=2048, dest="ctx",
                   help="context size of each sequence in positions (default 2048)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all available)")
    from ..gpu import add_device_args
    add_device_args(p)
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for a sequence; more get 503 with Retry-After (default 64)")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="require this key (Authorization: Bearer KEY) on /v1, /api and /metrics; repeatable")
    p.add_argument("--api-key-file", metavar="FILE", help="file with API keys, one a line")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages of this origin (e.g. http://localhost:3000, or *); repeatable; "
                        "none by default")
    p.add_argument("--media-dir", metavar="DIR", help="the only folder file:// image URLs may read (default: none)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MB (default 32)")
    p.add_argument("--max-images", type=int, default=8, help="most images in one request (default 8)")
    p.add_argument("--max-image-mb", type=float, default=20.0, help="largest encoded image in MB (default 20)")
    p.add_argument("--max-image-pixels", type=int, default=50_000_000,
                   help="most pixels (width x height) of an image (default 50000000)")
    p.add_argument("--shutdown-grace", type=float, default=5.0,
                   help="seconds in-flight requests get to finish on SIGINT/SIGTERM before they are cancelled "
                        "(default 5)")
    p.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                   help="also log the model's own lines and tracebacks")
    p.set_defaults(fn=serve_command)


def _missing_packages() -> List[str]:
    import importlib.util
    return [name for name in SERVER_PACKAGES if importlib.util.find_spec(name) is None]


def config_from_args(args: argparse.Namespace):
    from ..cli import CLIError
    from .config import ServerConfig
    keys = list(args.api_key or [])
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                keys += [line.strip() for line in f if line.strip() and not line.startswith("#")]
        except OSError as e:
            raise CLIError(f"cannot read --api-key-file: {e}") from None
        if not keys:
            raise CLIError(f"--api-key-file '{args.api_key_file}' holds no key")
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in [0, 65535], got {args.port}")
    cfg = ServerConfig(model_path=args.model, alias=args.alias, n_threads=args.threads, n_ctx=args.ctx,
                       n_parallel=args.parallel, max_queue=args.max_queue, api_keys=keys,
                       cors_origins=list(args.cors_origin or []), media_dir=args.media_dir,
                       max_body_bytes=int(args.max_body_mb * (1 << 20)), max_images=args.max_images,
                       max_image_bytes=int(args.max_image_mb * (1 << 20)), max_image_pixels=args.max_image_pixels,
                       shutdown_grace=args.shutdown_grace, device=args.device, gpu=args.gpu,
                       gpu_layers=args.gpu_layers)
    try:
        return cfg.check()
    except ValueError as e:
        raise CLIError(str(e)) from None


def serve_command(args: argparse.Namespace) -> int:
    from ..cli import CLIError
    missing = _missing_packages()
    if missing:
        raise CLIError(f"the server needs {', '.join(missing)}: {INSTALL_HINT}")
    cfg = config_from_args(args)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tinygptv_native.server").setLevel(logging.INFO)
    logging.getLogger("uvicorn.error").setLevel(logging.INFO)
    # asyncio's note on writes to a connection the client has closed: the stream is being cancelled
    logging.getLogger("asyncio").addFilter(lambda r: "socket.send() raised exception" not in r.getMessage())
    if verbose:
        from .._logging import set_verbose
        set_verbose(True)
    if cfg.model_path is None:
        print("no -m given: serving the embedded demo model", file=sys.stderr)
    return run_server(cfg, host=args.host, port=args.port)


def run_server(cfg, *, host: str = "127.0.0.1", port: int = 8080) -> int:
    """Runs the server until SIGINT/SIGTERM (then in-flight requests get ``cfg.shutdown_grace`` seconds,
    and are cancelled after). Returns the exit status: 1 when the model failed to load."""
    import asyncio

    import uvicorn

    from .app import create_app

    failed = []
    server_box: list = []

    def on_load_error(e: BaseException) -> None:
        failed.append(e)
        if server_box:
            server_box[0].should_exit = True

    app = create_app(cfg, on_load_error=on_load_error)
    state = app.state.server

    class Server(uvicorn.Server):
        _loop: Optional[asyncio.AbstractEventLoop] = None

        async def startup(self, sockets=None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().startup(sockets)
            for s in self.servers:
                for sock in s.sockets:
                    h, p = sock.getsockname()[:2]
                    print(f"tinygptv serve: listening on http://{h}:{p} (model {cfg.model_name}, "
                          f"{cfg.n_parallel} parallel, queue {cfg.max_queue})", file=sys.stderr, flush=True)

        async def shutdown(self, sockets=None) -> None:
            await super().shutdown(sockets)
            # the stop was asked for and done in order: exit with status 0 rather than re-raise the signal
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

        def handle_exit(self, sig, frame) -> None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(state.begin_shutdown)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None, lifespan="on",
                            timeout_graceful_shutdown=max(1, int(cfg.shutdown_grace + 5)), ws="none")
    server = Server(config)
    server_box.append(server)
    if failed:
        return 1
    server.run()
    return 1 if failed else 0
