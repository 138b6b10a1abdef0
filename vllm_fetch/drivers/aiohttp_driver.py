"""The async driver: opens connections with aiohttp, streams bytes, asks the core what to do."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable
from types import TracebackType

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..core import redirects
from ..core.body import CASE_INSENSITIVE_TYPES, BodyMeter
from ..core.proxy_refusal import proxy_refused
from ..core.request import FetchRequest, TransportOptions
from ..core.responses import (
    DEFAULT_HEADERS,
    REDIRECT_STATUSES,
    reads_no_body,
    request_headers,
    response_meter,
)
from ..core.results import Body
from ..core.urls import redact_url, url_to_send
from ..errors import (
    FetchConnectionError,
    FetchError,
    FetchTimeoutError,
    IdleTimeoutError,
    IntegrityError,
    InvalidURLError,
    ResponseHeadersError,
    TruncatedBodyError,
    wrapped_fetch_error,
)
from .address_guard import address_guard
from .aiohttp_environment import NO_ROUTE, Route, environment_route, known_route
from .aiohttp_resolver import PinnedResolver, literal_check_trace
from .tls import ca_context

CASE_INSENSITIVE_TYPES.update((CIMultiDict, CIMultiDictProxy))

#: aiohttp's read buffer; its 64 KiB default makes many tiny chunks on fast links.
READ_BUFSIZE = 1024 * 1024


def map_error(exc: BaseException, url: str) -> FetchError:
    """Translate aiohttp/asyncio exceptions into the vllm_fetch hierarchy."""
    safe = redact_url(url)
    inner = wrapped_fetch_error(exc)  # e.g. the address guard's refusal, wrapped as an OSError
    if inner is not None:
        return inner
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
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return proxy_refused(safe, exc.status)
    if isinstance(exc, aiohttp.ClientResponseError) and exc.status == 400:
        # aiohttp reports unparseable response headers (huge lines, too many) this way
        return ResponseHeadersError(f"malformed response headers from {safe}", url=safe)
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return FetchConnectionError(f"cannot fetch {safe}: {type(exc).__name__}", url=safe)
    if isinstance(exc, ValueError):  # a request aiohttp refuses to make before sending it
        return InvalidURLError(f"cannot send {safe}: {type(exc).__name__}", url=safe)
    raise exc


class _MappedErrors:
    """Anything but a FetchError raised inside becomes one (``map_error``); chained."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, FetchError):
            raise map_error(exc, self.url) from exc


