"""Terminal output of `tinygptv run` and `tinygptv chat`: colours, a status line while waiting, log lines
that do not break an answer, and the statistics printed after an answer.

Colours are used only when the stream is a terminal, ``NO_COLOR`` is unset (any value turns them off,
see no-color.org) and ``TERM`` is not ``dumb``. The status line (a spinner with what is being waited
for) is drawn on stderr only when stderr is a terminal, and only once a wait lasts long enough to be
noticed, so quick steps and redirected output show nothing.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Callable, Optional, TextIO, Union

_CODES = {"prompt": "1;32", "user": "32", "dim": "2", "error": "31", "warning": "33", "bold": "1"}
RESET = "\033[0m"


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def use_colour(stream: TextIO) -> bool:
    """Whether to colour what is written to `stream`."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return _isatty(stream)


def colour_code(kind: str) -> str:
    return f"\033[{_CODES[kind]}m"


class Term:
    """The process's two output streams: knows whether each is coloured, whether the answer being written
    to ``out`` has left its line open, and which status line ``err`` shows. Log lines and status lines go
    through it so that they never land in the middle of an answer."""

    def __init__(self, out: TextIO = sys.stdout, err: TextIO = sys.stderr):
        self.out, self.err = out, err
        self.out_colour = use_colour(out)
        self.err_colour = use_colour(err)
        self.err_tty = _isatty(err) and os.environ.get("TERM") != "dumb"
        self.lock = threading.RLock()
        self.mid_line = False      # out holds a started line (an answer being streamed)
        self._status = None        # the Status drawn on err, if any

    # ---- styling --------------------------------------------------------------------------------
    def style(self, kind: str, text: str, stream: Optional[TextIO] = None) -> str:
        on = self.err_colour if stream is self.err else self.out_colour
        return f"{colour_code(kind)}{text}{RESET}" if on and text else text

    # ---- writing --------------------------------------------------------------------------------
    def write(self, text: str) -> None:
        """Part of an answer to ``out``, line left open."""
        if not text:
            return
        with self.lock:
            self._erase_status()
            self.out.write(text)
            self.out.flush()
            self.mid_line = not text.endswith("\n")

    def end_line(self) -> None:
        with self.lock:
            if self.mid_line:
                self.out.write("\n")
                self.out.flush()
                self.mid_line = False

    def say(self, text: str = "", kind: Optional[str] = None) -> None:
        """A whole line to ``out``."""
        with self.lock:
            self._erase_status()
            self.out.write((self.style(kind, text) if kind else text) + "\n")
            self.out.flush()
            self.mid_line = False

    def note(self, text: str, kind: Optional[str] = None) -> None:
        """A whole line to ``err`` (messages, statistics, log lines); an open answer line is ended first
        when both streams show on the same terminal."""
        with self.lock:
            self._erase_status()
            if self.mid_line and _isatty(self.out) and self.err_tty:
                self.end_line()
            self.err.write((self.style(kind, text, self.err) if kind else text) + "\n")
            self.err.flush()

    # ---- the status line ------------------------------------------------------------------------
    def status(self, label: Union[str, Callable[[], str]], delay: float = 0.3) -> "Status":
        return Status(self, label, delay)

    def _erase_status(self) -> None:
        s = self._status
        if s is not None and s.drawn:
            self.err.write("\r\033[K")
            self.err.flush()
            s.drawn = False


