"""Runs the cache flows: performs their effects on the sync side (requests) or the async side
(aiohttp), and makes concurrent identical calls in one process share one transfer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.request import FetchRequest
from ..core.results import Body, DownloadResult
from ..errors import FetchError
from .fetch_cache import FetchCache
from .flows import (
    Disk,
    Download,
    Effect,
    Fetch,
    Flow,
    Hops,
    Probe,
    Probed,
    Start,
    Wait,
    begin,
    body_flow,
    download_flow,
    revalidation_flow,
    serve_body,
)
from .single_flight import AsyncSingleFlight, SingleFlight

logger = logging.getLogger("vllm_fetch.cache")

#: Hits up to this size are read on the event loop itself: a thread hop costs more.
INLINE_READ_MAX = 1 << 20


@dataclass(frozen=True)
class SyncIO:
    """How the sync side performs the network effects (each under the retry policy)."""

    fetch: Callable[[FetchRequest], Body]
    probe: Callable[[FetchRequest], Probed]
    download: Callable[[FetchRequest, Path], DownloadResult] | None = None  # the engine
    hops: Hops | None = None  # bodies: the cache follows redirects itself, hop by hop


@dataclass(frozen=True)
class AsyncIO:
    fetch: Callable[[FetchRequest], Awaitable[Body]]
    probe: Callable[[FetchRequest], Awaitable[Probed]]
    download: Callable[[FetchRequest, Path], Awaitable[DownloadResult]] | None = None
    hops: Hops | None = None


def _perform(effect: Effect, io: SyncIO) -> Any:
    if isinstance(effect, Fetch):
        return io.fetch(effect.req)
    if isinstance(effect, Probe):
        return io.probe(effect.req)
    if isinstance(effect, Download):
        assert io.download is not None, "a download flow needs the engine"
        return io.download(effect.req, effect.target)
    if isinstance(effect, Wait):
        concurrent.futures.wait([effect.future])
        return effect.future
    return effect.work()


async def _aperform(effect: Effect, io: AsyncIO) -> Any:
    if isinstance(effect, Fetch):
        return await io.fetch(effect.req)
    if isinstance(effect, Probe):
        return await io.probe(effect.req)
    if isinstance(effect, Download):
        assert io.download is not None, "a download flow needs the engine"
        return await io.download(effect.req, effect.target)
    if isinstance(effect, Wait):
        await asyncio.wait([asyncio.wrap_future(effect.future)])
        return effect.future
    assert isinstance(effect, Disk)
    return await asyncio.to_thread(effect.work)


def run_sync(flow: Flow, io: SyncIO) -> Any:
    """Drive a flow to its return value; a FetchError from an effect is thrown into it."""
    value: Any = None
    error: FetchError | None = None
    try:
        while True:
            try:
                effect = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                value = _perform(effect, io)
            except FetchError as exc:
                error = exc
    finally:
        flow.close()


async def run_async(flow: Flow, io: AsyncIO) -> Any:
    value: Any = None
    error: FetchError | None = None
    try:
        while True:
            try:
                effect = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                value = await _aperform(effect, io)
            except FetchError as exc:
                error = exc
    finally:
        flow.close()


def _flight_key(kind: str, req: FetchRequest, target: Path | None = None) -> object:
    return (kind, req.url, tuple(sorted(req.headers.items())), req.max_bytes,
            req.allow_redirects, req.expected_sha256, req.expected_size, target)


def _lookup(cache: FetchCache, req: FetchRequest, offline: bool) -> Start | None:
    """The cache's answer to look at first; None when it is a stored redirect, which the body
    flow follows itself, hop by hop."""
    start = begin(cache, req, offline=offline)
    entry = start.decision.entry
    return None if entry is not None and entry.is_redirect else start


class CachedCalls:
    """The façade's entry points into the cache, sync and async."""

    def __init__(self) -> None:
        self._flights = SingleFlight()
        self._aflights = AsyncSingleFlight()
        self._revalidating: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()

    def body(self, cache: FetchCache, req: FetchRequest, io: SyncIO, *, offline: bool) -> Body:
        start = _lookup(cache, req, offline)
        if start is not None:
            hit = serve_body(cache, start, req)
            if hit is not None:
                if start.decision.background:
                    self._revalidate(cache, req, start, io)
                return hit
        return self._flights.run(  # type: ignore[no-any-return]
            _flight_key("body", req),
            lambda: run_sync(body_flow(cache, req, offline=offline, start=start, hops=io.hops),
                             io))

    async def abody(
        self, cache: FetchCache, req: FetchRequest, io: AsyncIO, *, offline: bool
    ) -> Body:
        start = _lookup(cache, req, offline)
        if start is not None:
            entry = start.decision.entry
            if entry is not None and entry.size > INLINE_READ_MAX:
                hit = await asyncio.to_thread(serve_body, cache, start, req)
            else:
                hit = serve_body(cache, start, req)
            if hit is not None:
                if start.decision.background:
                    self._arevalidate(cache, req, start, io)
                return hit
        return await self._aflights.run(
            _flight_key("body", req),
            lambda: run_async(body_flow(cache, req, offline=offline, start=start, hops=io.hops),
                              io))

    # -- stale-while-revalidate: the stale copy was served; refresh it off the caller's path --
    def _claim(self, key: str) -> bool:
        with self._lock:
            if key in self._revalidating:
                return False
            self._revalidating.add(key)
            return True

    def _release(self, key: str) -> None:
        with self._lock:
            self._revalidating.discard(key)

    def _revalidate(self, cache: FetchCache, req: FetchRequest, start: Start, io: SyncIO) -> None:
        if not self._claim(start.key):
            return

        def work() -> None:
            try:
                run_sync(revalidation_flow(cache, req, start), io)
            except FetchError as exc:
                logger.info("background revalidation failed: %s", exc)
            finally:
                self._release(start.key)

        threading.Thread(target=work, name="vllm-fetch-revalidate", daemon=True).start()

    def _arevalidate(self, cache: FetchCache, req: FetchRequest, start: Start,
                     io: AsyncIO) -> None:
        if not self._claim(start.key):
            return

        async def work() -> None:
            try:
                await run_async(revalidation_flow(cache, req, start), io)
            except FetchError as exc:
                logger.info("background revalidation failed: %s", exc)
            finally:
                self._release(start.key)

        task = asyncio.get_running_loop().create_task(work())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def download(
        self, cache: FetchCache, req: FetchRequest, target: Path, io: SyncIO, *, offline: bool
    ) -> DownloadResult:
        return self._flights.run(  # type: ignore[no-any-return]
            _flight_key("file", req), share=False,
            work=lambda: run_sync(download_flow(cache, req, target, offline=offline,
                                                 hops=io.hops), io))

    async def adownload(
        self, cache: FetchCache, req: FetchRequest, target: Path, io: AsyncIO, *, offline: bool
    ) -> DownloadResult:
        return await self._aflights.run(
            _flight_key("file", req), share=False,
            work=lambda: run_async(download_flow(cache, req, target, offline=offline,
                                                   hops=io.hops), io))
