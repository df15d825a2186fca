"""Running `tinygptv serve`'s application on 127.0.0.1 (a free port) inside the test process."""
from __future__ import annotations

import base64
import contextlib
import struct
import threading
import time
import zlib

import httpx


class RunningServer:
    def __init__(self, app):
        import uvicorn
        self.app = app
        self.state = app.state.server
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="on",
                                ws="none", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-server", daemon=True)
        self.url = ""

    def start(self, wait_ready: bool = True) -> "RunningServer":
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > 30:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        if wait_ready:
            while httpx.get(self.url + "/health").status_code != 200:
                if time.time() - t0 > 60:
                    raise RuntimeError("the model did not load")
                time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@contextlib.contextmanager
def running(cfg, wait_ready: bool = True, **kwargs):
    from tinygptv_native.server import create_app
    s = RunningServer(create_app(cfg, **kwargs)).start(wait_ready)
    try:
        yield s
    finally:
        s.stop()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def wait_until(cond, timeout: float = 5.0, step: float = 0.02) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        time.sleep(step)
    return cond()


class _SlowSteps:
    """An engine's Generator with each step ``delay`` seconds late."""

    def __init__(self, gen, delay: float):
        self._gen = gen
        self._delay = delay

    def step(self):
        time.sleep(self._delay)
        return self._gen.step()

    def __getattr__(self, name):
        return getattr(self._gen, name)


@contextlib.contextmanager
def slow_steps(engine, delay: float = 0.005):
    """Every decoding step of ``engine`` ``delay`` seconds longer, for the tests where a client goes away
    or presses stop mid-answer: a fast CPU writes the demo model's longest answer (~2000 tokens) in a
    quarter of a second, before a client can leave."""
    gen = engine.gen
    engine.gen = _SlowSteps(gen, delay)
    try:
        yield
    finally:
        engine.gen = gen