class Status:
    """A spinner and a label on stderr while something runs (``with term.status("loading"):``).
    ``label`` may be a function, called at each redraw (for progress figures); ``set()`` changes it."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, term: Term, label: Union[str, Callable[[], str]], delay: float = 0.3, interval: float = 0.1):
        self.term = term
        self.label = label
        self.delay, self.interval = delay, interval
        self.drawn = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        enc = (getattr(term.err, "encoding", None) or "").lower().replace("-", "")
        self.frames = self.FRAMES if enc in ("utf8", "utf_8") else "|/-\\"

    def set(self, label: Union[str, Callable[[], str]]) -> None:
        self.label = label

    def __enter__(self) -> "Status":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Status":
        if self.term.err_tty and self._thread is None:
            self._t0 = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="tinygptv-status", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        with self.term.lock:
            self.term._erase_status()
            if self.term._status is self:
                self.term._status = None

    def _text(self) -> str:
        label = self.label() if callable(self.label) else self.label
        elapsed = time.monotonic() - self._t0
        return f"{label} ({elapsed:.0f} s)" if elapsed >= 2 else label

    def _run(self) -> None:
        if self._stop.wait(self.delay):
            return
        i = 0
        while not self._stop.is_set():
            try:
                text = self._text()
            except Exception:  # a progress function must not kill the line
                text = ""
            t = self.term
            with t.lock:
                if self._stop.is_set():
                    break
                t._status = self
                width = _columns(t.err) - 3
                line = f"{self.frames[i % len(self.frames)]} {text}"[:max(width, 10)]
                t.err.write("\r" + t.style("dim", line, t.err) + "\033[K")
                t.err.flush()
                self.drawn = True
            i += 1
            self._stop.wait(self.interval)


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, AttributeError, ValueError):
        return 80


# ---- statistics -----------------------------------------------------------------------------------

def duration(ms: float) -> str:
    """A duration the way ollama prints one: 850.12ms, 2.31s, 1m5.2s."""
    if ms < 1000:
        return f"{ms:.2f}ms"
    s = ms / 1e3
    if s < 60:
        return f"{s:.2f}s"
    return f"{int(s // 60)}m{s % 60:.1f}s"


def stats_lines(r, total_ms: Optional[float] = None) -> str:
    """A GenerationResult's counts and timings in the layout of ``ollama run --verbose``."""
    rows = []
    total = total_ms if total_ms is not None else r.image_encode_ms + r.prompt_ms + r.generation_ms
    rows.append(("total duration", duration(total)))
    if r.image_tokens:
        rows.append(("image encode", f"{duration(r.image_encode_ms)} ({r.image_tokens} positions)"))
    p = r.prompt_tokens + r.image_tokens
    rows.append(("prompt eval count", f"{p} token(s)" + (f", {r.cached_tokens} cached" if r.cached_tokens else "")))
    rows.append(("prompt eval duration", duration(r.prompt_ms)))
    rows.append(("prompt eval rate", f"{r.prompt_tokens_per_s:.2f} tokens/s"))
    rows.append(("eval count", f"{r.completion_tokens} token(s)"))
    rows.append(("eval duration", duration(r.generation_ms)))
    rows.append(("eval rate", f"{r.generation_tokens_per_s:.2f} tokens/s"))
    rows.append(("finish reason", str(r.finish_reason)))
    return "\n".join(f"{k + ':':<22}{v}" for k, v in rows)


# ---- log lines ------------------------------------------------------------------------------------

class LogHandler(logging.Handler):
    """The package's log lines on stderr as ``tinygptv: ...`` (warnings in colour), each on its own line
    even while an answer streams. Records that carry a finished answer (``record.result``) are left to
    the caller, which prints its statistics itself."""

    def __init__(self, term: Term):
        super().__init__()
        self.term = term

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "result", None) is not None:
            return
        try:
            msg = record.getMessage()
            if record.levelno >= logging.ERROR:
                self.term.note(f"tinygptv: error: {msg}", "error")
            elif record.levelno >= logging.WARNING:
                self.term.note(f"tinygptv: warning: {msg}", "warning")
            else:
                self.term.note(f"tinygptv: {msg}", "dim")
        except Exception:  # pragma: no cover
            self.handleError(record)


def install_log_handler(term: Term) -> LogHandler:
    """Routes the package's logger through `term` (replacing any handler set_verbose() added)."""
    from . import _logging
    logger = _logging.logger
    if _logging._stderr_handler is not None:
        logger.removeHandler(_logging._stderr_handler)
        _logging._stderr_handler = None
    for h in list(logger.handlers):
        if isinstance(h, LogHandler):
            logger.removeHandler(h)
    h = LogHandler(term)
    logger.addHandler(h)
    logger.propagate = False
    return h
