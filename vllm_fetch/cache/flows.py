"""The cached calls, written once for both sides as generators of effects.

A flow asks the cache, then yields what it needs done — ``Fetch`` (a body), ``Probe`` (a
conditional request whose body is not read), ``Download`` (the download engine) or ``Disk``
(slow local work such as copying a file) or ``Wait`` (for the cache's background writer) or
``Refresh`` (a background revalidation, stale-while-revalidate) —
and gets the result sent back, or the
``FetchError`` thrown in. ``runner.py`` performs the effects with requests (sync) or aiohttp
(async). Every decision comes from ``core.cache_policy``; only plumbing is here.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core.address_policy import URLPolicy
from ..core.body import header, is_encoded
from ..core.cache_policy import (
    REDIRECT_STATUSES,
    CacheEntry,
    LookupAction,
    LookupDecision,
    ResponseAction,
    ResponseDecision,
    age_header,
    current_age,
    is_complete,
    on_response,
    stale_if_error_allowed,
)
from ..core.cache_range import ByteRange, partial_lines
from ..core.header_fields import joined
from ..core.redirects import next_hop
from ..core.request import FetchRequest
from ..core.responses import check_status
from ..core.results import Body, DownloadResult
from ..core.seal import remember as remember_seal
from ..core.shared_tier import asks_shared_tier, shared_hit
from ..core.tenancy import policy_headers
from ..core.urls import redact_url
from ..errors import (
    CachedBodyDamagedError,
    CacheUnreadableError,
    ChecksumMismatchError,
    FetchConnectionError,
    FetchError,
    FetchTimeoutError,
    HTTPStatusError,
    OfflineError,
    size_exceeded,
)
from . import transfer_lock
from .fetch_cache import FetchCache
from .shared_tier import SharedTier

logger = logging.getLogger("vllm_fetch.cache")

HITS = (LookupAction.HIT, LookupAction.OFFLINE_HIT)
#: What an entry without a body (a redirect, an error status) stores: the empty blob.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


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


@dataclass(frozen=True)
class Start:
    """The outcome of the lookup every cached call begins with."""

    key: str
    decision: LookupDecision
    now: float


@dataclass(frozen=True)
class Refresh:
    """stale-while-revalidate (RFC 5861 §3): the stale entry ``start`` found was served;
    revalidate it off the caller's path (the runner starts that and goes on at once)."""

    req: FetchRequest
    start: Start  # -> None


Effect = Fetch | Probe | Download | Disk | Wait | Refresh
Flow = Generator[Effect, Any, Any]


def begin(cache: FetchCache, req: FetchRequest, *, offline: bool,
          again: Start | None = None) -> Start:
    """The lookup a cached call begins with. ``again``: the lookup this one repeats (under
    the transfer lock): its decision is logged only when it changed."""
    now = time.time()
    key, decision = cache.lookup(req.url, req.headers, offline=offline, now=now,
                                 scope=req.cache_scope)
    if decision.action is LookupAction.OFFLINE_MISS:
        if not cache.index.available:  # not "nothing stored": nothing could be read
            raise unreadable_index_error(req.url, cache.index.directory)
        raise offline_error(req.url, decision.reason)
    if logger.isEnabledFor(logging.INFO) and (  # ``-v``: every cache decision, once
            again is None or again.key != key or again.decision.action is not decision.action):
        _log_decision(req.url, decision)
    return Start(key, decision, now)


def _log_decision(url: str, decision: LookupDecision) -> None:
    what = decision.action.value.replace("_", " ")
    if decision.action in HITS:
        what += f", age {decision.age:.0f} s" + (", stale" if decision.stale else "")
    logger.info("cache %s: %s%s", what, redact_url(url),
                f" ({decision.reason})" if decision.reason else "")


def offline_error(url: str, reason: str = "not in the cache") -> OfflineError:
    safe = redact_url(url)
    if reason == "nothing stored":
        reason = "not in the cache"
    return OfflineError(f"offline mode: {safe} is {reason or 'not in the cache'}", url=safe)


def unreadable_index_error(url: str, directory: object) -> CacheUnreadableError:
    """Offline, and the cache index cannot be opened at all (unwritable for SQLite's
    write-ahead log, locked, unreadable): what the cache holds is unknown, not missing."""
    safe = redact_url(url)
    return CacheUnreadableError(
        f"offline mode: {safe} cannot be looked up: the cache index in {directory} cannot be "
        "opened (SQLite needs to write beside it, even to read; see the warning logged)",
        url=safe)


