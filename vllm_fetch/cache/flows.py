"""The cached calls, written once for both sides as generators of effects.

A flow asks the cache, then yields what it needs done — ``Fetch`` (a body), ``Probe`` (a
conditional request whose body is not read), ``Download`` (the download engine) or ``Disk``
(slow local work such as copying a file) or ``Wait`` (for the cache's background writer) —
and gets the result sent back, or the
``FetchError`` thrown in. ``runner.py`` performs the effects with requests (sync) or aiohttp
(async). Every decision comes from ``core.cache_policy``; only plumbing is here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core.body import header, is_encoded
from ..core.cache_policy import (
    CacheEntry,
    LookupAction,
    LookupDecision,
    ResponseAction,
    ResponseDecision,
    is_complete,
    on_response,
    stale_if_error_allowed,
)
from ..core.request import FetchRequest
from ..core.responses import check_status
from ..core.results import Body, DownloadResult
from ..core.tenancy import policy_headers
from ..core.urls import redact_url
from ..errors import (
    CachedBodyDamagedError,
    ChecksumMismatchError,
    FetchConnectionError,
    FetchError,
    FetchTimeoutError,
    HTTPStatusError,
    OfflineError,
    SizeLimitExceededError,
)
from .fetch_cache import FetchCache

logger = logging.getLogger("vllm_fetch.cache")

HITS = (LookupAction.HIT, LookupAction.OFFLINE_HIT)


@dataclass(frozen=True)
class Fetch:
    req: FetchRequest  # -> Body


@dataclass(frozen=True)
class Probe:
    req: FetchRequest  # -> Probed


@dataclass(frozen=True)
class Download:
    req: FetchRequest
    target: Path  # -> DownloadResult


@dataclass(frozen=True)
class Disk:
    work: Callable[[], Any]  # -> its result; the async side runs it in a thread


@dataclass(frozen=True)
class Wait:
    future: concurrent.futures.Future[Any]  # -> the settled future


@dataclass(frozen=True)
class Probed:
    status: int
    headers: dict[str, str]
    url: str


Effect = Fetch | Probe | Download | Disk | Wait
Flow = Generator[Effect, Any, Any]


@dataclass(frozen=True)
class Start:
    """The outcome of the lookup every cached call begins with."""

    key: str
    decision: LookupDecision
    now: float


def begin(cache: FetchCache, req: FetchRequest, *, offline: bool) -> Start:
    now = time.time()
    key, decision = cache.lookup(req.url, req.headers, offline=offline, now=now,
                                 scope=req.cache_scope)
    if decision.action is LookupAction.OFFLINE_MISS:
        raise offline_error(req.url, decision.reason)
    return Start(key, decision, now)


def offline_error(url: str, reason: str = "not in the cache") -> OfflineError:
    safe = redact_url(url)
    return OfflineError(f"offline mode: {safe} is {reason or 'not in the cache'}", url=safe)


def damaged_error(url: str) -> CachedBodyDamagedError:
    """Offline, and the stored body failed its seal (or vanished): never served; dropped."""
    safe = redact_url(url)
    return CachedBodyDamagedError(
        f"offline mode: the cached body of {safe} is damaged or missing; it was dropped "
        "(fetch it again online)", url=safe)


# --- bodies -------------------------------------------------------------------------------------


def serve_body(cache: FetchCache, start: Start, req: FetchRequest) -> Body | None:
    """The stored body for a HIT (None otherwise, or when its blob turned out to be gone)."""
    entry = start.decision.entry
    if start.decision.action not in HITS or entry is None:
        return None
    _check_cap(entry, req)
    data = cache.read(start.key, entry, start.now)
    if data is None and start.decision.action is LookupAction.OFFLINE_HIT:
        raise damaged_error(req.url)
    if data is not None and start.decision.stale:
        logger.warning("offline: serving a stale cached copy of %s", redact_url(req.url))
    return None if data is None else _body(data, entry, req.url)


def _body(data: bytes, entry: CacheEntry, url: str) -> Body:
    return Body(data, 200, dict(entry.headers), url, entry.sha256)


def _check_cap(entry: CacheEntry, req: FetchRequest) -> None:
    _check_size(entry.size, req)


def _check_size(size: int, req: FetchRequest) -> None:
    """A stored body over the caller's max_bytes is refused as the network path would be."""
    if req.max_bytes is not None and size > req.max_bytes:
        safe = redact_url(req.url)
        raise SizeLimitExceededError(
            f"{safe} is {size} bytes, more than max_bytes={req.max_bytes}", url=safe)


def _conditional(req: FetchRequest, decision: LookupDecision) -> FetchRequest:
    """The request to send: conditional when revalidating. A body is not hashed while it
    streams: the cache's writer hashes what it stores, off the caller's thread."""
    if decision.action is not LookupAction.REVALIDATE:
        return req
    return replace(req, headers={**req.headers, **decision.headers}, accept_not_modified=True)


