"""HTTP cache decisions (RFC 9111), pure: keys, what may be stored, freshness, and verdicts.

Modelled on hishel: the storage layer (diskcache index, blob store) does the I/O and asks this
module what to do. Only GET responses are cached, and only complete 200 bodies are stored.

Flow for one GET: ``on_lookup(stored, ...)`` says HIT / REVALIDATE / MISS (or, offline,
OFFLINE_HIT / OFFLINE_MISS); after a network answer ``on_response(lookup.entry, ...)`` says
STORE / REFRESH / SERVE_STALE / PASS / REFETCH. Pass ``lookup.entry`` (not the raw stored entry)
to ``on_response``: it is None when the stored entry must not be shown to this caller.

Privacy (faults S8, S10): the cache is shared by every caller of a process, so a response to a
request carrying credentials (``core.tenancy``: Authorization, Proxy-Authorization, Cookie,
X-Api-Key, URL userinfo — whatever the response's Cache-Control says, stricter than §3.5), or
marked ``Cache-Control: private``, is stored with ``private=True`` and only served to callers
that opt in (``caller_private_ok``); to anyone else it is a MISS. The caller keys such entries
by the credentials (a keyed hash in ``scope``), so one tenant never reads another's.

Vary: the index keeps one variant per URL, stored under ``cache_key(url)``. The entry records the
request values of the Vary-named fields; a request with other values is a MISS and its response
replaces the stored variant. ``Vary: *`` responses are not stored (they can never match, §4.1).

Timestamps are unix seconds (floats); ``now`` is always passed in, never read from a clock.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from email.utils import parsedate_to_datetime
from functools import lru_cache
from json.encoder import encode_basestring as _json_string  # what json.dumps writes for a str
from typing import Any, TypeVar
from urllib.parse import urlunsplit

from ..errors import InvalidURLError
from .body import header
from .tenancy import CREDENTIAL_FIELDS
from .urls import URL_CACHE_SIZE, parse_problem, redact_url, split_url

#: Response header fields kept in the index (lowercase). Everything else is dropped.
KEPT_HEADERS = frozenset(
    {
        "age",
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-language",
        "content-length",
        "content-type",
        "date",
        "etag",
        "expires",
        "last-modified",
        "vary",
    }
)
CACHEABLE_STATUSES = frozenset({200})
STALE_ON_ERROR_STATUSES = frozenset({500, 502, 503, 504})
#: A 404/410 means the stored representation is gone: drop it rather than replay it later.
INVALIDATING_STATUSES = frozenset({404, 410})
HEURISTIC_FRACTION = 0.1  # §4.2.2: 10% of the time since Last-Modified ...
HEURISTIC_CAP = 86400.0  # ... capped at one day

_DEFAULT_PORTS = {"http": 80, "https": 443}
# §3.2: a 304 never rewrites the fields that describe the stored body itself.
_NOT_UPDATED_BY_304 = frozenset({"content-length", "content-encoding"})
_DELTA_SECONDS_CAP = 2**31  # §1.2.2
_DIGITS = re.compile(r"[0-9]+")
_ESCAPE = re.compile(r"\\(.)")

_T = TypeVar("_T")


# --- keys ---------------------------------------------------------------------------------------


@lru_cache(maxsize=URL_CACHE_SIZE)
def normalize_url(url: str) -> str:
    """Scheme and host lowercased; default port, userinfo and fragment dropped; path and query
    verbatim."""
    try:
        parts, hostname, port = split_url(url)  # the parse the URL check already made
    except ValueError as exc:
        problem = parse_problem(exc)
    else:
        problem = ""
    if problem:  # raised out here: urllib's error (it may quote a password) is not its context
        raise InvalidURLError(f"Invalid HTTP URL: {problem}: {redact_url(url)}",
                              url=redact_url(url))
    scheme = parts.scheme.lower()
    host = hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    # userinfo is dropped: credentials enter a key only as the caller's keyed hash (scope)
    return urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


def cache_key(
    url: str, vary_headers: Mapping[str, str] | None = None, *, scope: str = ""
) -> str:
    """The sha256 hex of the normalised URL plus the Vary-named request values.

    Hashed so the index never holds signed query strings or userinfo in its keys. ``scope``
    (``URLPolicy.cache_scope``) keeps entries recorded under a restricting URL policy apart:
    a stored body is only served to a caller whose policy was checked when it was fetched.
    """
    fields = sorted((name.lower(), _normalize_field(v)) for name, v in (vary_headers or {}).items())
    if fields:
        parts: list[Any] = [normalize_url(url), fields, *([scope] if scope else [])]
        text = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    else:  # the same text as above, built without the JSON encoder's setup (every lookup)
        text = f"[{_json_string(normalize_url(url))},[]" + (
            f",{_json_string(scope)}]" if scope else "]")
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _normalize_field(value: str) -> str:
    # §4.1 lets a cache normalise whitespace before comparing Vary-named field values.
    return re.sub(r"\s*,\s*", ", ", " ".join(value.split()))


def _field_names(value: str | None) -> list[str]:
    return [n for n in (part.strip().lower() for part in (value or "").split(",")) if n]


def vary_values(
    response_headers: Mapping[str, str], request_headers: Mapping[str, str]
) -> dict[str, str] | None:
    """The request's values ("" when absent) of the fields the response's Vary names.

    None for ``Vary: *``.
    """
    names = _field_names(header(response_headers, "Vary"))
    if "*" in names:
        return None
    # Credential fields are never recorded: the key already binds an entry to them.
    return {name: _normalize_field(header(request_headers, name) or "") for name in names
            if name not in CREDENTIAL_FIELDS}


def vary_matches(entry: CacheEntry, request_headers: Mapping[str, str]) -> bool:
    """Whether this request selects the stored variant (§4.1)."""
    return all(
        _normalize_field(header(request_headers, name) or "") == value
        for name, value in entry.vary.items()
    )


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The KEPT_HEADERS subset of ``headers``, names lowercased."""
    return {k.lower(): v for k, v in headers.items() if k.lower() in KEPT_HEADERS}