def unservable_error(url: str, referred: bool) -> OfflineError:
    """Offline, and the stored body could not be served: a reference whose file was deleted,
    replaced or edited is a miss like any other; anything else failed its check."""
    if referred:
        return offline_error(url, "not in the cache (the downloaded file its entry referred "
                                  "to was deleted or changed)")
    return damaged_error(url)


def damaged_error(url: str) -> CachedBodyDamagedError:
    """Offline, and the stored body failed its seal (or vanished): never served; dropped."""
    safe = redact_url(url)
    return CachedBodyDamagedError(
        f"offline mode: the cached body of {safe} is damaged or missing; it was dropped "
        "(fetch it again online)", url=safe)


# --- bodies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hops:
    """How the body flow follows redirects itself, each hop cached under its own URL (the
    connection's redirect cap and URL policy, as the drivers apply them)."""

    max_redirects: int
    policy: URLPolicy


def serve_body(cache: FetchCache, start: Start, req: FetchRequest) -> Body | None:
    """The stored response for a HIT (None otherwise, or when its blob turned out to be gone).
    A stored error status raises it, as the origin's answer would."""
    decision = start.decision
    entry = decision.entry
    if decision.action not in HITS or entry is None:
        return None
    byte_range = decision.byte_range
    check_size(entry.size if byte_range is None else byte_range.length, req)
    offline = decision.action is LookupAction.OFFLINE_HIT
    referred = offline and cache.blobs.by_reference(entry.sha256)  # the read drops a stale one
    data = cache.read(start.key, entry, start.now)
    if data is None and offline:
        raise unservable_error(req.url, referred)
    if data is not None and decision.stale:
        if decision.action is LookupAction.OFFLINE_HIT:
            logger.warning("offline: serving a stale cached copy of %s", redact_url(req.url))
        else:  # stale-while-revalidate: the response allows it; the refresh is under way
            logger.info("%s: serving a stale cached copy of %s", decision.reason,
                        redact_url(req.url))
    if data is None:
        return None
    return _served(data, entry, req, decision.age, byte_range)


def served_hit(data: bytes, decision: LookupDecision, req: FetchRequest) -> Body:
    """A HIT answered from ``data``, the stored body's bytes, wherever they were read from
    (the memory tier's fast path): the caller's size cap, then ``_served``."""
    entry = decision.entry
    assert entry is not None
    byte_range = decision.byte_range
    check_size(entry.size if byte_range is None else byte_range.length, req)
    return _served(data, entry, req, decision.age, byte_range)


def served_fresh(data: bytes, entry: CacheEntry, req: FetchRequest, age: float) -> Body:
    """``served_hit`` of a whole fresh body at ``age``, the verdict already known."""
    check_size(entry.size, req)
    return _served(data, entry, req, age)


def _served(data: bytes, entry: CacheEntry, req: FetchRequest, age: float,
            byte_range: ByteRange | None = None) -> Body:
    """The stored response as served: its lines, the current ``Age`` (§5.1), and for a Range
    the 206 cut from the stored body (RFC 9110 §14.4)."""
    lines, status = entry.served_lines, entry.status
    sha: str | None = entry.sha256
    if byte_range is not None:
        data = data[byte_range.first:byte_range.last + 1]
        lines, status, sha = partial_lines(lines, byte_range), 206, None
    lines = (*lines, ("Age", age_header(age)))
    if not 200 <= status < 300 and not entry.is_redirect:
        safe = redact_url(req.url)
        raise HTTPStatusError(status, safe, headers=joined(lines))
    return Body(data, status, lines, req.url, sha, from_cache=True, age=int(age))


def _check_cap(entry: CacheEntry, req: FetchRequest) -> None:
    check_size(entry.size, req)


def check_size(size: int, req: FetchRequest) -> None:
    """A stored body over the caller's max_bytes is refused as the network path would be."""
    if req.max_bytes is not None and size > req.max_bytes:
        raise size_exceeded(req.max_bytes, size, redact_url(req.url), media=req.media_limit)