class _LoopSessions:
    """The sessions of each event loop, closed when that loop shuts down.

    A session is bound to the loop that created it, so the global connection keeps one per loop:
    the driver's own (``trust_env`` off: the driver passes what the environment says itself),
    and, once ``get_async_client()`` asks for it, the public one, which shares its connector
    (one pool of connections per loop). Closing rides on the loop's async-generator shutdown
    (``asyncio.run`` calls it before closing the loop), so sessions never outlive their loop and
    never warn about being unclosed.
    """

    def __init__(self, driver: AiohttpDriver) -> None:
        self._driver = driver
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sessions] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._last: _Sessions | None = None

    def current(self) -> aiohttp.ClientSession | None:
        """The driver's own session of the running loop when it is the last one used and
        open (no coroutine for the common case), else None: then :meth:`get`."""
        found = self._last
        if found is None or found.own.closed:
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return found.own if found.loop() is loop else None

    async def get(self, *, public: bool = False) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        found = self._last  # most calls come from the loop of the call before (no weakref)
        if found is None or found.loop() is not loop:
            with self._lock:
                found = self._by_loop.get(loop)
        if found is None or found.own.closed:
            found = _Sessions(loop, self._driver.new_session())
            keeper = found.close_at_shutdown()
            await keeper.__anext__()
            found.keeper = keeper
            with self._lock:
                self._by_loop[loop] = found
        self._last = found
        if not public:
            return found.own
        if found.public is None or found.public.closed:
            found.public = self._driver.new_session(
                public=True, connector=found.own.connector)
        return found.public

    async def close_current(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._by_loop.pop(loop, None)
            if self._last is found:
                self._last = None
        if found is not None:
            await found.close()


class _Sessions:
    """One loop's sessions: the driver's own (it owns the connector) and the public one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, own: aiohttp.ClientSession) -> None:
        self.loop = weakref.ref(loop)
        self.own = own
        self.public: aiohttp.ClientSession | None = None
        self.keeper: AsyncIterator[None] | None = None

    async def close(self) -> None:
        if self.public is not None:
            await self.public.close()
        await self.own.close()

    async def close_at_shutdown(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.close()


class AiohttpDriver:
    """Async transport: a session per event loop, verbatim URLs, per-attempt timeouts."""

    def __init__(self, options: TransportOptions, *, reuse_client: bool = True) -> None:
        self.options = options
        self.reuse_client = reuse_client
        self._sessions = _LoopSessions(self)
        #: an attempt's timeouts when its call has no deadline (the same for every attempt)
        self._untimed = aiohttp.ClientTimeout(
            total=None, sock_connect=options.connect_timeout, sock_read=options.idle_timeout)
        #: what a plain call sends: the own sessions' default headers, so such a request
        #: passes none of its own (aiohttp then merges nothing into them)
        self._plain_headers = request_headers(options.user_agent, None,
                                              extra_defaults=DEFAULT_HEADERS)

    def new_session(
        self, *, public: bool = False, connector: aiohttp.BaseConnector | None = None
    ) -> aiohttp.ClientSession:
        """A session whose connector dials only checked addresses when the policy asks for it.

        No cookie jar: a session is shared by every caller of the connection, so a cookie one
        origin set must never ride along on another caller's request. The driver's own sessions
        leave ``trust_env`` off (``_send`` passes the environment's proxy and .netrc answers,
        remembered in :mod:`.environment`); a ``public`` one (``get_async_client()``) keeps the
        connection's ``trust_env`` and checks every URL it is asked for by the policy.
        """
        owner = connector is None
        if connector is None:
            guard = address_guard(self.options)
            connector = aiohttp.TCPConnector(
                limit=100, limit_per_host=0,
                resolver=PinnedResolver(guard) if guard is not None else None,
            )
        policy = self.options.policy
        # the own sessions' defaults are what a plain call sends and waits (see _get); a
        # public one keeps aiohttp's
        defaults = {} if public else {"headers": self._plain_headers, "timeout": self._untimed}
        return aiohttp.ClientSession(
            connector=connector,
            connector_owner=owner,
            trust_env=self.options.trust_env if public else False,
            read_bufsize=READ_BUFSIZE,
            auto_decompress=True,
            cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=[literal_check_trace(policy)] if public and policy.restricts else None,
            **defaults,  # type: ignore[arg-type]
        )

    async def session(self) -> aiohttp.ClientSession:
        """The running loop's public session (or a fresh one when reuse_client=False)."""
        if not self.reuse_client:
            return self.new_session(public=True)
        return await self._sessions.get(public=True)

    async def own_session(self) -> aiohttp.ClientSession:
        """The running loop's session for the driver's requests (fresh: reuse_client=False)."""
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
    def _start(
        self, session: aiohttp.ClientSession, url: str, headers: dict[str, str],
        req: FetchRequest,
    ) -> Awaitable[aiohttp.ClientResponse]:
        """The request for ``url`` as aiohttp's own awaitable: no coroutine of ours around it
        when the environment's answer for the origin is known (one frame less, resumed at each
        suspension). Its errors, raised here or when it is awaited, are the caller's to map
        (:meth:`_send`)."""
        deadline = req.deadline
        if deadline.timeout is None:  # no deadline: the same timeouts for every attempt
            timeout = self._untimed
        else:
            deadline.check(redact_url(url))
            timeouts = deadline.attempt_timeouts(
                idle=self.options.idle_timeout, connect=self.options.connect_timeout
            )
            timeout = aiohttp.ClientTimeout(
                total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
            )
        url = url_to_send(url, headers)  # aiohttp refuses userinfo with an Authorization
        target = URL(url, encoded=True)
        route = known_route(target, url) if self.options.trust_env else NO_ROUTE
        if route is None:
            return self._routed(session, target, url, headers, req, timeout)
        return self._get(session, target, url, headers, req, timeout, route)

    async def _routed(
        self, session: aiohttp.ClientSession, target: URL, url: str, headers: dict[str, str],
        req: FetchRequest, timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        """:meth:`_start` for an origin whose environment answer is not known yet."""
        route = await environment_route(target, url)
        return await self._get(session, target, url, headers, req, timeout, route)

    def _get(
        self, session: aiohttp.ClientSession, target: URL, url: str, headers: dict[str, str],
        req: FetchRequest, timeout: aiohttp.ClientTimeout, route: Route,
    ) -> Awaitable[aiohttp.ClientResponse]:
        context = ca_context() if url[:6].lower() == "https:" else None
        if route is NO_ROUTE:  # no proxy, no netrc credentials: the usual answer
            if (context is None and timeout is self._untimed and req.read_bufsize is None
                    and headers == self._plain_headers):
                # every argument is the own session's default (its headers and timeouts, no
                # proxy, default TLS): each keyword costs aiohttp's 37-parameter _request a
                # match
                return session.get(target, allow_redirects=False)
            proxy_headers = None
        elif route.proxy is not None or route.auth is not None:
            headers, proxy_headers = route.credentials(target, headers)
        else:
            proxy_headers = None
        return session.get(
            target, headers=headers, allow_redirects=False, timeout=timeout,
            read_bufsize=req.read_bufsize, proxy=route.proxy, proxy_headers=proxy_headers,
            ssl=context if context is not None else True,
        )

    async def _send(
        self, session: aiohttp.ClientSession, url: str, headers: dict[str, str],
        req: FetchRequest,
    ) -> aiohttp.ClientResponse:
        """One request (no redirect followed), its errors mapped."""
        try:
            return await self._start(session, url, headers, req)
        except Exception as exc:
            # not chained: aiohttp's own exceptions quote the full URL, query string included
            raise map_error(exc, url) from None

    async def open(
        self, session: aiohttp.ClientSession, req: FetchRequest
    ) -> aiohttp.ClientResponse:
        """Send the request and follow redirects; the body of the final response is unread."""
        chain = redirects.Chain(req, self.options)
        while True:
            response = await self._send(session, chain.url, chain.headers, req)
            if chain.arrived(response.status, response.headers, response.release):
                return response

    # -- bodies -------------------------------------------------------------------------------
    async def iter_body(
        self, response: aiohttp.ClientResponse, meter: BodyMeter, req: FetchRequest,
        url: str | None = None,
    ) -> AsyncIterator[bytes]:
        """Stream decoded chunks as they arrive, each accounted by the meter (``url``: the
        response's URL, when the caller has it already). Each chunk is one aiohttp received,
        handed over as it is (``readchunk``); ``iter_any`` would join all that is buffered into
        a new, often multi-MiB, bytes object first."""
        url = str(response.url) if url is None else url
        safe = redact_url(url)
        deadline = req.deadline
        readchunk = response.content.readchunk
        with _MappedErrors(url):
            while True:
                chunk, chunk_end = await readchunk()
                if not chunk:
                    if chunk_end:
                        continue  # the end of one HTTP chunk (chunked coding), not of the body
                    break
                meter.feed(chunk)
                deadline.check(safe)
                yield chunk
        meter.finish()

    async def fetch_body(
        self, req: FetchRequest, session: aiohttp.ClientSession | None = None
    ) -> Body:
        """The final response's body, redirects followed (``session``: the running loop's own
        one when None). One coroutine for the whole exchange: :meth:`open` inlined."""
        if session is None:
            if not self.reuse_client:
                async with self.call_session() as fresh:
                    return await self.fetch_body(req, fresh)
            session = self._sessions.current()
            if session is None:
                session = await self._sessions.get()
        url, headers = req.send_url or req.url, req.headers
        chain = None  # made by the first redirect: most answers are final
        while True:
            try:
                response = await self._start(session, url, headers, req)
            except Exception as exc:  # as _send maps them (not chained: see there)
                raise map_error(exc, url) from None
            if response.status not in REDIRECT_STATUSES:
                break
            if chain is None:
                chain = redirects.Chain(req, self.options)
            if chain.arrived(response.status, response.headers, response.release):
                break
            url, headers = chain.url, chain.headers
        try:  # ``async with response`` without its two coroutines: release() is what they do
            # the final URL stays aiohttp's object: made a string (and redacted) only when a
            # message or the caller asks for it (a get_bytes caller never does)
            final = response.url
            status, answer = response.status, response.headers
            if req.redirect_answers and reads_no_body(req, status, answer):
                return Body(b"", status, answer, final)
            meter = response_meter(req, status, answer, final, response.reason or "", False)
            # the body read as iter_body accounts it, without an async generator per response
            # (each one costs a loop hook and a weak set entry) or a context manager
            check = req.deadline.check if req.deadline.timeout is not None else None
            parts = []
            readany = response.content.readany  # what iter_any() awaits, without its iterator
            try:
                while chunk := await readany():
                    meter.feed(chunk)
                    if check is not None:
                        check(meter.url)
                    parts.append(chunk)
            except FetchError:
                raise
            except Exception as exc:  # as _MappedErrors maps them
                raise map_error(exc, str(final)) from exc
            meter.finish()
            return Body(b"".join(parts), status, answer, final, meter.sha256)
        finally:
            response.release()  # the connection back to the pool once the request is written