# --- the stored entry ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CacheEntry:
    """What the index stores per key. ``headers`` names are lowercase.

    A STORE template has ``sha256 == ""`` and ``size == -1`` until the caller fills them in with
    ``with_body`` after hashing the complete body; templates are never served.
    """

    url: str
    headers: dict[str, str]
    stored_at: float  # when this entry was written or last refreshed
    request_time: float  # when the request that produced it was sent (§4.2.3)
    response_time: float  # when its response was received (§4.2.3)
    status: int = 200
    sha256: str = ""
    size: int = -1
    vary: dict[str, str] = field(default_factory=dict)
    private: bool = False
    #: xxh3-128 of the body (``cache/seal.py``), checked on every read; "" for older entries.
    seal: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", {k.lower(): v for k, v in self.headers.items()})
        object.__setattr__(self, "vary", {k.lower(): v for k, v in self.vary.items()})

    @property
    def etag(self) -> str | None:
        return self.headers.get("etag")

    @property
    def last_modified(self) -> str | None:
        return self.headers.get("last-modified")

    @property
    def cache_control(self) -> dict[str, str | None]:
        return parse_cache_control(self.headers.get("cache-control"))

    @property
    def has_body(self) -> bool:
        return bool(self.sha256) and self.size >= 0

    def with_body(self, sha256: str, size: int, seal: str = "") -> CacheEntry:
        return replace(self, sha256=sha256, size=size, seal=seal)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; ``from_dict`` reverses it. (What ``dataclasses.asdict``
        returns, without its recursive deep copy of every value: ~60 us an entry.)"""
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        record["headers"], record["vary"] = dict(self.headers), dict(self.vary)
        return record

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CacheEntry:
        """Rebuild an entry; ValueError on a malformed record (the index treats it as corrupt)."""
        return cls(
            url=_get(data, "url", str),
            headers=_str_dict(_get(data, "headers", dict)),
            stored_at=_get(data, "stored_at", float),
            request_time=_get(data, "request_time", float),
            response_time=_get(data, "response_time", float),
            status=_get(data, "status", int, 200),
            sha256=_get(data, "sha256", str, ""),
            size=_get(data, "size", int, -1),
            vary=_str_dict(_get(data, "vary", dict, {})),
            private=_get(data, "private", bool, False),
            seal=_get(data, "seal", str, ""),
        )


def _get(data: Mapping[str, Any], key: str, kind: type[_T], default: _T | None = None) -> _T:
    value = data.get(key, default)
    if value is None:
        raise ValueError(f"cache entry lacks {key!r}")
    if kind is float and type(value) is int:
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"cache entry field {key!r} is not a {kind.__name__}")
    return value


def _str_dict(value: dict[Any, Any]) -> dict[str, str]:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("cache entry mapping holds a non-string")
    return dict(value)


# --- Cache-Control, dates, numbers --------------------------------------------------------------


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """Directives by lowercase name; quoted values unquoted; the first of duplicates wins."""
    directives: dict[str, str | None] = {}
    for item in _split_outside_quotes(value or ""):
        name, eq, raw = item.partition("=")
        name = name.strip().lower()
        if name and name not in directives:
            directives[name] = _unquote(raw.strip()) if eq else None
    return directives


def _split_outside_quotes(value: str) -> list[str]:
    if '"' not in value:
        return value.split(",")  # the common case: no quoted string can hide a comma
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append("".join(current))
            current = []
            continue
        current.append(ch)
    items.append("".join(current))
    return items


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return _ESCAPE.sub(r"\1", raw[1:-1])
    return raw


def _seconds(directives: Mapping[str, str | None], name: str) -> float | None:
    """A delta-seconds directive: None when absent, 0 when invalid (§4.2.1: treat as stale)."""
    if name not in directives:
        return None
    raw = (directives[name] or "").strip()
    return float(min(int(raw), _DELTA_SECONDS_CAP)) if _DIGITS.fullmatch(raw) else 0.0


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _date_value(entry: CacheEntry) -> float:
    # RFC 9110 §6.6.1: without a (valid) Date, the time of receipt stands in for it.
    date = _http_date(entry.headers.get("date"))
    return entry.response_time if date is None else date


def _age_value(value: str | None) -> float:
    # §5.1: use the first member of a list; ignore an invalid value.
    first = (value or "").split(",")[0].strip()
    return float(int(first)) if _DIGITS.fullmatch(first) else 0.0


# --- storability --------------------------------------------------------------------------------


def _is_private(request_headers: Mapping[str, str], response_cc: Mapping[str, str | None]) -> bool:
    # Credentials make a response private whatever it says: public, s-maxage and
    # must-revalidate (§3.5) do not make one tenant's response another's here.
    if "private" in response_cc:
        return True
    return any(name.lower() in CREDENTIAL_FIELDS for name in request_headers)


def is_storable(
    status: int,
    request_headers: Mapping[str, str],
    response_headers: Mapping[str, str],
    *,
    shared_ok_for_private: bool,
) -> tuple[bool, bool]:
    """(storable, private) for a GET response (§3).

    ``shared_ok_for_private``: whether this cache keeps private responses at all (flagged and
    served only to callers that opt in). When False a private response is not storable.
    """
    storable, private, _ = _storability(status, request_headers, response_headers,
                                       shared_ok_for_private=shared_ok_for_private)
    return storable, private


def _storability(
    status: int,
    request_headers: Mapping[str, str],
    response_headers: Mapping[str, str],
    *,
    shared_ok_for_private: bool,
) -> tuple[bool, bool, dict[str, str] | None]:
    """``is_storable`` plus the request's values of the Vary-named fields (None for ``*``)."""
    request_cc = parse_cache_control(header(request_headers, "Cache-Control"))
    response_cc = parse_cache_control(header(response_headers, "Cache-Control"))
    private = _is_private(request_headers, response_cc)
    if status not in CACHEABLE_STATUSES:
        return False, private, None
    if "no-store" in request_cc or "no-store" in response_cc:
        return False, private, None
    vary = vary_values(response_headers, request_headers)
    if vary is None:
        return False, private, None
    return (shared_ok_for_private or not private), private, vary