def _conditional(req: FetchRequest, decision: LookupDecision) -> FetchRequest:
    """The request to send: conditional when revalidating. A body is not hashed while it
    streams: the cache's writer hashes what it stores, off the caller's thread."""
    if decision.action is not LookupAction.REVALIDATE and not decision.background:
        return req
    return replace(req, headers={**req.headers, **decision.headers}, accept_not_modified=True)


def is_redirect_answer(body: Body) -> bool:
    """A redirect (followed by the body flow, not the driver): a 3xx with a Location."""
    return body.status in REDIRECT_STATUSES and "Location" in body.headers


def body_flow(
    cache: FetchCache, req: FetchRequest, *, offline: bool, start: Start | None = None,
    hops: Hops | None = None, shared: SharedTier | None = None,
) -> Flow:
    """get_bytes/get_text/get_json through the cache. ``start``: a lookup already made.

    With ``hops`` the flow follows redirects itself: each hop is looked up, fetched and stored
    under its own URL by its own headers, so a redirect is answered from the cache only while
    that redirect response itself is fresh (RFC 9111 §3, §4). Without, the driver follows them.
    ``shared``: the read-only tier asked before any request (``core.shared_tier``).
    """
    hop_req = _hop_by_hop(req) if hops is not None else req
    for hops_done in range(10**6):
        body: Body = yield from _hop_flow(cache, hop_req, offline=offline, start=start,
                                          shared=shared)
        start = None
        if hops is None or not is_redirect_answer(body):
            return body
        hop = next_hop(hop_req.url, body.status, body.headers, hop_req.headers,
                       hops_done=hops_done, follow=True, max_redirects=hops.max_redirects,
                       policy=hops.policy)
        if hop is None:
            return body
        hop_req = replace(hop_req, url=hop.url, headers=hop.headers)
    raise AssertionError("unreachable: next_hop enforces the redirect cap")


def _hop_flow(cache: FetchCache, req: FetchRequest, *, offline: bool,
              start: Start | None = None, shared: SharedTier | None = None) -> Flow:
    """One URL through the cache: served, revalidated or fetched, and stored. A stale hop
    served under stale-while-revalidate (e.g. reached through a stored redirect) is refreshed
    in the background, as the call's first URL is by the runner."""
    if start is None:
        start = begin(cache, req, offline=offline)
        served = serve_body(cache, start, req)
        if served is not None:
            if start.decision.background:
                yield Refresh(req, start)
            return served
    if offline:  # an OFFLINE_HIT whose blob vanished (serve_body raised) never gets here
        raise offline_error(req.url)
    if start.decision.action is LookupAction.BYPASS:  # a Range the cache cannot answer
        bypass: Body = yield Fetch(replace(req, redirect_answers=False, allow_redirects=True))
        return bypass
    if shared is not None and asks_shared_tier(req.url, req.headers, start.decision,
                                               offline=offline):
        taken: Body | None = yield from _body_from_shared(cache, shared, start, req)
        if taken is not None:
            return taken
    entry = start.decision.entry
    sent_at = time.time()
    try:
        body: Body = yield Fetch(_conditional(req, start.decision))
    except FetchError as exc:
        stale = _stale_on_error(cache, start, req, exc, sent_at)
        if stale is None:
            raise
        return stale
    verdict = _verdict(cache, entry, body.status, body.headers, req, sent_at)
    if verdict.action in (ResponseAction.REFRESH, ResponseAction.REFETCH):
        if verdict.action is ResponseAction.REFRESH and verdict.entry is not None:
            refreshed = verdict.entry
            _check_cap(refreshed, req)
            now = time.time()
            data = cache.read(start.key, refreshed, now)
            if data is not None:
                _settle_refresh(cache, start.key, verdict)
                return _served(data, refreshed, req, current_age(refreshed, now))
        cache.invalidate(start.key)
        return (yield from _hop_flow(cache, req, offline=offline))  # now an unconditional MISS
    if verdict.action is ResponseAction.STORE and verdict.entry is not None:
        # a redirect's body is never read: what is stored is its status and headers
        length = (None if is_encoded(body.headers) or is_redirect_answer(body)
                  else header(body.headers, "Content-Length"))
        if is_complete(None, length, len(body.content)):
            backlog = cache.submit_bytes(start.key, verdict.entry, body.content,
                                         body.known_sha256)
            if backlog is not None:
                yield Wait(backlog)  # the writer is behind: let it catch up
    elif verdict.invalidate:
        cache.invalidate(start.key)
    return body


