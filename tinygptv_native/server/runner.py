"""The bridge between the event loop and the engine.

Each admitted request gets a worker thread (a pool sized to the admission limit, so none waits for a
thread) that starts its generation (checks, image encoding, submission to the engine) and reads its
text pieces, handing them to the event loop through an asyncio queue. The event loop never blocks on
the model, and it may stop a request at any moment: ``Job.cancel()`` is safe from any thread and
frees the engine's sequence at once (queued or running), the worker then closes the stream.

Admission: at most ``n_parallel + max_queue`` requests are in flight (decoding or waiting for a
sequence); more get 503 with Retry-After. On shutdown new requests get 503, in-flight ones have a
grace period to finish, then are cancelled.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, List, Optional, Sequence, Set, Tuple

from .errors import APIError, from_exception

log = logging.getLogger("tinygptv_native.server")


class TextStream:
    """A plain-text continuation (``/v1/completions``, raw ``/api/generate``) with the interface of a
    ChatStream: iterate for pieces, ``result``, ``cancel()`` from any thread, ``close()``."""

    def __init__(self, model, ids: Sequence[int], params, max_new_tokens: int, stop: Sequence[str], n_probs: int):
        from ..model import GenerationResult, _results
        self.request = model.engine.submit([list(ids)], params, max_new_tokens, stop_strings=list(stop),
                                           penalty_history=list(ids), n_probs=n_probs)
        self.result = GenerationResult(prompt_tokens=len(ids))
        self.prompt_positions = len(ids)
        self._it = _results(self.request, self.result)

    def __iter__(self):
        return self._it

    def cancel(self) -> None:
        self.request.cancel()

    def close(self) -> None:
        self._it.close()


class Job:
    """One request's generation, run by a worker thread and read from the event loop."""

    def __init__(self, runner: "Runner", start: Callable[[], Any], *, want_logprobs: bool = False):
        self._runner = runner
        self._start = start
        self._loop = asyncio.get_running_loop()
        self._q: "asyncio.Queue[Tuple[str, Any]]" = asyncio.Queue()
        self._stream: Any = None
        self._cancelled = False
        self._want_logprobs = want_logprobs
        self.cancel_reason: Optional[str] = None  # "disconnect" or "shutdown"
        self.result: Any = None
        self.prompt_positions = 0  # the whole prompt, cached part included
        self.t_admit = time.perf_counter()
        self.t_first: Optional[float] = None
        self.done = False

    # ---- the worker thread ---------------------------------------------------------------------
    def _put(self, kind: str, value: Any = None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._q.put_nowait, (kind, value))
        except RuntimeError:  # the loop has closed (shutdown): nobody reads any more
            pass

    def _work(self) -> None:
        try:
            try:
                stream = self._start()
            except BaseException as e:
                self._put("error", e)
                return
            self._stream = stream
            self.result = stream.result
            self.prompt_positions = int(getattr(stream, "prompt_positions", 0))
            if self._cancelled:
                stream.cancel()
            self._put("started")
            try:
                sent = 0
                for piece in stream:
                    lp = None
                    if self._want_logprobs:
                        lps = stream.result.logprobs
                        lp, sent = lps[sent:], len(lps)
                    self._put("piece", (piece, lp))
                stream.close()
                if self._want_logprobs and len(stream.result.logprobs) > sent:
                    self._put("piece", ("", stream.result.logprobs[sent:]))
                self._put("done", stream.result)
            except BaseException as e:
                self._put("error", e)
            finally:
                stream.close()
        finally:
            self._runner._finished(self)

    # ---- the event loop ------------------------------------------------------------------------
    def cancel(self, reason: str = "disconnect") -> None:
        """Stops the request (any thread). Its pieces end soon; the answer so far stays in ``result``."""
        if self.done:
            return
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._cancelled = True
        s = self._stream
        if s is not None:
            s.cancel()

    async def started(self) -> None:
        """Waits until the request is checked and submitted; raises its APIError when it is refused."""
        kind, value = await self._q.get()
        if kind == "error":
            self.done = True
            raise from_exception(value)
        assert kind == "started", kind

    async def pieces(self) -> AsyncIterator[Tuple[str, Optional[List]]]:
        """(text, new logprob entries or None) as they come; raises APIError when the request fails."""
        while True:
            kind, value = await self._q.get()
            if kind == "piece":
                if self.t_first is None:
                    self.t_first = time.perf_counter()
                yield value
            elif kind == "done":
                self.done = True
                self.result = value
                return
            else:
                self.done = True
                raise from_exception(value)

    @property
    def interrupted(self) -> bool:
        return self._cancelled

    @property
    def ttft_s(self) -> Optional[float]:
        return None if self.t_first is None else self.t_first - self.t_admit


class Runner:
    """Admission, worker threads and shutdown for the requests of one model."""

    def __init__(self, n_parallel: int, max_queue: int):
        self.limit = int(n_parallel) + int(max_queue)
        self.in_flight = 0
        self.closing = False
        self._jobs: Set[Job] = set()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=self.limit + 2, thread_name_prefix="tinygptv-request")

    def start(self, start: Callable[[], Any], *, want_logprobs: bool = False) -> Job:
        """Admits a request (503 when the queue is full or the server is stopping) and starts its worker."""
        if self.closing:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        with self._lock:
            if self.in_flight >= self.limit:
                raise APIError(503, f"the server is busy: {self.in_flight} requests are in flight, the limit is "
                                    f"{self.limit} (--parallel + --max-queue); retry later",
                               code="queue_full", headers={"Retry-After": "1"})
            self.in_flight += 1
        job = Job(self, start, want_logprobs=want_logprobs)
        self._jobs.add(job)
        try:
            self._executor.submit(job._work)
        except RuntimeError:  # the executor has shut down
            self._finished(job)
            raise APIError(503, "the server is shutting down", code="shutting_down") from None
        return job

    def _finished(self, job: Job) -> None:
        with self._lock:
            self.in_flight -= 1
        self._jobs.discard(job)

    def begin_shutdown(self, grace: float) -> None:
        """New requests get 503; in-flight ones are cancelled after ``grace`` seconds (event loop thread)."""
        if self.closing:
            return
        self.closing = True
        n = len(self._jobs)
        if n:
            log.info("shutting down: %d request(s) in flight get %.1f s to finish", n, grace)
        asyncio.get_running_loop().call_later(grace, self.cancel_all)

    def cancel_all(self) -> None:
        for job in list(self._jobs):
            job.cancel("shutdown")

    def close(self) -> None:
        self.closing = True
        self.cancel_all()
        self._executor.shutdown(wait=False)


async def collect(job: Job, request) -> Tuple[str, List]:
    """The whole answer of a non-streaming request. When the client goes away first, the job is
    cancelled (its sequence freed at once) and what was generated so far is returned."""
    import anyio
    texts: List[str] = []
    lps: List = []

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                job.cancel("disconnect")
                return

    err: Optional[APIError] = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            try:
                async for text, lp in job.pieces():
                    texts.append(text)
                    if lp:
                        lps.extend(lp)
            except APIError as e:  # raised after the task group, not wrapped in an exception group
                err = e
            tg.cancel_scope.cancel()
    finally:
        if not job.done:
            job.cancel("disconnect")
    if err is not None:
        raise err
    return "".join(texts), lps
