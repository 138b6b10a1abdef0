"""The async driver: opens connections with aiohttp, streams bytes, asks the core what to do."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError
from yarl import URL

from ..core import redirects
from ..core.body import BodyMeter
from ..core.request import FetchRequest, TransportOptions
from ..core.responses import response_meter
from ..core.results import Body, DownloadResult
from ..core.urls import redact_url
from ..download import async_engine
from ..download.options import DownloadOptions
from ..errors import (
    FetchConnectionError,
    FetchError,
    FetchTimeoutError,
    IdleTimeoutError,
    IntegrityError,
    InvalidURLError,
    ResponseHeadersError,
    TruncatedBodyError,
)
from .address_guard import address_guard
from .aiohttp_resolver import PinnedResolver, literal_check_trace

#: aiohttp's read buffer; its 64 KiB default makes many tiny chunks on fast links.
READ_BUFSIZE = 1024 * 1024


def map_error(exc: BaseException, url: str) -> FetchError:
    """Translate aiohttp/asyncio exceptions into the vllm_fetch hierarchy."""
    safe = redact_url(url)
    if isinstance(exc, FetchError):
        return exc
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return IdleTimeoutError(f"no data from {safe} within the idle timeout", url=safe)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return FetchTimeoutError(f"timed out connecting to {safe}", url=safe)
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return FetchTimeoutError(f"timed out fetching {safe}", url=safe)
    if isinstance(exc, aiohttp.ClientPayloadError):
        # a chunked body cut short says "transfer-encoding" too: only a content-coding failure
        # is a decoding error; a cut is truncation (retried and resumed, fault F2)
        if isinstance(exc.__cause__, ContentEncodingError) or "decompress" in str(exc).lower():
            return IntegrityError(f"cannot decode the body of {safe}", url=safe)
        return TruncatedBodyError(f"connection to {safe} broke mid-body", url=safe)
    if isinstance(exc, aiohttp.InvalidURL):
        return InvalidURLError(f"Invalid HTTP URL: {safe}", url=safe)
    if isinstance(exc, aiohttp.ClientResponseError) and exc.status == 400:
        # aiohttp reports unparseable response headers (huge lines, too many) this way
        return ResponseHeadersError(f"malformed response headers from {safe}", url=safe)
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return FetchConnectionError(f"cannot fetch {safe}: {type(exc).__name__}", url=safe)
    if isinstance(exc, ValueError):  # e.g. an Authorization header and userinfo in the URL
        return InvalidURLError(f"cannot send {safe}: {type(exc).__name__}", url=safe)
    raise exc


class _LoopSessions:
    """One aiohttp session per event loop, closed when that loop shuts down.

    A session is bound to the loop that created it, so the global connection keeps one per loop.
    Closing rides on the loop's async-generator shutdown (``asyncio.run`` calls it before closing
    the loop), so sessions never outlive their loop and never warn about being unclosed.
    """

    def __init__(self, factory: Callable[[], aiohttp.ClientSession]) -> None:
        self._factory = factory
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncIterator[None]]
        ] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    async def get(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._by_loop.get(loop)
        if found is not None and not found[0].closed:
            return found[0]
        session = self._factory()
        keeper = self._close_at_shutdown(session)
        await keeper.__anext__()
        with self._lock:
            self._by_loop[loop] = (session, keeper)
        return session

    @staticmethod
    async def _close_at_shutdown(session: aiohttp.ClientSession) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await session.close()

    async def close_current(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._by_loop.pop(loop, None)
        if found is not None:
            await found[0].close()


class AiohttpDriver:
    """Async transport: a session per event loop, verbatim URLs, per-attempt timeouts."""

    def __init__(self, options: TransportOptions, *, reuse_client: bool = True) -> None:
        self.options = options
        self.reuse_client = reuse_client
        self._sessions = _LoopSessions(self.new_session)

    def new_session(self) -> aiohttp.ClientSession:
        """A session whose connector dials only checked addresses when the policy asks for it.

        No cookie jar: a session is shared by every caller of the connection, so a cookie one
        origin set must never ride along on another caller's request.
        """
        guard = address_guard(self.options)
        connector = aiohttp.TCPConnector(
            limit=100, limit_per_host=0,
            resolver=PinnedResolver(guard) if guard is not None else None,
        )
        policy = self.options.policy
        return aiohttp.ClientSession(
            connector=connector,
            trust_env=self.options.trust_env,
            read_bufsize=READ_BUFSIZE,
            auto_decompress=True,
            cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=[literal_check_trace(policy)] if policy.restricts else None,
        )

    async def session(self) -> aiohttp.ClientSession:
        """The running loop's shared session (or a fresh one when reuse_client=False)."""
        if not self.reuse_client:
            return self.new_session()
        return await self._sessions.get()

    @contextlib.asynccontextmanager
    async def call_session(self) -> AsyncIterator[aiohttp.ClientSession]:
        if self.reuse_client:
            yield await self._sessions.get()
            return
        session = self.new_session()
        try:
            yield session
        finally:
            await session.close()

    async def aclose(self) -> None:
        await self._sessions.close_current()

    # -- one request, redirects followed by the core ------------------------------------------
    async def _send(
        self, session: aiohttp.ClientSession, url: str, headers: dict[str, str],
        req: FetchRequest,
    ) -> aiohttp.ClientResponse:
        req.deadline.check(redact_url(url))
        timeouts = req.deadline.attempt_timeouts(
            idle=self.options.idle_timeout, connect=self.options.connect_timeout
        )
        timeout = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        try:
            return await session.get(
                URL(url, encoded=True), headers=headers, allow_redirects=False, timeout=timeout,
                read_bufsize=req.read_bufsize,
            )
        except Exception as exc:
            # not chained: aiohttp's own exceptions quote the full URL, query string included
            raise map_error(exc, url) from None

    async def open(
        self, session: aiohttp.ClientSession, req: FetchRequest
    ) -> aiohttp.ClientResponse:
        """Send the request and follow redirects; the body of the final response is unread."""
        url, headers = req.url, req.headers
        for hops_done in range(self.options.max_redirects + 2):
            response = await self._send(session, url, headers, req)
            try:
                hop = redirects.next_hop(
                    url, response.status, response.headers, headers,
                    hops_done=hops_done, follow=req.allow_redirects,
                    max_redirects=self.options.max_redirects, policy=self.options.policy,
                )
            except BaseException:
                response.release()
                raise
            if hop is None:
                return response
            response.release()  # a redirect body is never read
            url, headers = hop.url, hop.headers
        raise AssertionError("unreachable: next_hop enforces the redirect cap")

    # -- bodies -------------------------------------------------------------------------------
    async def iter_body(
        self, response: aiohttp.ClientResponse, meter: BodyMeter, req: FetchRequest
    ) -> AsyncIterator[bytes]:
        """Stream decoded chunks as they arrive, each accounted by the meter."""
        safe = redact_url(str(response.url))
        try:
            async for chunk in response.content.iter_any():
                meter.feed(chunk)
                req.deadline.check(safe)
                yield chunk
        except FetchError:
            raise
        except Exception as exc:
            raise map_error(exc, str(response.url)) from exc
        meter.finish()

    async def checked_response(
        self, session: aiohttp.ClientSession, req: FetchRequest
    ) -> tuple[aiohttp.ClientResponse, BodyMeter]:
        response = await self.open(session, req)
        try:
            url = redact_url(str(response.url))
            meter = response_meter(req, response.status, response.headers, url,
                                   reason=response.reason or "")
        except BaseException:
            response.release()
            raise
        return response, meter

    async def fetch_body(self, req: FetchRequest) -> Body:
        async with self.call_session() as session:
            response, meter = await self.checked_response(session, req)
            async with response:
                parts = [chunk async for chunk in self.iter_body(response, meter, req)]
                return Body(b"".join(parts), response.status, dict(response.headers),
                                 str(response.url), meter.sha256)

    async def download(self, req: FetchRequest, target: Path, options: DownloadOptions
                       ) -> DownloadResult:
        """The whole download (lock, resume, parts, verify, publish): ``download.async_engine``.
        """
        return await async_engine.download(self, req, target, options)