# --- the read-only shared tier --------------------------------------------------------------------


def _shared_lookup(shared: SharedTier, key: str, req: FetchRequest
                   ) -> tuple[CacheEntry, LookupDecision] | None:
    """The tier's entry under the same key, when it may serve this request now."""
    entry = shared.entry(key)
    decision = shared_hit(entry, req.headers, time.time())
    return None if decision is None or entry is None else (entry, decision)


def _body_from_shared(cache: FetchCache, shared: SharedTier, start: Start,
                      req: FetchRequest) -> Flow:
    """The tier's fresh copy, read and checked against its seal, then recorded in the local
    cache (the next hit is local); None for a miss or a damaged body."""
    found: tuple[CacheEntry, LookupDecision] | None = yield Disk(
        lambda: _shared_lookup(shared, start.key, req))
    if found is None:
        return None
    entry, decision = found
    _check_cap(entry, req)
    data: bytes | None = yield Disk(lambda: shared.read(entry))
    if data is None:
        return None
    logger.info("serving %s from the shared cache tier", redact_url(req.url))
    backlog = cache.submit_bytes(start.key, entry, data, entry.sha256)
    if backlog is not None:
        yield Wait(backlog)
    return _served(data, entry, req, decision.age)


def _file_from_shared(cache: FetchCache, shared: SharedTier, start: Start, req: FetchRequest,
                      target: Path, wanted: str | None) -> Flow:
    """The file from the tier (None for a miss): its entry under the same key, fresh and
    fitting, copied and checked against its seal, then recorded in the local cache; else,
    with ``expected_sha256``, its blob of that name (from any URL; not recorded: there is no
    entry for this URL to record)."""
    if asks_shared_tier(req.url, req.headers, start.decision, offline=False):
        found: tuple[CacheEntry, LookupDecision] | None = yield Disk(
            lambda: _shared_lookup(shared, start.key, req))
        entry = found[0] if found is not None else None
        if entry is not None and _fits(entry, req):
            _check_cap(entry, req)
            if (yield Disk(lambda: _copy_recorded(cache, shared, start.key, entry, target))):
                logger.info("copied %s from the shared cache tier", redact_url(req.url))
                return _published(target, entry, req.url)
    if wanted and not req.cache_scope:  # as the local store: only in the shared namespace
        size: int | None = yield Disk(lambda: shared.blob_size(wanted))
        if size is not None and req.expected_size in (None, size):
            check_size(size, req)
            if (yield Disk(lambda: shared.copy_to(wanted, shared.seal_of(wanted), target))):
                logger.info("copied %s from the shared cache tier by sha256 %s…",
                            redact_url(req.url), wanted[:12])
                return DownloadResult(target, size, wanted, 200, {}, req.url, from_cache=True)
    return None


def _copy_recorded(cache: FetchCache, shared: SharedTier, key: str, entry: CacheEntry,
                   target: Path) -> bool:
    """Copy the tier's body to ``target`` (checked by its seal) and record it locally."""
    if not shared.copy_to(entry.sha256, entry.seal, target):
        return False
    if entry.seal:
        remember_seal(entry.sha256, entry.seal)  # the copy matched it: no second read
    cache.store_file(key, entry, target, entry.sha256, entry.size)
    return True


def revalidation_flow(cache: FetchCache, req: FetchRequest) -> Flow:
    """stale-while-revalidate (RFC 5861 §3): refresh the stale entry of ``req`` that was just
    served, as it is stored now: nothing to do when another refresh made it fresh meanwhile
    (a call that found it stale just before that refresh ended asks for a second one)."""
    hop = _hop_by_hop(req)
    latest = begin(cache, hop, offline=False)
    if latest.decision.action is LookupAction.HIT and not latest.decision.background:
        return None
    body: Body = yield from _hop_flow(cache, hop, offline=False, start=latest)
    return body