# --- freshness ----------------------------------------------------------------------------------


def freshness_lifetime(entry: CacheEntry) -> float:
    """Seconds the entry is fresh for, measured from its origin (§4.2.1); 0 when unknown."""
    cc = entry.cache_control
    # s-maxage applies to shared caches; a private entry is served as if from a private cache.
    explicit = None if entry.private else _seconds(cc, "s-maxage")
    if explicit is None:
        explicit = _seconds(cc, "max-age")
    if explicit is not None:
        return explicit
    if "expires" in entry.headers:
        expires = _http_date(entry.headers["expires"])
        # §5.3: an invalid Expires (e.g. "0") means already expired.
        return 0.0 if expires is None else max(0.0, expires - _date_value(entry))
    return _heuristic_lifetime(entry)


def _heuristic_lifetime(entry: CacheEntry) -> float:
    # §4.2.2: only with Last-Modified; 10% of the interval since then, capped at a day.
    last_modified = _http_date(entry.last_modified)
    if last_modified is None:
        return 0.0
    interval = max(0.0, _date_value(entry) - last_modified)
    return min(HEURISTIC_CAP, interval * HEURISTIC_FRACTION)


def current_age(entry: CacheEntry, now: float) -> float:
    """The entry's age at ``now`` (§4.2.3)."""
    date = _http_date(entry.headers.get("date"))
    apparent_age = 0.0 if date is None else max(0.0, entry.response_time - date)
    response_delay = max(0.0, entry.response_time - entry.request_time)
    corrected_age_value = _age_value(entry.headers.get("age")) + response_delay
    resident_time = max(0.0, now - entry.response_time)
    return max(apparent_age, corrected_age_value) + resident_time


