"""Stop-string handling for streamed text: holds back the tail that could still become a stop string."""
from __future__ import annotations

from typing import Iterable, List, Optional, Tuple


class StopMatcher:
    """Feed text pieces; get back text that is safe to show, and whether a stop string was hit.

    The emitted text never contains a stop string: on a match everything from the stop string on is
    dropped. Text that might be the beginning of a stop string is held until it is decided.
    """

    def __init__(self, stops: Iterable[str]):
        self.stops: List[str] = [s for s in stops if s]
        self._held = ""

    def push(self, piece: str) -> Tuple[str, bool]:
        text = self._held + piece
        cut: Optional[int] = None
        for s in self.stops:
            i = text.find(s)
            if i >= 0 and (cut is None or i < cut):
                cut = i
        if cut is not None:
            self._held = ""
            return text[:cut], True
        keep = 0
        for s in self.stops:  # longest suffix of text that is a proper prefix of a stop string
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        out, self._held = self._held, ""
        return out
