"""HTTP cache decisions (RFC 9111), pure: keys, what may be stored, freshness, and verdicts.

Modelled on hishel: the storage layer (diskcache index, blob store) does the I/O and asks this
module what to do. Only GET responses are cached: complete bodies of the heuristically
cacheable statuses (RFC 9110 §15.1: 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501),
and of any other final status with explicit freshness, each under its own URL: a redirect is
stored as a redirect (its body is never read, an empty one is stored), an error status as an
empty body (served as the same error). Every end-to-end header line is kept (§3.1).

Flow for one GET: ``on_lookup(stored, ...)`` says HIT / REVALIDATE / MISS (or, offline,
OFFLINE_HIT / OFFLINE_MISS; BYPASS for a Range it cannot answer); after a network answer
``on_response(lookup.entry, ...)`` says
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property, lru_cache
from json.encoder import encode_basestring as _json_string  # what json.dumps writes for a str
from typing import Any, TypeVar
from urllib.parse import urlunsplit

from ..errors import InvalidURLError
from .body import header
from .cache_range import ByteRange, if_range_holds, parse_range
from .header_fields import HOP_BY_HOP, Fields, replace_lines
from .http_dates import parse_http_date
from .tenancy import is_credential_field
from .urls import FORBIDDEN_CHARACTERS, URL_CACHE_SIZE, checked_split, origin_prefix

#: RFC 9110 §15.1: statuses a cache may store with heuristic freshness (§4.2.2).
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
#: Kept for callers of the old name: the statuses stored without explicit freshness.
CACHEABLE_STATUSES = HEURISTIC_STATUSES
#: Final statuses this cache understands (§3: a response is storable only if its status is
#: understood); any of them is stored when the response gives explicit freshness. 206 (this
#: cache keeps whole bodies only) and 304 (an answer about a stored response) never are.
UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 307, 308,
     400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417,
     421, 422, 426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505}
)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
STALE_ON_ERROR_STATUSES = frozenset({500, 502, 503, 504})
#: A 404/410 means the stored representation is gone: drop it rather than replay it later.
INVALIDATING_STATUSES = frozenset({404, 410})
# A new answer of these, not storable, replaces (drops) what is stored.
_SUPERSEDING_STATUSES = frozenset({200, 203, 204}) | INVALIDATING_STATUSES
HEURISTIC_FRACTION = 0.1  # §4.2.2: 10% of the time since Last-Modified ...
HEURISTIC_CAP = 86400.0  # ... capped at one day

_DEFAULT_PORTS = {"http": 80, "https": 443}
# §3.2: a 304 never rewrites the fields that describe the stored body itself.
_NOT_UPDATED_BY_304 = frozenset({"content-length", "content-encoding"})
_DELTA_SECONDS_CAP = 2**31  # §1.2.2
_DIGITS = re.compile(r"[0-9]+")
_NO_DIRECTIVES: dict[str, str | None] = {}
_ESCAPE = re.compile(r"\\(.)")

_T = TypeVar("_T")


# --- keys ---------------------------------------------------------------------------------------


@lru_cache(maxsize=URL_CACHE_SIZE)
def normalize_url(url: str) -> str:
    """Scheme and host lowercased; default port, userinfo and fragment dropped; path and query
    verbatim.

    The scheme and host part depends only on ``scheme://authority`` once the URL has passed
    the character check (``urls.origin_prefix``): it is normalised once per origin, and the
    path and query are cut from the URL as urlsplit cuts them (every cold fetch is a new URL;
    its origins are few). Anything else is parsed whole."""
    if FORBIDDEN_CHARACTERS.search(url) is None:
        origin = origin_prefix(url)
        if origin is not None:
            try:
                head = _normalized_origin(origin)
            except InvalidURLError:
                head = None
            if head is not None:
                path, _, query = url[len(origin):].partition("#")[0].partition("?")
                return f"{head}{path or '/'}?{query}" if query else f"{head}{path or '/'}"
    return _normalized(url)


@lru_cache(maxsize=URL_CACHE_SIZE)
def _normalized_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` as ``_normalized`` writes it for any URL of this origin, or
    None when it has no host (urlunsplit then writes the path differently)."""
    whole = _normalized(origin)
    head = whole.removesuffix("/")
    return None if head.endswith("://") or not whole.endswith("/") else head