def is_fresh(entry: CacheEntry, now: float) -> bool:
    """Freshness arithmetic only (§4.2); no-cache is applied by ``on_lookup``."""
    return freshness_lifetime(entry) > current_age(entry, now)


def _must_revalidate(entry: CacheEntry) -> bool:
    # §5.2.2.2 must-revalidate; §5.2.2.8 proxy-revalidate and §5.2.2.10 s-maxage apply to
    # shared caches, i.e. to every non-private entry here.
    cc = entry.cache_control
    shared = not entry.private and ("proxy-revalidate" in cc or "s-maxage" in cc)
    return "must-revalidate" in cc or shared


def stale_if_error_allowed(entry: CacheEntry, now: float | None = None) -> bool:
    """Whether a stored response may stand in for a 5xx or failed fetch (RFC 5861, §4.2.4).

    Allowed unless the response forbids serving it stale: no-store, no-cache, must-revalidate
    (or proxy-revalidate / s-maxage for a shared entry). An explicit ``stale-if-error=N``
    additionally bounds the staleness to N seconds when ``now`` is given.
    """
    cc = entry.cache_control
    if "no-store" in cc or "no-cache" in cc or _must_revalidate(entry):
        return False
    limit = _seconds(cc, "stale-if-error")
    if limit is None or now is None:
        return True
    return current_age(entry, now) - freshness_lifetime(entry) <= limit


def conditional_headers(entry: CacheEntry) -> dict[str, str]:
    """If-None-Match / If-Modified-Since from the stored validators (§4.3.1)."""
    headers: dict[str, str] = {}
    if entry.etag:
        headers["If-None-Match"] = entry.etag
    if entry.last_modified:
        headers["If-Modified-Since"] = entry.last_modified
    return headers


# --- lookup -------------------------------------------------------------------------------------


class LookupAction(enum.Enum):
    MISS = "miss"  # go to the network without conditional headers
    HIT = "hit"  # serve the stored blob; no request at all
    REVALIDATE = "revalidate"  # send ``headers`` (conditional), then call on_response
    OFFLINE_HIT = "offline_hit"  # offline: serve the stored blob, fresh or not
    OFFLINE_MISS = "offline_miss"  # offline, nothing usable stored: raise OfflineError


@dataclass(frozen=True)
class LookupDecision:
    action: LookupAction
    entry: CacheEntry | None = None  # the stored entry this caller may use; pass to on_response
    headers: dict[str, str] = field(default_factory=dict)  # conditional headers for REVALIDATE
    stale: bool = False  # OFFLINE_HIT of a stale entry (worth a log line)
    reason: str = ""


def _unusable_reason(
    entry: CacheEntry, request_headers: Mapping[str, str], caller_private_ok: bool
) -> str | None:
    if not entry.has_body or entry.status not in CACHEABLE_STATUSES:
        return "stored entry has no complete body"
    if entry.private and not caller_private_ok:
        return "stored entry is private"
    if not vary_matches(entry, request_headers):
        return "stored variant does not match Vary"
    return None