def body_flow(
    cache: FetchCache, req: FetchRequest, *, offline: bool, start: Start | None = None
) -> Flow:
    """get_bytes/get_text/get_json through the cache. ``start``: a lookup already made."""
    if start is None:
        start = begin(cache, req, offline=offline)
        served = serve_body(cache, start, req)
        if served is not None:
            return served
    if offline:  # an OFFLINE_HIT whose blob vanished (serve_body raised) never gets here
        raise offline_error(req.url)
    entry = start.decision.entry
    sent_at = time.time()
    try:
        body: Body = yield Fetch(_conditional(req, start.decision))
    except FetchError as exc:
        stale = _stale_on_error(cache, start, req, exc)
        if stale is None:
            raise
        return stale
    verdict = _verdict(cache, entry, body.status, body.headers, req, sent_at)
    if verdict.action in (ResponseAction.REFRESH, ResponseAction.REFETCH):
        if verdict.action is ResponseAction.REFRESH and verdict.entry is not None:
            _check_cap(verdict.entry, req)
            data = cache.read(start.key, verdict.entry, time.time())
            if data is not None:
                _settle_refresh(cache, start.key, verdict)
                return _body(data, verdict.entry, req.url)
        cache.invalidate(start.key)
        return (yield from body_flow(cache, req, offline=offline))  # now an unconditional MISS
    if verdict.action is ResponseAction.STORE and verdict.entry is not None:
        length = None if is_encoded(body.headers) else header(body.headers, "Content-Length")
        if is_complete(None, length, len(body.content)):
            template = verdict.entry
            backlog = cache.submit_bytes(start.key, template, body.content, body.sha256)
            if backlog is not None:
                yield Wait(backlog)  # the writer is behind: let it catch up
    elif verdict.invalidate:
        cache.invalidate(start.key)
    return body


def _settle_refresh(cache: FetchCache, key: str, verdict: ResponseDecision) -> None:
    """After a 304 served the stored body: keep the refreshed entry, or drop it when the
    response made it unstorable (§4.3.4)."""
    if verdict.invalidate or verdict.entry is None:
        cache.invalidate(key)
    else:
        cache.refresh(key, verdict.entry)


def _verdict(
    cache: FetchCache, entry: CacheEntry | None, status: int, headers: Mapping[str, str],
    req: FetchRequest, sent_at: float,
) -> ResponseDecision:
    return on_response(entry, status, headers, policy_headers(req.url, req.headers),
                       time.time(), sent_at, url=redact_url(req.url),
                       store_private=cache.allow_private)


def _stale_on_error(
    cache: FetchCache, start: Start, req: FetchRequest, exc: FetchError
) -> Body | None:
    """stale-if-error: the stored copy when the origin is unreachable or answers 5xx."""
    entry = start.decision.entry
    if entry is None or not _may_serve_stale(cache, start, req, exc):
        return None
    _check_cap(entry, req)
    data = cache.read(start.key, entry, start.now)
    if data is None:
        return None
    logger.warning("serving a stale cached copy of %s: %s", redact_url(req.url), exc)
    return _body(data, entry, req.url)


def _may_serve_stale(cache: FetchCache, start: Start, req: FetchRequest, exc: FetchError) -> bool:
    entry = start.decision.entry
    assert entry is not None
    if isinstance(exc, HTTPStatusError):
        verdict = _verdict(cache, entry, exc.status, exc.headers, req, start.now)
        if verdict.invalidate:
            cache.invalidate(start.key)
        return bool(verdict.action is ResponseAction.SERVE_STALE)
    unreachable = isinstance(exc, (FetchConnectionError, FetchTimeoutError))
    return unreachable and stale_if_error_allowed(entry, time.time())


# --- files --------------------------------------------------------------------------------------


def _fits(entry: CacheEntry | None, req: FetchRequest) -> bool:
    """Whether a stored body satisfies the caller's expected_sha256 / expected_size."""
    if entry is None:
        return False
    sha_ok = req.expected_sha256 is None or req.expected_sha256.lower() == entry.sha256
    return sha_ok and (req.expected_size is None or req.expected_size == entry.size)


def _published(target: Path, entry: CacheEntry, url: str) -> DownloadResult:
    return DownloadResult(target, entry.size, entry.sha256, 200, dict(entry.headers), url,
                          from_cache=True)


