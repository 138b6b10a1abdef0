"""The vLLM-compatible façade: ``HTTPConnection`` and ``global_http_connection``.

Same methods and signatures as ``vllm.connections`` (0.33), and its other public names: the
size errors and ``MediaRequestDownloadBudget``. Every call runs under the retry policy,
follows redirects under the URL policy, and streams downloads crash-safely. Bodies and downloads
go through the disk cache (``vllm_fetch.cache``) unless it is off; raw responses never do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Awaitable, Iterable, Mapping, MutableMapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import requests

from ._version import DEFAULT_USER_AGENT
from .cache.fetch_cache import FetchCache
from .cache.flows import Hops, Probed, offline_error
from .cache.memory_hits import memory_body
from .cache.runner import AsyncIO, CachedCalls, SyncIO
from .cache.settings import CacheArg, CacheSetting
from .cache.shared_tier import SharedTier
from .config import env_flag, env_float, env_str
from .core.address_policy import Resolver, URLPolicy
from .core.body import expected_digest
from .core.deadline import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    NO_DEADLINE,
    Deadline,
)
from .core.media_limits import ByteBudget, CallBudget, MediaRequestDownloadBudget, media_cap
from .core.mirrors import Mirrors, Route, parse_mirrors
from .core.request import DEFAULT_CHUNK_SIZE, FetchRequest, TransportOptions
from .core.responses import (
    DEFAULT_HEADERS,
    decode_json_as_aiohttp,
    decode_text,
    request_headers,
    unexpected_json_type,
)
from .core.results import Body, DownloadResult, FetchResult
from .core.retry import RetryPolicy, status_failure
from .core.scrub import ascrubbed, scrub_error, scrubbed
from .core.urls import quote_url, redact_url, validate_url
from .download import sync_runner
from .download.options import DownloadOptions
from .download.progress import ProgressSpec
from .drivers.requests_driver import RequestsDriver
from .errors import (
    FetchError,
    HTTPResponseSizeExceededError,
    MediaDownloadSizeExceededError,
    MediaRequestDownloadSizeExceededError,
)
from .files import checked_target
from .mirroring import MirrorCalls, mark_body, mark_download
from .retry_loop import ResultRetry, aretry_failed, async_retrying, sync_retrying

if TYPE_CHECKING:  # aiohttp is imported on first async use: sync programs start faster
    import aiohttp

    from .async_response import AsyncResponseContext
    from .drivers.aiohttp_driver import AiohttpDriver


__all__ = [
    "HTTPConnection",
    "HTTPResponseSizeExceededError",
    "MediaDownloadSizeExceededError",
    "MediaRequestDownloadBudget",
    "MediaRequestDownloadSizeExceededError",
    "global_http_connection",
]


#: os.environ's own store (writes through os.environ, monkeypatch included, update it).
_ENV_STORE = getattr(os.environ, "_data", None) if os.name == "posix" else None
_OFFLINE_KEY = os.fsencode("VLLM_FETCH_OFFLINE")


def _as_async(error: FetchError) -> FetchError:
    """The error as the async side raises it (also aiohttp's exception type, if it has one)."""
    from .aiohttp_errors import as_async

    return as_async(error)


def _settled(req: FetchRequest, result: Body) -> Body:
    """``result`` after charging the request's budget for what no transfer charged (a hit)."""
    if isinstance(req.request_budget, CallBudget):
        req.request_budget.settle(len(result.content), redact_url(req.url))
    return result


class _DownloadPlan(NamedTuple):
    """A download after validation: the request, where it goes, how, and through which cache."""

    req: FetchRequest
    target: Path
    options: DownloadOptions
    cache: FetchCache | None
    offline: bool


def mirrors_from(mirrors: Mapping[str, str] | None, credentials: bool) -> Mirrors:
    """The connection's mirrors: ``mirrors``, else ``$VLLM_FETCH_MIRRORS``; falling back to the
    origin unless ``VLLM_FETCH_MIRROR_FALLBACK=0``."""
    mapping = parse_mirrors(env_str("VLLM_FETCH_MIRRORS")) if mirrors is None else mirrors
    return Mirrors.build(mapping, fallback=env_flag("VLLM_FETCH_MIRROR_FALLBACK", True),
                         credentials=credentials)


def _mark_probe(probed: Probed, mirrors: Mirrors, route: Route) -> Probed:
    return dataclasses.replace(probed, url=mirrors.restore(probed.url, route))


def proxies_allowed(policy: URLPolicy, trust_env: bool | None) -> bool:
    """Whether environment proxies (and .netrc) are honoured.

    An explicit ``trust_env`` argument, else ``$VLLM_FETCH_TRUST_ENV`` when set, else: yes,
    unless the policy restricts what may be fetched, because a proxy resolves and dials names
    itself and would bypass ``block_private_ips`` and the per-address checks.
    """
    if trust_env is not None:
        return trust_env
    if env_str("VLLM_FETCH_TRUST_ENV"):
        return env_flag("VLLM_FETCH_TRUST_ENV", True)
    return not policy.restricts


class HTTPConnection:
    """Helper class to send HTTP requests, with retries, redirects under policy and safe files.

    A drop-in for ``vllm.connections.HTTPConnection``. ``timeout`` on every method is a total
    deadline for the call (retries, redirects and backoff included); an idle timeout
    (``idle_timeout``, default 30 s or ``$VLLM_FETCH_IDLE_TIMEOUT``) ends any stalled attempt.

    ``cache``: None for the default cache (``$VLLM_FETCH_CACHE_DIR``, else the user cache dir)
    unless ``VLLM_FETCH_DISABLE_CACHE=1``; False for none; a path or a ``FetchCache``.
    ``offline`` (None: ``$VLLM_FETCH_OFFLINE``): only the cache answers; a miss raises
    ``OfflineError`` and no connection is ever opened.
    """

    def __init__(
        self,
        *,
        reuse_client: bool = True,
        retry: RetryPolicy | None = None,
        cache: CacheArg = None,
        offline: bool | None = None,
        allowed_domains: Iterable[str] | None = None,
        block_private_ips: bool | None = None,
        max_bytes: int | None = None,
        max_redirects: int = 10,
        user_agent: str | None = None,
        idle_timeout: float | None = None,
        connect_timeout: float | None = None,
        trust_env: bool | None = None,
        allowed_networks: Iterable[str] | None = None,
        resolver: Resolver | None = None,
        mirrors: Mapping[str, str] | None = None,
        mirror_credentials: bool = False,
    ) -> None:
        """``block_private_ips=None`` reads ``$VLLM_FETCH_BLOCK_PRIVATE_IPS`` (default off).
        ``allowed_networks`` (e.g. ``["10.1.2.0/24"]``) are exempt from it. ``resolver`` is a
        DNS hook ``(host, port) -> addresses``; see the README's "Fetching untrusted URLs".
        ``mirrors`` (None: ``$VLLM_FETCH_MIRRORS``) maps origin URL prefixes to mirror
        prefixes, e.g. ``{"https://huggingface.co": "https://cache.internal/hf"}``; the
        origin's credential headers reach a mirror only with ``mirror_credentials=True``.
        See the README's "Fleets"."""
        if max_redirects < 0:
            raise ValueError("max_redirects must be >= 0")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.reuse_client = reuse_client
        self.retry = retry if retry is not None else RetryPolicy.from_env()
        self.max_bytes = max_bytes
        if block_private_ips is None:
            block_private_ips = env_flag("VLLM_FETCH_BLOCK_PRIVATE_IPS", False)
        policy = URLPolicy.build(allowed_domains, block_private_ips, allowed_networks)
        self.url_policy = policy
        options = TransportOptions(
            user_agent=user_agent or DEFAULT_USER_AGENT,
            policy=policy,
            idle_timeout=idle_timeout or env_float("VLLM_FETCH_IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT),
            connect_timeout=connect_timeout or DEFAULT_CONNECT_TIMEOUT,
            max_redirects=max_redirects,
            trust_env=proxies_allowed(policy, trust_env),
            resolver=resolver,
        )
        self.options = options
        self._default_headers = request_headers(options.user_agent, None,
                                                extra_defaults=DEFAULT_HEADERS)
        self._sync = RequestsDriver(options, reuse_client=reuse_client)
        self._async_driver: AiohttpDriver | None = None
        self._async_driver_lock = threading.Lock()
        self.mirrors = mirrors_from(mirrors, mirror_credentials)
        self._mirror_calls = MirrorCalls(self.mirrors, self.retry)
        self._routed = bool(self.mirrors)  # some calls may go through a mirror
        # mirrors get drivers of their own: their hosts are trusted by the URL policy, and
        # their pooled connections are never reused for a URL a caller named
        self._mirror_options = dataclasses.replace(options, policy=dataclasses.replace(
            policy, trusted_hosts=self.mirrors.hosts))
        self._shared = SharedTier.from_env()  # read-only blobs another machine filled
        self._mirror_sync: RequestsDriver | None = None
        self._mirror_async: AiohttpDriver | None = None
        self._cache = CacheSetting(cache)
        self._offline = offline
        self._cached = CachedCalls()
        hops = Hops(max_redirects, policy)  # cached bodies: redirects cached hop by hop
        # downloads add an engine; the cache flows ask the shared tier, if any
        self._sync_io = SyncIO(self._fetch, self._probe, hops=hops, shared=self._shared)
        self._async_io = AsyncIO(self._afetch, self._aprobe, hops=hops, shared=self._shared)

    @property
    def _async(self) -> AiohttpDriver:
        """The aiohttp driver, made on first async use (importing aiohttp costs ~0.1 s)."""
        driver = self._async_driver
        if driver is None:
            with self._async_driver_lock:
                if self._async_driver is None:
                    from .drivers.aiohttp_driver import AiohttpDriver

                    self._async_driver = AiohttpDriver(self.options,
                                                       reuse_client=self.reuse_client)
                driver = self._async_driver
        return driver

    def _mirror_sync_driver(self) -> RequestsDriver:
        with self._async_driver_lock:
            if self._mirror_sync is None:
                self._mirror_sync = RequestsDriver(self._mirror_options,
                                                   reuse_client=self.reuse_client)
            return self._mirror_sync

    def _mirror_async_driver(self) -> AiohttpDriver:
        with self._async_driver_lock:
            if self._mirror_async is None:
                from .drivers.aiohttp_driver import AiohttpDriver

                self._mirror_async = AiohttpDriver(self._mirror_options,
                                                   reuse_client=self.reuse_client)
            return self._mirror_async

    @property
    def offline(self) -> bool:
        """Offline mode: the constructor's ``offline``, else ``$VLLM_FETCH_OFFLINE`` as it is
        now (read per call, so a test suite may set it after import)."""
        if self._offline is not None:
            return self._offline
        if isinstance(_ENV_STORE, dict) and _OFFLINE_KEY not in _ENV_STORE:
            return False  # unset: the common case, a dict lookup (os.environ.get raises inside)
        return env_flag("VLLM_FETCH_OFFLINE")

    @property
    def cache(self) -> FetchCache | None:
        """The disk cache this connection uses (opened on first use), or None."""
        return self._cache.get()

    def _cache_for(
        self, req: FetchRequest, use_cache: bool, offline: bool
    ) -> FetchCache | None:
        """The cache for this call; offline with no cache to ask is an OfflineError."""
        cache = self._cache.get() if use_cache and req.allow_redirects else None
        if cache is None and offline:
            raise offline_error(req.url, "not available: the cache is off for this call")
        return cache

    # -- clients --------------------------------------------------------------------------------
    def get_sync_client(self) -> requests.Session:
        """The calling thread's ``requests.Session`` (a new one when ``reuse_client=False``)."""
        return self._sync.session()

    async def get_async_client(self) -> aiohttp.ClientSession:
        """An ``aiohttp.ClientSession`` valid for the running event loop."""
        return await self._async.session()

    def close(self) -> None:
        """Close every sync session this connection opened."""
        self._sync.close()
        if self._mirror_sync is not None:
            self._mirror_sync.close()

    async def aclose(self) -> None:
        """Close the running loop's aiohttp session and every sync session."""
        if self._async_driver is not None:
            await self._async_driver.aclose()
        if self._mirror_async is not None:
            await self._mirror_async.aclose()
        self.close()

    def __enter__(self) -> HTTPConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> HTTPConnection:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- vLLM's private hooks ---------------------------------------------------------------------
    def _validate_http_url(self, url: str) -> None:
        """As vLLM's: None for an http(s) URL, else a ValueError (``InvalidURLError``). A URL
        with literal spaces passes, as every call quotes them. Every call asks an override
        first (vLLM's order), then checks the URL and the URL policy itself."""
        validate_url(quote_url(url))

    def _headers(self, **extras: str) -> MutableMapping[str, str]:
        """As vLLM's: a new dict of the default headers (``User-Agent``, ``Accept-Encoding:
        identity``) with ``extras`` on top (case-insensitively). Every call sends what an
        override returns, given the call's ``extra_headers``."""
        return request_headers(self.options.user_agent, extras, extra_defaults=DEFAULT_HEADERS)

    # -- requests -------------------------------------------------------------------------------
    def _request(
        self,
        url: str,
        timeout: float | None,
        extra_headers: Mapping[str, str] | None,
        allow_redirects: bool = True,
        max_bytes: int | None = None,
        media: bool = False,
        request_budget: ByteBudget | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
    ) -> FetchRequest:
        """The request for one call. ``media``: a get_bytes body, capped by vLLM's
        ``$VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB`` too (the smaller limit wins)."""
        # vLLM's hooks, asked only when overridden (by a subclass, or patched on the class or
        # the instance): the defaults are what this method does inline
        cls, patched = type(self), self.__dict__
        if cls._validate_http_url is not _OWN_VALIDATE_HTTP_URL or "_validate_http_url" in patched:
            self._validate_http_url(url)  # before our own checks, as vLLM asks it first
        url = quote_url(url)
        self.url_policy.check_url(url)
        cap = max_bytes if max_bytes is not None else self.max_bytes
        media_limit = False
        if media:
            cap, media_limit = media_cap(cap)
        if cls._headers is not _OWN_HEADERS or "_headers" in patched:
            headers = dict(self._headers(**(extra_headers or {})))
        elif extra_headers:
            headers = request_headers(self.options.user_agent, extra_headers,
                                      extra_defaults=DEFAULT_HEADERS)
        else:
            headers = dict(self._default_headers)  # the same for every plain call
        return FetchRequest(  # positional, in FetchRequest's order (one request per call)
            url, headers, NO_DEADLINE if timeout is None else Deadline(timeout),
            allow_redirects, cap, expected_size, expected_sha256, chunk_size, False, False,
            False, None, self.url_policy.cache_scope, media_limit, request_budget,
        )

    @scrubbed
    def get_response(
        self,
        url: str,
        *,
        stream: bool = False,
        timeout: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        allow_redirects: bool = True,
    ) -> requests.Response:
        """The raw ``requests.Response`` (uncached), any status. Statuses the retry policy
        retries (503, 429...) are retried first; when it gives up, the last one is returned."""
        req = self._request(url, timeout=timeout, extra_headers=extra_headers,
                            allow_redirects=allow_redirects)
        if self.offline:
            raise offline_error(url, "not available: raw responses are never cached")

        def attempt() -> requests.Response:
            session = self._sync.session()
            response = self._sync.open(session, req)
            try:
                if not stream:
                    _ = response.content
            except BaseException:
                response.close()
                raise
            finally:
                if not self.reuse_client:
                    session.close()  # the response keeps its own connection until closed
            return response

        on_result = ResultRetry[requests.Response](
            failure=lambda r: status_failure(self.retry, r.status_code, redact_url(r.url or url),
                                             r.headers),
            discard=lambda r: r.close(),
        )
        return sync_retrying(self.retry, req.deadline, "GET", url, on_result)(attempt)

    @ascrubbed
    async def get_async_response(
        self,
        url: str,
        *,
        timeout: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        allow_redirects: bool = True,
    ) -> AsyncResponseContext:
        """Use as ``async with await conn.get_async_response(url) as r`` (as in vLLM)."""
        req = self._request(url, timeout=timeout, extra_headers=extra_headers,
                            allow_redirects=allow_redirects)
        if self.offline:
            raise offline_error(url, "not available: raw responses are never cached")

        import aiohttp

        from .async_response import AsyncResponseContext

        on_result = ResultRetry[aiohttp.ClientResponse](
            failure=lambda r: status_failure(self.retry, r.status, redact_url(str(r.url)),
                                             r.headers),
            discard=lambda r: r.release(),
        )

        async def run() -> tuple[aiohttp.ClientResponse, aiohttp.ClientSession | None]:
            session = await self._async.own_session()
            try:
                retrying = async_retrying(self.retry, req.deadline, "GET", url, on_result)
                response: aiohttp.ClientResponse = await retrying(self._async.open, session, req)
            except BaseException as exc:
                if not self.reuse_client:
                    await session.close()
                # raised when the caller awaits the context, past this method's ascrubbed:
                # aiohttp's errors in the chain quote the URL and the request's headers
                scrub_error(exc, url)
                if not isinstance(exc, FetchError):
                    raise
                error = _as_async(exc)
                if error is exc:
                    raise
            else:
                return response, None if self.reuse_client else session
            raise error

        return AsyncResponseContext(run())

    # -- bodies ---------------------------------------------------------------------------------
    def _fetch(self, req: FetchRequest) -> Body:
        def attempt(driver: RequestsDriver, r: FetchRequest, retry: RetryPolicy) -> Body:
            return sync_retrying(retry, r.deadline, "GET", r.url)(driver.fetch_body, r)

        return self._mirror_calls.call(req, self._sync, self._mirror_sync_driver, attempt,
                                       mark_body)

    def _afetch(self, req: FetchRequest) -> Awaitable[Body]:
        """The awaitable of one body fetch (not a coroutine of its own: one frame less)."""
        calls = self._mirror_calls
        if not calls.mirrors:  # no mirror to route through: no coroutine layers for one
            return self._afetch_origin(req)

        async def attempt(driver: AiohttpDriver, r: FetchRequest, retry: RetryPolicy) -> Body:
            return await async_retrying(retry, r.deadline, "GET", r.url)(driver.fetch_body, r)

        return self._mirror_calls.acall(req, self._async, self._mirror_async_driver,
                                              attempt, mark_body)

    async def _afetch_origin(self, req: FetchRequest) -> Body:
        """One body from the origin under the retry policy: the first attempt made here, the
        retry loop built only after it failed."""
        try:
            return await self._async.fetch_body(req)
        except Exception as exc:
            first = exc  # retried outside the handler: the errors keep their context
        return await self._aretry_origin(first, req)

    async def _aretry_origin(self, first: Exception, req: FetchRequest) -> Body:
        """The retries after a first attempt at the origin failed with ``first``; a FetchError
        raised as the async side raises it (``_as_async``)."""
        try:
            return await aretry_failed(first, self._mirror_calls.retry, req.deadline, "GET",
                                       req.url, self._async.fetch_body, req)
        except FetchError as exc:
            error = _as_async(exc)
            if error is exc:
                raise
        raise error

    def _media_request(
        self, url: str, timeout: float | None, allow_redirects: bool, max_bytes: int | None,
        request_budget: ByteBudget | None, extra_headers: Mapping[str, str] | None,
    ) -> FetchRequest:
        """A ``get_bytes`` request: the media cap, and this call's view of ``request_budget``."""
        budget = None if request_budget is None else CallBudget(request_budget)
        return self._request(url, timeout, extra_headers, allow_redirects, max_bytes, True,
                             budget)  # positional: _request's order

    def _body(self, req: FetchRequest, use_cache: bool) -> Body:
        offline = self.offline
        cache = self._cache_for(req, use_cache, offline)
        if cache is None:
            return self._fetch(req)
        if not offline and (held := memory_body(cache, req)) is not None:
            return held  # fresh in memory: no lookup, no flow
        return self._cached.body(cache, req, self._sync_io, offline=offline)

    async def _abody(self, req: FetchRequest, use_cache: bool) -> Body:
        try:
            offline = self.offline
            cache = self._cache_for(req, use_cache, offline)
            if cache is None:
                return await self._afetch(req)
            if not offline and (held := memory_body(cache, req)) is not None:
                return held  # the same fast path as the sync side's: nothing to await
            return await self._cached.abody(cache, req, self._async_io, offline=offline)
        except FetchError as exc:
            error = _as_async(exc)
            if error is exc:
                raise
        raise error

    def _probe(self, req: FetchRequest) -> Probed:
        """A (conditional) request whose body is never read: its status and headers."""
        def probe(driver: RequestsDriver, req: FetchRequest, retry: RetryPolicy) -> Probed:
            def attempt() -> Probed:
                with driver.call_session() as session, driver.open(session, req) as r:
                    failure = status_failure(retry, r.status_code, redact_url(r.url or req.url),
                                             r.headers)
                    if failure is not None:
                        raise failure
                    return Probed(r.status_code, dict(r.headers), r.url or req.url)

            return sync_retrying(retry, req.deadline, "GET", req.url)(attempt)

        return self._mirror_calls.call(req, self._sync, self._mirror_sync_driver, probe,
                                       _mark_probe, lambda p: p.status)

    async def _aprobe(self, req: FetchRequest) -> Probed:
        async def probe(driver: AiohttpDriver, req: FetchRequest, retry: RetryPolicy) -> Probed:
            async def attempt() -> Probed:
                async with driver.call_session() as session:
                    r = await driver.open(session, req)
                    async with r:
                        failure = status_failure(retry, r.status, redact_url(str(r.url)),
                                                 r.headers)
                        if failure is not None:
                            raise failure
                        return Probed(r.status, dict(r.headers), str(r.url))

            return await async_retrying(retry, req.deadline, "GET", req.url)(attempt)

        return await self._mirror_calls.acall(req, self._async, self._mirror_async_driver,
                                              probe, _mark_probe, lambda p: p.status)

    @scrubbed
    def fetch_bytes(
        self,
        url: str,
        *,
        timeout: float | None = None,
        allow_redirects: bool = True,
        max_bytes: int | None = None,
        request_budget: ByteBudget | None = None,
        extra_headers: Mapping[str, str] | None = None,
        use_cache: bool = True,
    ) -> FetchResult:
        """:meth:`get_bytes` returning a :class:`FetchResult`: the body with its status,
        headers (every line), final URL, ``from_cache``, ``age`` and ``sha256``. Any non-2xx
        final status raises ``HTTPStatusError``, as for ``get_bytes``.

        As in vLLM's ``get_bytes``, the body is capped by ``$VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB``
        too (the smaller of it and ``max_bytes`` wins) and charged to ``request_budget``.
        """
        req = self._media_request(url, timeout, allow_redirects, max_bytes, request_budget,
                                  extra_headers)
        return _settled(req, self._body(req, use_cache))

    @ascrubbed
    async def async_fetch_bytes(
        self,
        url: str,
        *,
        timeout: float | None = None,
        allow_redirects: bool = True,
        max_bytes: int | None = None,
        request_budget: ByteBudget | None = None,
        extra_headers: Mapping[str, str] | None = None,
        use_cache: bool = True,
    ) -> FetchResult:
        """Async twin of :meth:`fetch_bytes`."""
        return await self._async_fetch_bytes(url, timeout, allow_redirects, max_bytes,
                                             request_budget, extra_headers, use_cache)

    async def _async_fetch_bytes(
        self, url: str, timeout: float | None, allow_redirects: bool, max_bytes: int | None,
        request_budget: ByteBudget | None, extra_headers: Mapping[str, str] | None,
        use_cache: bool,
    ) -> FetchResult:
        """:meth:`async_fetch_bytes` without its scrub wrapper (for a caller that has one)."""
        req = self._media_request(url, timeout, allow_redirects, max_bytes, request_budget,
                                  extra_headers)
        return _settled(req, await self._abody(req, use_cache))

    @scrubbed
    def get_bytes(
        self,
        url: str,
        *,
        timeout: float | None = None,
        allow_redirects: bool = True,
        max_bytes: int | None = None,
        request_budget: ByteBudget | None = None,
        extra_headers: Mapping[str, str] | None = None,
        use_cache: bool = True,
    ) -> bytes:
        """The body as bytes; any non-2xx status raises ``HTTPStatusError``.

        As in vLLM, the body is capped by ``$VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB`` too (the smaller
        of it and ``max_bytes`` wins) and charged to ``request_budget``.
        """
        req = self._media_request(url, timeout, allow_redirects, max_bytes, request_budget,
                                  extra_headers)  # as fetch_bytes, one scrub wrapper less
        return _settled(req, self._body(req, use_cache)).content

    async def async_get_bytes(
        self,
        url: str,
        *,
        timeout: float | None = None,
        allow_redirects: bool = True,
        max_bytes: int | None = None,
        request_budget: ByteBudget | None = None,
        extra_headers: Mapping[str, str] | None = None,
        use_cache: bool = True,
    ) -> bytes:
        """Async twin of :meth:`get_bytes`."""
        # The hot call of an inference server: ``ascrubbed``'s handler is written out here,
        # and an uncached call with no mirror awaits the driver itself (``_afetch_origin``
        # inlined). Every frame between the caller and aiohttp is resumed at each suspension.
        try:
            req = self._request(url, timeout, extra_headers, allow_redirects, max_bytes, True,
                                None if request_budget is None else CallBudget(request_budget))
            if (use_cache and self._cache.get() is not None) or self._routed or self.offline:
                return _settled(req, await self._abody(req, use_cache)).content
            driver = self._async_driver or self._async
            try:
                return _settled(req, await driver.fetch_body(req)).content
            except Exception as exc:
                first = exc  # retried outside the handler: the errors keep their context
            return _settled(req, await self._aretry_origin(first, req)).content
        except BaseException as exc:
            scrub_error(exc, url if isinstance(url, str) else None)
            raise

    @scrubbed
    def get_text(
        self,
        url: str,
        *,
        timeout: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
        use_cache: bool = True,
    ) -> str:
        """The body decoded by its declared charset (UTF-8, then Latin-1, when none)."""
        req = self._request(url, timeout=timeout, extra_headers=extra_headers,
                            max_bytes=max_bytes)
        body = self._body(req, use_cache)
        return decode_text(body.content, body.headers)

    @ascrubbed
    async def async_get_text(
        self,
        url: str,
        *,
        timeout: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
        use_cache: bool = True,
    ) -> str:
        """The body decoded by its declared charset (UTF-8, then Latin-1, when none)."""
        req = self._request(url, timeout=timeout, extra_headers=extra_headers,
                            max_bytes=max_bytes)
        body = await self._abody(req, use_cache)
        return decode_text(body.content, body.headers)

    @scrubbed
    def get_json(
        self,
        url: str,
        *,
        timeout: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
        use_cache: bool = True,
    ) -> Any:
        """The body parsed as JSON; a body that is not JSON raises requests'
        ``JSONDecodeError`` (a ``json.JSONDecodeError``, so a ``ValueError``), as vLLM's
        ``r.json()`` does."""
        req = self._request(url, timeout=timeout, extra_headers=extra_headers,
                            max_bytes=max_bytes)
        content = self._body(req, use_cache).content
        try:
            return json.loads(content)
        except json.JSONDecodeError as exc:
            raise requests.exceptions.JSONDecodeError(exc.msg, exc.doc, exc.pos) from None
        except UnicodeDecodeError as exc:  # not even text (an image where JSON was expected)
            raise requests.exceptions.JSONDecodeError(
                f"not JSON: {exc.reason} at byte {exc.start}", "", 0) from None

    @ascrubbed
    async def async_get_json(
        self,
        url: str,
        *,
        timeout: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
        use_cache: bool = True,
    ) -> Any:
        """The body parsed as JSON, as vLLM's ``await r.json()`` (aiohttp) parses it: a
        Content-Type that is not JSON raises ``aiohttp.ContentTypeError``, an empty body is
        None, the text is decoded by its charset (UTF-8 by default). Every not-JSON answer is
        a ``ValueError``."""
        req = self._request(url, timeout=timeout, extra_headers=extra_headers,
                            max_bytes=max_bytes)
        body = await self._abody(req, use_cache)
        content_type = unexpected_json_type(body.headers)
        if content_type is not None:
            from .aiohttp_errors import not_json_error

            raise not_json_error(redact_url(body.url), body.status, content_type, body.headers)
        return decode_json_as_aiohttp(body.content, body.headers)

    # -- files ----------------------------------------------------------------------------------
    def _plan_download(
        self, url: str, save_path: str | os.PathLike[str], *, timeout: float | None,
        chunk_size: int, extra_headers: Mapping[str, str] | None, expected_sha256: str | None,
        expected_size: int | None, resume: bool, connections: int | None,
        progress: ProgressSpec, use_cache: bool,
    ) -> _DownloadPlan:
        """Everything a download needs, sync or async, before the first byte moves."""
        if expected_size is not None and expected_size < 0:
            raise ValueError(f"expected_size must be >= 0, got {expected_size}")
        req = self._request(url, timeout=timeout, extra_headers=extra_headers,
                            chunk_size=chunk_size, expected_sha256=expected_digest(expected_sha256),
                            expected_size=expected_size)
        target = checked_target(save_path)  # a directory or a device: refused before any request
        offline = self.offline
        return _DownloadPlan(req, target,
                             DownloadOptions(self.retry, resume, connections, progress),
                             self._cache_for(req, use_cache, offline), offline)

    @scrubbed
    def download_file(
        self,
        url: str,
        save_path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        extra_headers: Mapping[str, str] | None = None,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        resume: bool = True,
        connections: int | None = None,
        progress: ProgressSpec = None,
        use_cache: bool = True,
    ) -> Path:
        """Download to ``save_path``: resumable, verified, published atomically.

        A partial is kept beside the target under a hidden temp name and continued (Range +
        If-Range) by the next attempt or call unless ``resume=False``. ``connections=N`` fetches
        N ranges in parallel (None: automatic, 1 for files under 64 MiB). ``progress``: None
        (a bar on a TTY), False, True, or ``callable(done_bytes, total_or_None)``. Concurrent
        downloads of the same URL to the same path on one machine transfer once. On failure
        nothing is left at ``save_path`` (an existing file stays untouched). With the cache on
        (``use_cache``), a fresh cached copy (or any stored body with ``expected_sha256``) is
        copied to ``save_path`` without a request, and a downloaded file joins the cache.
        """
        return self.fetch_file(
            url, save_path, timeout=timeout, chunk_size=chunk_size, extra_headers=extra_headers,
            expected_sha256=expected_sha256, expected_size=expected_size, resume=resume,
            connections=connections, progress=progress, use_cache=use_cache,
        ).path

    @scrubbed
    def fetch_file(
        self,
        url: str,
        save_path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        extra_headers: Mapping[str, str] | None = None,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        resume: bool = True,
        connections: int | None = None,
        progress: ProgressSpec = None,
        use_cache: bool = True,
    ) -> DownloadResult:
        """:meth:`download_file` returning a :class:`DownloadResult`: path, size, sha256 (when
        computed), final status and headers, and ``from_cache``."""
        plan = self._plan_download(
            url, save_path, timeout=timeout, chunk_size=chunk_size, extra_headers=extra_headers,
            expected_sha256=expected_sha256, expected_size=expected_size, resume=resume,
            connections=connections, progress=progress, use_cache=use_cache,
        )
        def engine(r: FetchRequest, t: Path) -> DownloadResult:
            def attempt(driver: RequestsDriver, r: FetchRequest, retry: RetryPolicy
                        ) -> DownloadResult:
                options = dataclasses.replace(plan.options, retry=retry)
                return sync_runner.download(driver, r, t, options)

            return self._mirror_calls.call(r, self._sync, self._mirror_sync_driver, attempt,
                                           mark_download)

        if plan.cache is None:
            return engine(plan.req, plan.target)
        io = dataclasses.replace(self._sync_io, download=engine)
        return self._cached.download(plan.cache, plan.req, plan.target, io, offline=plan.offline)

    @ascrubbed
    async def async_download_file(
        self,
        url: str,
        save_path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        extra_headers: Mapping[str, str] | None = None,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        resume: bool = True,
        connections: int | None = None,
        progress: ProgressSpec = None,
        use_cache: bool = True,
    ) -> Path:
        """Async twin of :meth:`download_file` (parts run as tasks, file work in threads)."""
        result = await self.async_fetch_file(
            url, save_path, timeout=timeout, chunk_size=chunk_size, extra_headers=extra_headers,
            expected_sha256=expected_sha256, expected_size=expected_size, resume=resume,
            connections=connections, progress=progress, use_cache=use_cache,
        )
        return result.path

    @ascrubbed
    async def async_fetch_file(
        self,
        url: str,
        save_path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        extra_headers: Mapping[str, str] | None = None,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        resume: bool = True,
        connections: int | None = None,
        progress: ProgressSpec = None,
        use_cache: bool = True,
    ) -> DownloadResult:
        """Async twin of :meth:`fetch_file`."""
        plan = self._plan_download(
            url, save_path, timeout=timeout, chunk_size=chunk_size, extra_headers=extra_headers,
            expected_sha256=expected_sha256, expected_size=expected_size, resume=resume,
            connections=connections, progress=progress, use_cache=use_cache,
        )
        from .download import async_runner  # imports aiohttp: on first async use only

        async def engine(r: FetchRequest, t: Path) -> DownloadResult:
            async def attempt(driver: AiohttpDriver, r: FetchRequest, retry: RetryPolicy
                              ) -> DownloadResult:
                options = dataclasses.replace(plan.options, retry=retry)
                return await async_runner.download(driver, r, t, options)

            return await self._mirror_calls.acall(r, self._async, self._mirror_async_driver,
                                                  attempt, mark_download)

        try:
            if plan.cache is None:
                return await engine(plan.req, plan.target)

            io = dataclasses.replace(self._async_io, download=engine)
            return await self._cached.adownload(plan.cache, plan.req, plan.target, io,
                                                offline=plan.offline)
        except FetchError as exc:
            error = _as_async(exc)
            if error is exc:
                raise
        raise error


#: The hooks as defined above: ``_request`` asks them only when something replaced them.
_OWN_VALIDATE_HTTP_URL = HTTPConnection.__dict__["_validate_http_url"]
_OWN_HEADERS = HTTPConnection.__dict__["_headers"]

global_http_connection = HTTPConnection()
"""The shared connection, as ``vllm.connections.global_http_connection``."""