def _fresh_enough(entry: CacheEntry, request_cc: Mapping[str, str | None], now: float) -> bool:
    """Whether the entry may be served without contacting the origin (§4.2, §5.2.1)."""
    if "no-cache" in request_cc or "no-cache" in entry.cache_control:
        return False
    age = current_age(entry, now)
    max_age = _seconds(request_cc, "max-age")
    # max-age=0 is the common "revalidate" idiom; treat it like no-cache even at age 0.
    if max_age is not None and (max_age == 0 or age > max_age):
        return False
    lifetime = freshness_lifetime(entry)
    if lifetime > age + (_seconds(request_cc, "min-fresh") or 0.0):
        return True
    if "max-stale" not in request_cc or _must_revalidate(entry):
        return False
    max_stale = _seconds(request_cc, "max-stale")
    return request_cc["max-stale"] is None or age - lifetime <= (max_stale or 0.0)


def on_lookup(
    entry: CacheEntry | None,
    request_headers: Mapping[str, str],
    now: float,
    *,
    offline: bool,
    caller_private_ok: bool,
) -> LookupDecision:
    """What to do for a GET before any request is sent.

    Offline mode serves whatever usable entry is stored, fresh or stale, even under
    must-revalidate: offline is the caller's explicit choice (record once, replay).
    """
    reason = (
        "nothing stored"
        if entry is None
        else _unusable_reason(entry, request_headers, caller_private_ok)
    )
    if entry is None or reason is not None:
        return LookupDecision(
            LookupAction.OFFLINE_MISS if offline else LookupAction.MISS, reason=reason or ""
        )
    if offline:
        stale = not is_fresh(entry, now)
        return LookupDecision(LookupAction.OFFLINE_HIT, entry, stale=stale, reason="offline")
    request_cc = parse_cache_control(header(request_headers, "Cache-Control"))
    if "no-store" in request_cc:
        return LookupDecision(LookupAction.MISS, entry, reason="request no-store")
    if _fresh_enough(entry, request_cc, now):
        return LookupDecision(LookupAction.HIT, entry, reason="fresh")
    conditional = conditional_headers(entry)
    if conditional:
        return LookupDecision(LookupAction.REVALIDATE, entry, conditional, reason="stale")
    return LookupDecision(LookupAction.MISS, entry, reason="stale without validators")


# --- response -----------------------------------------------------------------------------------


class ResponseAction(enum.Enum):
    STORE = "store"  # serve the body; store ``entry.with_body(sha256, size)`` once complete
    REFRESH = "refresh"  # 304: serve the stored blob; write ``entry`` (updated metadata)
    SERVE_STALE = "serve_stale"  # 5xx: serve the stored blob instead (log a WARNING)
    PASS = "pass"  # handle the response as if there were no cache (body or status error)
    REFETCH = "refetch"  # 304 that matches nothing stored: repeat the GET unconditionally


@dataclass(frozen=True)
class ResponseDecision:
    action: ResponseAction
    entry: CacheEntry | None = None
    invalidate: bool = False  # drop the stored entry for this key (after serving, for REFRESH)
    reason: str = ""


def _opaque_tag(etag: str) -> str:
    return etag.strip().removeprefix("W/")


def _validators_match(entry: CacheEntry, response_headers: Mapping[str, str]) -> bool:
    # §4.3.4: a 304 updates the stored response its validator selects; none selected, no update.
    etag = header(response_headers, "ETag")
    if etag:
        return entry.etag is not None and _opaque_tag(entry.etag) == _opaque_tag(etag)
    last_modified = _http_date(header(response_headers, "Last-Modified"))
    stored = _http_date(entry.last_modified)
    return last_modified is None or stored is None or last_modified == stored


def _merge_304(stored: Mapping[str, str], response_headers: Mapping[str, str]) -> dict[str, str]:
    # §3.2: the 304's fields replace the stored ones. The old Date and Age are dropped too: they
    # belong to the old response and would otherwise age the refreshed entry from the start.
    merged = {k: v for k, v in stored.items() if k not in ("date", "age")}
    fresh = kept_headers(response_headers)
    merged.update({k: v for k, v in fresh.items() if k not in _NOT_UPDATED_BY_304})
    return merged