def _hop_by_hop(req: FetchRequest) -> FetchRequest:
    """The request for one hop: a redirect comes back as the answer, the driver follows none.
    (``dataclasses.replace``, whose ``__init__`` only fills ``__dict__``, without its walk
    over every field: once per cached body call.)"""
    hop = object.__new__(FetchRequest)
    hop.__dict__.update(req.__dict__, redirect_answers=True, allow_redirects=False)
    return hop


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
    cache: FetchCache, start: Start, req: FetchRequest, exc: FetchError, sent_at: float
) -> Body | None:
    """stale-if-error: the stored copy when the origin is unreachable or answers 5xx. An error
    status the cache may store (a 404 with max-age, §3) is stored, then raised."""
    entry = start.decision.entry
    if isinstance(exc, HTTPStatusError):
        verdict = _verdict(cache, entry, exc.status, exc.headers, req, sent_at)
        if verdict.action is ResponseAction.STORE and verdict.entry is not None:
            cache.submit_bytes(start.key, verdict.entry, b"", EMPTY_SHA256)
            return None
        if verdict.invalidate:
            cache.invalidate(start.key)
        if verdict.action is not ResponseAction.SERVE_STALE:
            return None
    elif not (isinstance(exc, (FetchConnectionError, FetchTimeoutError)) and entry is not None
              and stale_if_error_allowed(entry, time.time(), req.headers)):
        return None
    if entry is None:
        return None
    _check_cap(entry, req)
    now = time.time()
    data = cache.read(start.key, entry, now)
    if data is None:
        return None
    logger.warning("serving a stale cached copy of %s: %s", redact_url(req.url), exc)
    return _served(data, entry, req, current_age(entry, now))


def _may_serve_stale(cache: FetchCache, start: Start, req: FetchRequest, exc: FetchError) -> bool:
    entry = start.decision.entry
    assert entry is not None
    if isinstance(exc, HTTPStatusError):
        verdict = _verdict(cache, entry, exc.status, exc.headers, req, start.now)
        if verdict.invalidate:
            cache.invalidate(start.key)
        return bool(verdict.action is ResponseAction.SERVE_STALE)
    unreachable = isinstance(exc, (FetchConnectionError, FetchTimeoutError))
    return unreachable and stale_if_error_allowed(entry, time.time(), req.headers)


# --- files --------------------------------------------------------------------------------------


def _fits(entry: CacheEntry | None, req: FetchRequest) -> bool:
    """Whether a stored body satisfies the caller's expected_sha256 / expected_size. Only a
    2xx body is a file: a stored redirect or error status (the body flow's) never is."""
    if entry is None or not 200 <= entry.status < 300:
        return False
    sha_ok = req.expected_sha256 is None or req.expected_sha256.lower() == entry.sha256
    return sha_ok and (req.expected_size is None or req.expected_size == entry.size)


def _published(target: Path, entry: CacheEntry, url: str) -> DownloadResult:
    return DownloadResult(target, entry.size, entry.sha256, 200, dict(entry.headers), url,
                          from_cache=True)


def _through_stored_redirects(
    cache: FetchCache, req: FetchRequest, start: Start, *, offline: bool, hops: Hops
) -> tuple[FetchRequest, Start]:
    """A usable stored redirect (the body flow's, fresh or offline) leads to the stored
    response of its target: the request for the URL the redirects end at, and its lookup."""
    for hops_done in range(hops.max_redirects + 1):
        entry = start.decision.entry
        if start.decision.action not in HITS or entry is None or not entry.is_redirect:
            break
        hop = next_hop(req.url, entry.status, entry.headers, req.headers, hops_done=hops_done,
                       follow=True, max_redirects=hops.max_redirects, policy=hops.policy)
        if hop is None:
            break
        req = replace(req, url=hop.url, headers=hop.headers)
        start = begin(cache, req, offline=offline)
    return req, start


