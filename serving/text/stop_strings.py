"""Stop strings over streamed text: match across chunk boundaries, hold back what might still match.

Text arrives in arbitrary chunks (one per detokenized token), so a stop string can span several.
The matcher releases text only once no stop string can start inside it, which makes its output
independent of how the text was chunked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class InvalidStopStringError(ValueError):
    """An empty stop string would stop every request before its first character."""


@dataclass(frozen=True)
class StopCheck:
    """Text that is now safe to emit, and the stop string that ended the output (None if running)."""

    released: str
    stop_str: str | None = None


class StopStringMatcher:
    """Finds the first stop string in streamed text and withholds any possible partial match."""

    def __init__(self, stop: str | Iterable[str], include_stop_str_in_output: bool = False) -> None:
        self.stop = (stop,) if isinstance(stop, str) else tuple(stop)  # one string is one stop, not chars
        if "" in self.stop:
            raise InvalidStopStringError("stop strings must be non-empty")
        self.include_stop_str_in_output = include_stop_str_in_output
        self.stop_str: str | None = None
        self._pending = ""

    @property
    def stopped(self) -> bool:
        return self.stop_str is not None

    def feed(self, text: str) -> StopCheck:
        """Add newly decoded text; nothing more is released once a stop string matched."""
        if self.stopped:
            return StopCheck("", self.stop_str)
        buffer = self._pending + text
        match = self._first_match(buffer)
        if match is not None:
            start, self.stop_str = match
            self._pending = ""
            end = start + len(self.stop_str) if self.include_stop_str_in_output else start
            return StopCheck(buffer[:end], self.stop_str)
        keep = self._partial_match_len(buffer)
        self._pending = buffer[len(buffer) - keep :]
        return StopCheck(buffer[: len(buffer) - keep])

    def flush(self) -> str:
        """Release the held-back text: the output ended for another reason (length, EOS)."""
        pending, self._pending = self._pending, ""
        return pending

    def _first_match(self, buffer: str) -> tuple[int, str] | None:
        """The match that completes first (then starts first), as a char-by-char stream would see it."""
        found = []
        for stop in self.stop:
            start = buffer.find(stop)
            if start >= 0:
                found.append((start + len(stop), start, stop))
        if not found:
            return None
        _, start, stop = min(found)
        return start, stop

    def _partial_match_len(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of some stop string."""
        longest = max((len(stop) for stop in self.stop), default=1) - 1
        for size in range(min(longest, len(buffer)), 0, -1):
            suffix = buffer[-size:]
            if any(stop.startswith(suffix) for stop in self.stop):
                return size
        return 0