def _on_not_modified(
    entry: CacheEntry | None,
    response_headers: Mapping[str, str],
    request_headers: Mapping[str, str],
    now: float,
    request_time: float,
    store_private: bool,
) -> ResponseDecision:
    if entry is None:
        return ResponseDecision(ResponseAction.REFETCH, reason="304 with nothing stored")
    if not _validators_match(entry, response_headers):
        return ResponseDecision(
            ResponseAction.REFETCH,
            invalidate=True,
            reason="304 validators do not match the stored entry",
        )
    headers = _merge_304(entry.headers, response_headers)
    storable, private = is_storable(
        200, request_headers, headers, shared_ok_for_private=store_private
    )
    updated = replace(
        entry,
        headers=headers,
        stored_at=now,
        request_time=request_time,
        response_time=now,
        private=entry.private or private,
    )
    reason = "not modified" if storable else "not modified; no longer storable"
    return ResponseDecision(ResponseAction.REFRESH, updated, invalidate=not storable, reason=reason)


def on_response(
    entry: CacheEntry | None,
    status: int,
    response_headers: Mapping[str, str],
    request_headers: Mapping[str, str],
    now: float,
    request_time: float,
    *,
    url: str,
    store_private: bool = True,
) -> ResponseDecision:
    """What a GET's response means for the cache. ``entry`` is ``LookupDecision.entry``.

    ``now`` is when the response headers arrived; ``request_time`` when the request was sent.
    A 200 that is not storable, and a 404/410, invalidate the stored entry: it is superseded.
    """
    if status == 304:
        return _on_not_modified(
            entry, response_headers, request_headers, now, request_time, store_private
        )
    if status in CACHEABLE_STATUSES:
        storable, private, vary = _storability(
            status, request_headers, response_headers, shared_ok_for_private=store_private
        )
        if not storable:
            return ResponseDecision(
                ResponseAction.PASS, invalidate=entry is not None, reason="response not storable"
            )
        template = CacheEntry(
            url=url,
            headers=kept_headers(response_headers),
            stored_at=now,
            request_time=request_time,
            response_time=now,
            status=status,
            vary=vary or {},
            private=private,
        )
        return ResponseDecision(ResponseAction.STORE, template, reason="storable")
    if (
        entry is not None
        and status in STALE_ON_ERROR_STATUSES
        and stale_if_error_allowed(entry, now)
    ):
        return ResponseDecision(ResponseAction.SERVE_STALE, entry, reason=f"HTTP {status}")
    invalidate = entry is not None and status in INVALIDATING_STATUSES
    return ResponseDecision(ResponseAction.PASS, invalidate=invalidate, reason=f"HTTP {status}")


# --- completeness -------------------------------------------------------------------------------


def is_complete(entry_size: int | None, content_length: str | None, received: int) -> bool:
    """Whether ``received`` bytes are the whole body: store only complete bodies.

    ``entry_size`` is the size the body must have (expected_size), if known. Pass
    ``content_length`` only when it counts the bytes received (no content decoding applied).
    With neither, there is nothing to compare and the body counts as complete.
    """
    if received < 0 or (entry_size is not None and received != entry_size):
        return False
    if content_length is None:
        return True
    text = content_length.strip()
    return _DIGITS.fullmatch(text) is not None and int(text) == received


__all__ = [
    "CACHEABLE_STATUSES",
    "HEURISTIC_CAP",
    "HEURISTIC_FRACTION",
    "INVALIDATING_STATUSES",
    "KEPT_HEADERS",
    "STALE_ON_ERROR_STATUSES",
    "CacheEntry",
    "LookupAction",
    "LookupDecision",
    "ResponseAction",
    "ResponseDecision",
    "cache_key",
    "conditional_headers",
    "current_age",
    "freshness_lifetime",
    "is_complete",
    "is_fresh",
    "is_storable",
    "kept_headers",
    "normalize_url",
    "on_lookup",
    "on_response",
    "parse_cache_control",
    "stale_if_error_allowed",
    "vary_matches",
    "vary_values",
]
