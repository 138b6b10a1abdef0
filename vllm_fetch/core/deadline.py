"""One meaning of ``timeout`` on both sides: a total deadline for the call (pure)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import FetchTimeoutError

#: Default idle timeout: no byte for this many seconds ends an attempt (then it is retried).
DEFAULT_IDLE_TIMEOUT = 30.0
#: Default time allowed to open a TCP/TLS connection, per attempt.
DEFAULT_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class AttemptTimeouts:
    """What one attempt may wait for: a connection, and each read (bounded by the deadline)."""

    connect: float
    read: float
    total: float | None


class Deadline:
    """A total deadline for a call, retries, redirects and backoff sleeps included."""

    __slots__ = ("_clock", "_end", "timeout")

    def __init__(
        self, timeout: float | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if timeout is not None and (math.isnan(timeout) or timeout <= 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = timeout
        self._clock = clock
        self._end = None if timeout is None else clock() + timeout

    def remaining(self) -> float | None:
        """Seconds left, or None when the call has no deadline."""
        if self._end is None:
            return None
        return max(0.0, self._end - self._clock())

    def expired(self) -> bool:
        rest = self.remaining()
        return rest is not None and rest <= 0

    def check(self, url: str) -> None:
        """Raise FetchTimeoutError if the deadline has passed (per chunk: no call without one)."""
        end = self._end
        if end is not None and self._clock() >= end:
            raise FetchTimeoutError(f"timed out after {self.timeout:g} s fetching {url}", url=url)

    def attempt_timeouts(self, *, idle: float, connect: float) -> AttemptTimeouts:
        """Timeouts for the next attempt: never longer than what is left of the deadline."""
        rest = self.remaining()
        if rest is None:
            return AttemptTimeouts(connect=connect, read=idle, total=None)
        rest = max(rest, 0.001)
        return AttemptTimeouts(connect=min(connect, rest), read=min(idle, rest), total=rest)


#: The deadline of every call without a timeout: it holds no state (nothing ever expires), so
#: one object serves them all instead of one per call.
NO_DEADLINE = Deadline(None)
