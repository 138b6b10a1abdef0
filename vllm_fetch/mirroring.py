"""Mirror calls for the façade: try the mirror, fall back to the origin (decisions in
``core.mirrors``; this module only sequences the two attempts and logs the fallback once)."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .core.mirrors import Mirrors, Route, falls_back, falls_back_status, mirror_request
from .core.request import FetchRequest
from .core.results import Body, DownloadResult
from .core.retry import RetryPolicy
from .core.urls import redact_url
from .errors import FetchError

logger = logging.getLogger("vllm_fetch.mirrors")

D = TypeVar("D")  # a driver
T = TypeVar("T")


def mark_body(body: Body, mirrors: Mirrors, route: Route) -> Body:
    """A body the mirror served, named by the origin URL it stands for."""
    return Body(body.content, body.status, body.headers, mirrors.restore(body.url, route),
                body.known_sha256, source="mirror")


def mark_download(result: DownloadResult, mirrors: Mirrors, route: Route) -> DownloadResult:
    """A file the mirror served, named by the origin URL it stands for."""
    return dataclasses.replace(result, url=mirrors.restore(result.url, route), source="mirror")


class MirrorCalls:
    """One connection's mirrors: which driver and retry policy each attempt uses.

    With fallback on, the mirror gets a single attempt (a failed one moves to the origin at
    once; a download resumes there from the bytes the mirror sent); with it off, the mirror
    gets the connection's retry policy and its errors are the call's.
    """

    def __init__(self, mirrors: Mirrors, retry: RetryPolicy) -> None:
        self.mirrors = mirrors
        self.retry = retry
        self.mirror_retry = retry.replace(max_attempts=1) if mirrors.fallback else retry
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def _fell_back(self, route: Route, req: FetchRequest, why: str) -> None:
        """Log a fallback: a WARNING the first time for each mirror, INFO after that."""
        with self._lock:
            first = route.mirror not in self._warned
            self._warned.add(route.mirror)
        logger.log(logging.WARNING if first else logging.INFO,
                   "mirror %s failed for %s (%s); falling back to the origin",
                   redact_url(route.mirror), redact_url(req.url), why)

    def _failed(self, error: BaseException) -> bool:
        return self.mirrors.fallback and falls_back(error)

    def _bad_status(self, status: int | None) -> bool:
        return self.mirrors.fallback and status is not None and falls_back_status(status)

    def call(
        self, req: FetchRequest, origin: D, mirror: Callable[[], D],
        attempt: Callable[[D, FetchRequest, RetryPolicy], T],
        mark: Callable[[T, Mirrors, Route], T],
        status: Callable[[T], int | None] = lambda _: None,
    ) -> T:
        """``attempt`` through the mirror, else (or after a fallback) through the origin."""
        routed = mirror_request(req, self.mirrors) if self.mirrors else None
        if routed is None:
            return attempt(origin, req, self.retry)
        sent, route = routed
        try:
            result = attempt(mirror(), sent, self.mirror_retry)
        except FetchError as exc:
            if not self._failed(exc):
                raise
            self._fell_back(route, req, str(exc))
            return attempt(origin, req, self.retry)
        if self._bad_status(status(result)):
            self._fell_back(route, req, f"HTTP {status(result)}")
            return attempt(origin, req, self.retry)
        return mark(result, self.mirrors, route)

    async def acall(
        self, req: FetchRequest, origin: D, mirror: Callable[[], D],
        attempt: Callable[[D, FetchRequest, RetryPolicy], Awaitable[T]],
        mark: Callable[[T, Mirrors, Route], T],
        status: Callable[[T], int | None] = lambda _: None,
    ) -> T:
        """Async twin of :meth:`call` (same decisions, awaited attempts)."""
        routed = mirror_request(req, self.mirrors) if self.mirrors else None
        if routed is None:
            return await attempt(origin, req, self.retry)
        sent, route = routed
        try:
            result = await attempt(mirror(), sent, self.mirror_retry)
        except FetchError as exc:
            if not self._failed(exc):
                raise
            self._fell_back(route, req, str(exc))
            return await attempt(origin, req, self.retry)
        if self._bad_status(status(result)):
            self._fell_back(route, req, f"HTTP {status(result)}")
            return await attempt(origin, req, self.retry)
        return mark(result, self.mirrors, route)