def _normalized(url: str) -> str:
    parts, hostname, port = checked_split(url)  # the parse the URL check already made
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
    if not vary_headers:
        return _plain_key(url, scope)
    fields = sorted((name.lower(), _normalize_field(v)) for name, v in vary_headers.items())
    parts: list[Any] = [normalize_url(url), fields, *([scope] if scope else [])]
    text = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@lru_cache(maxsize=URL_CACHE_SIZE)
def _plain_key(url: str, scope: str) -> str:
    """``cache_key`` without Vary fields (every lookup): the same text as the JSON encoder
    writes, built without its setup, and remembered per URL and scope (pure)."""
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
            if not is_credential_field(name)}


def vary_matches(entry: CacheEntry, request_headers: Mapping[str, str]) -> bool:
    """Whether this request selects the stored variant (§4.1)."""
    if not entry.vary:
        return True  # the common case, without a generator per lookup
    return all(
        _normalize_field(header(request_headers, name) or "") == value
        for name, value in entry.vary.items()
    )


def stored_fields(
    response_headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> tuple[Fields, dict[str, str]]:
    """What an entry keeps of a response (§3.1): its end-to-end lines as received (``Age``
    aside), and the lines combined by lowercase name for the decisions (``Age`` included).
    ``response_headers`` may be a multidict: every line counts (RFC 9110 §5.3).

    One pass over the lines (every miss stores one): ``header_fields.storable_lines`` and
    ``combine`` of ``field_lines``, with the same result."""
    kept: list[tuple[str, str, str]] = []  # (lowercase name, name, value)
    connection: list[str] = []
    age: list[str] = []
    lines: Iterable[tuple[str, str]] = (
        response_headers.items() if isinstance(response_headers, Mapping) else response_headers)
    for name, value in lines:
        if type(name) is not str:
            name = str(name)  # a multidict's istr: stored as a plain str
        if type(value) is not str:
            value = str(value)
        key = name.lower()
        if key in HOP_BY_HOP:
            if key == "connection":
                connection.append(value)
        elif key == "age":
            age.append(value)
        else:
            kept.append((key, name, value))
    if connection:  # fields named by Connection are hop-by-hop too (§7.6.1)
        named = {token.strip().lower() for value in connection for token in value.split(",")}
        kept = [line for line in kept if line[0] not in named]
    combined: dict[str, str] = {}
    for key, _, value in kept:
        combined[key] = f"{combined[key]}, {value}" if key in combined else value
    if age:
        combined["age"] = ", ".join(age)
    return tuple([(name, value) for _, name, value in kept]), combined


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The stored (combined, lowercase) view of ``headers``: every end-to-end field."""
    return stored_fields(headers)[1]


# --- the stored entry ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CacheEntry:
    """What the index stores per key. ``headers``: the stored fields combined, names
    lowercase (what decisions read); ``fields``: the same lines as received, in order, names
    as sent, ``Age`` left out (what is served, with the current ``Age`` added). An entry
    without ``fields`` (an older index) serves ``headers``.

    A STORE template has ``sha256 == ""`` and ``size == -1`` until the caller fills them in with
    ``with_body`` after hashing the complete body; templates are never served.

    An entry never changes (``replace`` makes a new one): what the decisions derive from its
    fields alone (its Cache-Control, freshness lifetime, age on receipt) is computed once.
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
    fields: Fields = ()
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

    @cached_property
    def cache_control(self) -> dict[str, str | None]:
        """The stored Cache-Control directives (shared: read, never change, the result)."""
        return parse_cache_control(self.headers.get("cache-control"))

    @cached_property
    def lifetime(self) -> float:
        """``freshness_lifetime(self)``."""
        return _freshness_lifetime(self)

    @cached_property
    def age_on_receipt(self) -> float:
        """The age it had when received (§4.2.3: ``corrected_initial_age``)."""
        return _age_on_receipt(self)

    @property
    def has_body(self) -> bool:
        return bool(self.sha256) and self.size >= 0

    @property
    def served_lines(self) -> Fields:
        """The header lines to serve (without ``Age``)."""
        if self.fields:
            return self.fields
        return tuple((k, v) for k, v in self.headers.items() if k != "age")

    @property
    def is_redirect(self) -> bool:
        return self.status in REDIRECT_STATUSES and "location" in self.headers

    def with_body(self, sha256: str, size: int, seal: str = "") -> CacheEntry:
        """This entry with its body's digest, size and seal (what it derived from its fields
        carries over: they are the same)."""
        made = object.__new__(CacheEntry)
        made.__dict__.update(self.__dict__)
        made.__dict__.update(sha256=sha256, size=size, seal=seal)
        return made

    @classmethod
    def stored(cls, *, url: str, headers: dict[str, str], fields: Fields, now: float,
               request_time: float, status: int, vary: dict[str, str],
               private: bool) -> CacheEntry:
        """A STORE template from ``stored_fields`` (``headers`` lowercase already, as
        ``vary``'s names are): the dataclass's own fields, without its per-field
        ``__setattr__`` and second lowercasing pass (one per miss)."""
        made = object.__new__(cls)
        made.__dict__.update(
            url=url, headers=headers, stored_at=now, request_time=request_time,
            response_time=now, status=status, sha256="", size=-1, vary=vary,
            private=private, fields=fields, seal="")
        return made

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; ``from_dict`` reverses it. (What ``dataclasses.asdict``
        returns, without its recursive deep copy of every value: ~60 us an entry.)"""
        values = self.__dict__
        record = {name: values[name] for name in _ENTRY_FIELDS}
        record["headers"], record["vary"] = dict(self.headers), dict(self.vary)
        record["fields"] = self.fields  # tuples of str: written as JSON arrays
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
            fields=_lines(_get(data, "fields", list, [])),
            seal=_get(data, "seal", str, ""),
        )


#: The stored fields of an entry, in order (``to_dict``; what it derives from them is not).
_ENTRY_FIELDS = tuple(f.name for f in fields(CacheEntry))


def _get(data: Mapping[str, Any], key: str, kind: type[_T], default: _T | None = None) -> _T:
    value = data.get(key, default)
    if value is None:
        raise ValueError(f"cache entry lacks {key!r}")
    if kind is float and type(value) is int:
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"cache entry field {key!r} is not a {kind.__name__}")
    return value


def _lines(value: list[Any]) -> Fields:
    try:  # every hit reads this: one pass, no per-item isinstance over generics
        lines = tuple([(name, text) for name, text in value])
    except (TypeError, ValueError):
        raise ValueError("cache entry header line is not a [name, value] pair") from None
    for name, text in lines:
        if type(name) is not str or type(text) is not str:
            raise ValueError("cache entry header line holds a non-string")
    return lines


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
    # RFC 9110 §5.6.7, strictly: an invalid Expires is then "already expired" (§5.3).
    return parse_http_date(value)


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
    return any(is_credential_field(name) for name in request_headers)


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
    storable, private, _ = _storability(status, request_headers, kept_headers(response_headers),
                                       shared_ok_for_private=shared_ok_for_private)
    return storable, private


def _explicitly_cacheable(cc: Mapping[str, str | None], headers: Mapping[str, str]) -> bool:
    # §3 (the last condition): what lets a status outside the heuristic list be stored.
    return "expires" in headers or any(d in cc for d in ("max-age", "s-maxage", "public"))


def _storability(
    status: int,
    request_headers: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    shared_ok_for_private: bool,
) -> tuple[bool, bool, dict[str, str] | None]:
    """``is_storable`` plus the request's values of the Vary-named fields (None for ``*``).
    ``headers``: the response's stored view (``kept_headers``: combined, lowercase)."""
    request_cc = parse_cache_control(header(request_headers, "Cache-Control"))
    response_cc = parse_cache_control(headers.get("cache-control"))
    private = _is_private(request_headers, response_cc)
    if status not in UNDERSTOOD_STATUSES:
        return False, private, None
    # A redirect without explicit freshness is kept too, but never fresh (§4.2.2 allows no
    # heuristic for 302/303/307): online it is asked again (or revalidated) every time, and
    # only an offline replay serves it, as it serves any stale entry.
    if (status not in HEURISTIC_STATUSES and status not in REDIRECT_STATUSES
            and not _explicitly_cacheable(response_cc, headers)):
        return False, private, None
    if "no-store" in request_cc or "no-store" in response_cc:
        return False, private, None
    if status >= 400 and not (_explicitly_cacheable(response_cc, headers)
                              or "last-modified" in headers):
        return False, private, None  # an error that could never be fresh: not worth keeping
    vary = vary_values(headers, request_headers)
    if vary is None:
        return False, private, None
    return (shared_ok_for_private or not private), private, vary


# --- freshness ----------------------------------------------------------------------------------


def freshness_lifetime(entry: CacheEntry) -> float:
    """Seconds the entry is fresh for, measured from its origin (§4.2.1); 0 when unknown."""
    return entry.lifetime


def _freshness_lifetime(entry: CacheEntry) -> float:
    cc = entry.cache_control
    # s-maxage applies to shared caches (this one); a private entry (a cache made with
    # allow_private=True, one caller) is served as a private cache would serve it.
    explicit = None if entry.private else _seconds(cc, "s-maxage")
    if explicit is None:
        explicit = _seconds(cc, "max-age")
    if explicit is not None:
        return explicit
    if "expires" in entry.headers:
        expires = _http_date(entry.headers["expires"])
        # §5.3: an invalid Expires (e.g. "0", "UTC", two lines) means already expired.
        return 0.0 if expires is None else max(0.0, expires - _date_value(entry))
    if entry.status not in HEURISTIC_STATUSES and "public" not in cc:
        return 0.0  # §4.2.2: heuristics only for those statuses (or "public")
    return _heuristic_lifetime(entry)


def _heuristic_lifetime(entry: CacheEntry) -> float:
    # §4.2.2: only with Last-Modified; 10% of the interval since then, capped at a day.
    last_modified = _http_date(entry.last_modified)
    if last_modified is None:
        return 0.0
    interval = max(0.0, _date_value(entry) - last_modified)
    return min(HEURISTIC_CAP, interval * HEURISTIC_FRACTION)


#: Request fields that can change a lookup's verdict for the same stored entry by themselves.
_DIRECTIVE_FIELDS = frozenset({"cache-control", "pragma", "range", "if-range"})


def plain_request(request_headers: Mapping[str, str]) -> bool:
    """Whether the request carries no field that asks the cache for more than "fresh" (no
    request directive, §5.2.1; no Range, RFC 9110 §14.2): for such a request, and the same
    fields, a fresh verdict holds until ``fresh_until``."""
    return not any(name.lower() in _DIRECTIVE_FIELDS for name in request_headers)


def fresh_until(entry: CacheEntry) -> float:
    """When a plain request stops finding the entry fresh (§4.2: its current age reaches its
    freshness lifetime), as a ``time.time()`` instant; -inf when it never is."""
    if entry.lifetime <= entry.age_on_receipt:
        return float("-inf")
    return entry.response_time + entry.lifetime - entry.age_on_receipt


def current_age(entry: CacheEntry, now: float) -> float:
    """The entry's age at ``now`` (§4.2.3)."""
    resident_time = max(0.0, now - entry.response_time)
    return entry.age_on_receipt + resident_time


def _age_on_receipt(entry: CacheEntry) -> float:
    date = _http_date(entry.headers.get("date"))
    apparent_age = 0.0 if date is None else max(0.0, entry.response_time - date)
    response_delay = max(0.0, entry.response_time - entry.request_time)
    corrected_age_value = _age_value(entry.headers.get("age")) + response_delay
    return max(apparent_age, corrected_age_value)


def age_header(age: float) -> str:
    """The ``Age`` value for a served response: whole seconds, rounded down (§5.1)."""
    return str(min(int(age), _DELTA_SECONDS_CAP))


def is_fresh(entry: CacheEntry, now: float) -> bool:
    """Freshness arithmetic only (§4.2); no-cache is applied by ``on_lookup``."""
    return freshness_lifetime(entry) > current_age(entry, now)


def _must_revalidate(entry: CacheEntry) -> bool:
    # §5.2.2.2 must-revalidate; §5.2.2.8 proxy-revalidate and §5.2.2.10 s-maxage apply to
    # shared caches, i.e. to every non-private entry here.
    cc = entry.cache_control
    shared = not entry.private and ("proxy-revalidate" in cc or "s-maxage" in cc)
    return "must-revalidate" in cc or shared


def stale_if_error_allowed(entry: CacheEntry, now: float | None = None,
                           request_headers: Mapping[str, str] | None = None) -> bool:
    """Whether a stored response may stand in for a 5xx or failed fetch (RFC 5861, §4.2.4).

    Allowed unless the response forbids serving it stale: no-store, no-cache, must-revalidate
    (or proxy-revalidate / s-maxage for a shared entry). An explicit ``stale-if-error=N`` on
    the response, or on the request (RFC 5861 §4; both: the smaller), additionally bounds the
    staleness to N seconds when ``now`` is given.
    """
    cc = entry.cache_control
    if "no-store" in cc or "no-cache" in cc or _must_revalidate(entry):
        return False
    limits = [_seconds(cc, "stale-if-error")]
    if request_headers is not None:
        limits.append(_seconds(parse_cache_control(header(request_headers, "Cache-Control")),
                               "stale-if-error"))
    bounds = [limit for limit in limits if limit is not None]
    if not bounds or now is None:
        return True
    return current_age(entry, now) - freshness_lifetime(entry) <= min(bounds)


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
    HIT = "hit"  # serve the stored response; no request at all (``background``: revalidate)
    REVALIDATE = "revalidate"  # send ``headers`` (conditional), then call on_response
    OFFLINE_HIT = "offline_hit"  # offline: serve the stored blob, fresh or not
    OFFLINE_MISS = "offline_miss"  # offline (or only-if-cached), nothing usable: OfflineError
    BYPASS = "bypass"  # a Range the cache cannot answer: to the origin, nothing stored


@dataclass(frozen=True)
class LookupDecision:
    action: LookupAction
    entry: CacheEntry | None = None  # the stored entry this caller may use; pass to on_response
    headers: dict[str, str] = field(default_factory=dict)  # conditional headers (REVALIDATE,
    #                                                        or a background one for a HIT)
    stale: bool = False  # a stale entry served (offline, or stale-while-revalidate)
    reason: str = ""
    age: float = 0.0  # the entry's current age (§4.2.3), for a HIT
    byte_range: ByteRange | None = None  # a HIT answering a Range: serve a 206 of this range
    background: bool = False  # stale-while-revalidate: serve now, revalidate in the background

    def __init__(
        self, action: LookupAction, entry: CacheEntry | None = None,
        headers: dict[str, str] | None = None, stale: bool = False, reason: str = "",
        age: float = 0.0, byte_range: ByteRange | None = None, background: bool = False,
    ) -> None:
        """The dataclass's own ``__init__`` (kept by ``@dataclass``: it is defined here), one
        ``__dict__`` update instead of an ``object.__setattr__`` per field (one per lookup)."""
        self.__dict__.update(
            action=action, entry=entry, headers={} if headers is None else headers,
            stale=stale, reason=reason, age=age, byte_range=byte_range, background=background)


def _unusable_reason(
    entry: CacheEntry, request_headers: Mapping[str, str], caller_private_ok: bool
) -> str | None:
    if not entry.has_body:
        return "stored entry has no complete body"
    if entry.private and not caller_private_ok:
        return "stored entry is private"
    if not vary_matches(entry, request_headers):
        return "stored variant does not match Vary"
    return None


def _fresh_enough(
    entry: CacheEntry, request_cc: Mapping[str, str | None], age: float, lifetime: float
) -> bool:
    """Whether the entry may be served without contacting the origin (§4.2, §5.2.1)."""
    if "no-cache" in request_cc or "no-cache" in entry.cache_control:
        return False
    max_age = _seconds(request_cc, "max-age")
    # max-age=0 is the common "revalidate" idiom; treat it like no-cache even at age 0.
    if max_age is not None and (max_age == 0 or age > max_age):
        return False
    if lifetime > age + (_seconds(request_cc, "min-fresh") or 0.0):  # §5.2.1.3
        return True
    if "max-stale" not in request_cc or _must_revalidate(entry):  # §5.2.1.2
        return False
    max_stale = _seconds(request_cc, "max-stale")
    return request_cc["max-stale"] is None or age - lifetime <= (max_stale or 0.0)


def _while_revalidate(
    entry: CacheEntry, request_cc: Mapping[str, str | None], age: float, lifetime: float
) -> bool:
    """RFC 5861 §3: a stale entry within ``stale-while-revalidate=N`` may be served while it is
    revalidated in the background, unless the request or response insists on the origin."""
    window = _seconds(entry.cache_control, "stale-while-revalidate")
    if not window or _must_revalidate(entry) or "no-cache" in entry.cache_control:
        return False
    if any(d in request_cc for d in ("no-cache", "max-age", "min-fresh")):
        return False
    return age - lifetime <= window


def _with_range(decision: LookupDecision, range_value: str, if_range: str | None
                ) -> LookupDecision:
    """A decision for a request with ``Range``: a HIT answers it from the stored full body (or
    whole, when ``If-Range`` fails, RFC 9110 §13.1.5); anything else goes to the origin."""
    entry = decision.entry
    if decision.action not in (LookupAction.HIT, LookupAction.OFFLINE_HIT) or entry is None:
        if decision.action is LookupAction.OFFLINE_MISS:
            return decision
        return LookupDecision(LookupAction.BYPASS, reason="Range without a fresh full response")
    if entry.status != 200:
        return LookupDecision(LookupAction.BYPASS, reason="Range of a stored non-200")
    if decision.background:
        return LookupDecision(LookupAction.BYPASS, reason="Range of a stale response")
    if not if_range_holds(if_range, entry.headers):
        return decision  # the whole stored response
    byte_range = parse_range(range_value, entry.size)
    if byte_range is None:
        return LookupDecision(LookupAction.BYPASS, reason="Range the cache cannot answer")
    return replace(decision, byte_range=byte_range)


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
    must-revalidate: offline is the caller's explicit choice (record once, replay). A request
    ``only-if-cached`` (§5.2.1.7) is answered from the cache or not at all (OFFLINE_MISS).
    """
    cc_value = range_value = if_range = None
    for name, value in request_headers.items():  # one pass over the request's few fields
        lower = name.lower()
        if lower == "cache-control":
            cc_value = value
        elif lower == "range":
            range_value = value
        elif lower == "if-range":
            if_range = value
    request_cc = parse_cache_control(cc_value) if cc_value else _NO_DIRECTIVES
    decision = _lookup(entry, request_headers, request_cc, now, offline, caller_private_ok)
    if range_value is None:
        return decision
    return _with_range(decision, range_value, if_range)


def _lookup(
    entry: CacheEntry | None, request_headers: Mapping[str, str],
    request_cc: Mapping[str, str | None], now: float, offline: bool, caller_private_ok: bool,
) -> LookupDecision:
    only_cached = offline or "only-if-cached" in request_cc
    reason = (
        "nothing stored"
        if entry is None
        else _unusable_reason(entry, request_headers, caller_private_ok)
    )
    if entry is None or reason is not None:
        return LookupDecision(
            LookupAction.OFFLINE_MISS if only_cached else LookupAction.MISS, reason=reason or ""
        )
    age = current_age(entry, now)
    if offline:
        stale = freshness_lifetime(entry) <= age
        return LookupDecision(LookupAction.OFFLINE_HIT, entry, stale=stale, reason="offline",
                              age=age)
    if "no-store" in request_cc:
        return LookupDecision(LookupAction.MISS, entry, reason="request no-store")
    lifetime = freshness_lifetime(entry)
    if _fresh_enough(entry, request_cc, age, lifetime):
        return LookupDecision(LookupAction.HIT, entry, reason="fresh", age=age)
    conditional = conditional_headers(entry)
    if _while_revalidate(entry, request_cc, age, lifetime):
        return LookupDecision(LookupAction.HIT, entry, conditional, stale=True, age=age,
                              reason="stale-while-revalidate", background=True)
    if only_cached:
        return LookupDecision(LookupAction.OFFLINE_MISS,
                              reason="only-if-cached: the stored copy is stale")
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
    etag = response_headers.get("etag")
    if etag:
        return entry.etag is not None and _opaque_tag(entry.etag) == _opaque_tag(etag)
    last_modified = _http_date(response_headers.get("last-modified"))
    stored = _http_date(entry.last_modified)
    return last_modified is None or stored is None or last_modified == stored


def _merge_304(entry: CacheEntry, lines: Fields, fresh: Mapping[str, str]
               ) -> tuple[dict[str, str], Fields]:
    # §3.2 / §4.3.4: the 304's fields replace the stored ones, in the decisions' view and in
    # the served lines. The old Date and Age are dropped too: they belong to the old response
    # and would otherwise age the refreshed entry from the start.
    merged = {k: v for k, v in entry.headers.items() if k not in ("date", "age")}
    merged.update({k: v for k, v in fresh.items() if k not in _NOT_UPDATED_BY_304})
    served = tuple((n, v) for n, v in entry.served_lines if n.lower() != "date")
    return merged, replace_lines(served, lines, _NOT_UPDATED_BY_304)


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
    lines, fresh = stored_fields(response_headers)
    if not _validators_match(entry, fresh):
        return ResponseDecision(
            ResponseAction.REFETCH,
            invalidate=True,
            reason="304 validators do not match the stored entry",
        )
    headers, served = _merge_304(entry, lines, fresh)
    storable, private, _ = _storability(entry.status, request_headers, headers,
                                        shared_ok_for_private=store_private)
    updated = replace(
        entry,
        headers=headers,
        fields=served,
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
    ``response_headers`` may be a multidict (every line counts). A storable response of any
    understood status is stored (the caller stores an error status or a redirect with an
    empty body). A 200-like answer that is not storable, and a 404/410, invalidate the stored
    entry: it is superseded.
    """
    if status == 304:
        return _on_not_modified(
            entry, response_headers, request_headers, now, request_time, store_private
        )
    if (
        entry is not None
        and status in STALE_ON_ERROR_STATUSES
        and stale_if_error_allowed(entry, now, request_headers)
    ):
        return ResponseDecision(ResponseAction.SERVE_STALE, entry, reason=f"HTTP {status}")
    lines, headers = stored_fields(response_headers)
    storable, private, vary = _storability(
        status, request_headers, headers, shared_ok_for_private=store_private
    )
    if storable:
        template = CacheEntry.stored(url=url, headers=headers, fields=lines, now=now,
                                     request_time=request_time, status=status,
                                     vary=vary or {}, private=private)
        return ResponseDecision(ResponseAction.STORE, template, reason="storable")
    supersedes = status in _SUPERSEDING_STATUSES
    return ResponseDecision(ResponseAction.PASS, invalidate=entry is not None and supersedes,
                            reason=f"HTTP {status}: not storable")


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
    "HEURISTIC_STATUSES",
    "INVALIDATING_STATUSES",
    "REDIRECT_STATUSES",
    "STALE_ON_ERROR_STATUSES",
    "UNDERSTOOD_STATUSES",
    "CacheEntry",
    "LookupAction",
    "LookupDecision",
    "ResponseAction",
    "ResponseDecision",
    "age_header",
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
    "stored_fields",
    "vary_matches",
    "vary_values",
]