def download_flow(cache: FetchCache, req: FetchRequest, target: Path, *, offline: bool,
                  hops: Hops | None = None, shared: SharedTier | None = None) -> Flow:
    """download_file through the cache: a hit is copied to the target, zero requests. With
    ``hops``, a usable stored redirect is followed to its target's stored response; with
    ``shared``, the read-only tier is asked before any request. A transfer holds the
    machine-wide lock of its URL (``transfer_lock``): callers that wanted the same URL
    meanwhile, for any target, are then served from what it stored."""
    served, req, start = yield from _file_from_cache(cache, req, target, offline=offline,
                                                     hops=hops, shared=shared)
    if served is not None:
        return served
    name = transfer_lock.lock_name(start.key, req.expected_sha256)
    held: transfer_lock.Held | None = yield Disk(
        lambda: transfer_lock.hold(cache.directory, name, req.deadline, req.url, target))
    try:
        if held is not None:  # another caller may have stored it since the lookup
            served, req, start = yield from _file_from_cache(
                cache, req, target, offline=offline, hops=hops, revalidate=held.waited,
                shared=shared, again=start)
            if served is not None:
                return served
        if held is not None and held.orphan is not None:  # its holder died: resume its partial
            resumed = yield from _resume_orphan(cache, req, start, held.orphan, target)
            if resumed is not None:
                return resumed
        result: DownloadResult = yield from _transfer(cache, req, start, target)
        return result
    finally:
        if held is not None:
            held.release()


def _file_from_cache(cache: FetchCache, req: FetchRequest, target: Path, *, offline: bool,
                     hops: Hops | None, revalidate: bool = True,
                     shared: SharedTier | None = None, again: Start | None = None) -> Flow:
    """Serve the file from the cache when it can be: (result or None, request, lookup).
    Without ``revalidate``, only a stored copy that needs no request is served. ``again``:
    the lookup of the first try, when this is the second (its decision is not logged twice)."""
    wanted = req.expected_sha256.lower() if req.expected_sha256 else None
    # same bytes from any URL: only in the shared namespace (a restricting policy never gets
    # bytes that a connection allowed more fetched, not even by naming their sha256)
    size = cache.blob_size(wanted) if wanted and not req.cache_scope else None
    if size is not None:
        check_size(size, req)
    if wanted and size is not None and req.expected_size in (None, size) and (
        yield Disk(lambda: cache.copy_blob_to(wanted, target))
    ):
        logger.info("cache hit by sha256 %s…: %s", wanted[:12], redact_url(req.url))
        return DownloadResult(target, size, wanted, 200, {}, req.url, from_cache=True), req, None
    try:
        start = begin(cache, req, offline=offline, again=again)
    except OfflineError:
        if size is not None:  # the copy from another URL's blob failed its check
            raise damaged_error(req.url) from None
        raise
    if hops is not None:
        req, start = _through_stored_redirects(cache, req, start, offline=offline, hops=hops)
    entry = start.decision.entry
    if _fits(entry, req) and entry is not None and start.decision.action in HITS:
        referred = offline and cache.blobs.by_reference(entry.sha256)
        if (yield from _copy(cache, start, entry, target, req)):
            return _published(target, entry, req.url), req, start
        if offline:
            raise unservable_error(req.url, referred)
    if shared is not None and not offline:
        taken = yield from _file_from_shared(cache, shared, start, req, target, wanted)
        if taken is not None:
            return taken, req, start
    if _fits(entry, req) and entry is not None and revalidate and (
        start.decision.action is LookupAction.REVALIDATE
    ):
        refreshed = yield from _revalidate_file(cache, start, req, target)
        if refreshed is not None:
            return refreshed, req, start
    if offline:
        if entry is not None and not _fits(entry, req):
            safe = redact_url(req.url)
            raise ChecksumMismatchError(
                f"offline mode: the cached copy of {safe} does not match the expected "
                "sha256/size", url=safe)
        raise offline_error(req.url)
    return None, req, start


def _resume_orphan(cache: FetchCache, req: FetchRequest, start: Start, orphan: Path,
                   target: Path) -> Flow:
    """Finish a dead holder's transfer into its own target (resumed from the partial it left),
    then publish the stored file at ``target``; None when it could not be copied from the
    cache (the caller then downloads to ``target`` itself)."""
    logger.info("taking over an interrupted download of %s", redact_url(req.url))
    result: DownloadResult = yield from _transfer(cache, req, start, orphan)
    sha = result.sha256
    if sha and (yield Disk(lambda: cache.copy_blob_to(sha, target))):
        return replace(result, path=target)
    return None


def _transfer(cache: FetchCache, req: FetchRequest, start: Start, target: Path) -> Flow:
    """Download the file (serving the stored copy on an error that allows it), then store it."""
    entry = start.decision.entry
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
        logger.info("cache stored: %s (sha256 %s…)", redact_url(req.url), sha[:12])
    elif verdict.invalidate:
        cache.invalidate(start.key)