def download_flow(cache: FetchCache, req: FetchRequest, target: Path, *, offline: bool) -> Flow:
    """download_file through the cache: a hit is copied to the target, zero requests."""
    wanted = req.expected_sha256.lower() if req.expected_sha256 else None
    # same bytes from any URL: only in the shared namespace (a restricting policy never gets
    # bytes that a connection allowed more fetched, not even by naming their sha256)
    size = cache.blob_size(wanted) if wanted and not req.cache_scope else None
    if size is not None:
        _check_size(size, req)
    if wanted and size is not None and req.expected_size in (None, size) and (
        yield Disk(lambda: cache.copy_blob_to(wanted, target))
    ):
        # same bytes, any URL
        return DownloadResult(target, size, wanted, 200, {}, req.url, from_cache=True)
    try:
        start = begin(cache, req, offline=offline)
    except OfflineError:
        if size is not None:  # the copy from another URL's blob failed its check
            raise damaged_error(req.url) from None
        raise
    entry = start.decision.entry
    if _fits(entry, req) and entry is not None:
        if start.decision.action in HITS:
            if (yield from _copy(cache, start, entry, target, req)):
                return _published(target, entry, req.url)
            if offline:
                raise damaged_error(req.url)
        if start.decision.action is LookupAction.REVALIDATE:
            refreshed = yield from _revalidate_file(cache, start, req, target)
            if refreshed is not None:
                return refreshed
    if offline:
        if entry is not None and not _fits(entry, req):
            safe = redact_url(req.url)
            raise ChecksumMismatchError(
                f"offline mode: the cached copy of {safe} does not match the expected "
                "sha256/size", url=safe)
        raise offline_error(req.url)
    sent_at = time.time()
    try:
        result: DownloadResult = yield Download(replace(req, hash_body=True), target)
    except FetchError as exc:
        if entry is None or not _fits(entry, req) or not _may_serve_stale(cache, start, req, exc):
            raise
        if not (yield from _copy(cache, start, entry, target, req)):
            raise
        logger.warning("serving a stale cached copy of %s: %s", redact_url(req.url), exc)
        return _published(target, entry, req.url)
    yield from _store_download(cache, start, req, result, sent_at)
    return result


def _copy(cache: FetchCache, start: Start, entry: CacheEntry, target: Path,
          req: FetchRequest) -> Flow:
    _check_cap(entry, req)
    copied = yield Disk(lambda: cache.copy_to(start.key, entry, target, time.time()))
    return bool(copied)


def _revalidate_file(
    cache: FetchCache, start: Start, req: FetchRequest, target: Path
) -> Flow:
    """A conditional request without reading a body: 304 → copy the blob; else None."""
    entry = start.decision.entry
    assert entry is not None
    sent_at = time.time()
    try:
        probed: Probed = yield Probe(_conditional(req, start.decision))
    except FetchError as exc:
        if not _may_serve_stale(cache, start, req, exc):
            raise
        if (yield from _copy(cache, start, entry, target, req)):
            logger.warning("serving a stale cached copy of %s: %s", redact_url(req.url), exc)
            return _published(target, entry, req.url)
        raise
    if probed.status == 304:
        verdict = _verdict(cache, entry, 304, probed.headers, req, sent_at)
        if verdict.action is ResponseAction.REFRESH and verdict.entry is not None and (
            yield from _copy(cache, start, verdict.entry, target, req)
        ):
            _settle_refresh(cache, start.key, verdict)
            return _published(target, verdict.entry, req.url)
        cache.invalidate(start.key)
        return None
    if not 200 <= probed.status < 300:
        verdict = _verdict(cache, entry, probed.status, probed.headers, req, sent_at)
        if verdict.action is ResponseAction.SERVE_STALE and (
            yield from _copy(cache, start, entry, target, req)
        ):
            logger.warning("serving a stale cached copy of %s: HTTP %d", redact_url(req.url),
                           probed.status)
            return _published(target, entry, req.url)
        if verdict.invalidate:
            cache.invalidate(start.key)
        check_status(probed.status, redact_url(probed.url), headers=probed.headers)
    return None  # changed: the caller downloads it (a second request)


def _store_download(
    cache: FetchCache, start: Start, req: FetchRequest, result: DownloadResult, sent_at: float
) -> Flow:
    status, headers = result.status, dict(result.headers)
    if status == 206:  # resumed: the whole file is what counts, not the last part
        status = 200
        headers = {k: v for k, v in headers.items()
                   if k.lower() not in ("content-range", "content-length")}
        headers["Content-Length"] = str(result.size)
    entry = start.decision.entry if _fits(start.decision.entry, req) else None
    verdict = _verdict(cache, entry, status, headers, req, sent_at)
    if verdict.action is ResponseAction.STORE and verdict.entry is not None and result.sha256:
        template, sha = verdict.entry, result.sha256
        yield Disk(lambda: cache.store_file(start.key, template, result.path, sha, result.size))
    elif verdict.invalidate:
        cache.invalidate(start.key)
