"""The package's log: Python and C++ lines go to the `tinygptv_native` logger, quiet unless verbose."""
from __future__ import annotations

import logging
import sys

from . import _core

logger = logging.getLogger("tinygptv_native")
_stderr_handler: "logging.Handler | None" = None


def _from_core(level: int, message: str) -> None:
    logger.log(level, "%s", message)


def sync_level() -> None:
    """Tells the core the lowest level the logger passes on, so it does not format lines nobody reads."""
    _core.set_log_level(logger.getEffectiveLevel())


def set_verbose(verbose: bool = True) -> None:
    """Shows INFO lines (timings, model facts) on stderr when verbose, else only warnings and errors.
    Applications that configure `logging` themselves can instead set the `tinygptv_native` logger's level
    and call sync_level()."""
    global _stderr_handler
    if verbose:
        logger.setLevel(logging.INFO)
        if _stderr_handler is None and not logger.handlers:
            _stderr_handler = logging.StreamHandler(sys.stderr)
            _stderr_handler.setFormatter(logging.Formatter("tinygptv: %(message)s"))
            logger.addHandler(_stderr_handler)
    else:
        logger.setLevel(logging.WARNING)
        if _stderr_handler is not None:
            logger.removeHandler(_stderr_handler)
            _stderr_handler = None
    sync_level()


_core.set_log_handler(_from_core)
sync_level()
