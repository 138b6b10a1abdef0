"""URL validation and redaction (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

from ..errors import InvalidURLError

ALLOWED_SCHEMES = frozenset({"http", "https"})

# Characters that parse differently between URL parsers (WHATWG vs RFC 3986) or that would let a
# URL smuggle a second request line. Refuse them instead of guessing which parser is right.
_FORBIDDEN = FORBIDDEN_CHARACTERS = re.compile(r"[\x00-\x20\x7f\\]")

# Characters requests (``requote_uri``) and yarl percent-encode in a path, query or fragment
# without changing what a valid URL means: a space, ``"<>^`{|}`` and non-ASCII (as UTF-8).
_QUOTED = re.compile(r'[ "<>^`{|}\x80-\U0010ffff]')
# What requests leaves as it is: RFC 3986's reserved characters, and ``%`` (escapes stay).
_KEPT = "!#$%&'()*+,/:;=?@[]~"

#: Distinct URLs whose parse is remembered. One fetch redacts and checks its URL several times
#: (policy, deadline, status and size errors, logs); each ``urlsplit(url).hostname`` or
#: ``.port`` parses the netloc again (~2 us a redaction, ~4 us a policy check).
URL_CACHE_SIZE = 1024


@lru_cache(maxsize=URL_CACHE_SIZE)
def split_url(url: str) -> tuple[SplitResult, str | None, int | None]:
    """``urlsplit(url)`` with its ``hostname`` and ``port``, each parsed once (every access to
    those properties parses the netloc again). Raises ValueError as they do."""
    parts = urlsplit(url)
    return parts, parts.hostname, parts.port


#: Where an absolute URL's authority ends: at its first ``/``, ``?`` or ``#`` (as urlsplit
#: finds it), matched from just after ``://``.
_AUTHORITY = re.compile(r"[^/?#]*")


@lru_cache(maxsize=URL_CACHE_SIZE)
def origin_prefix(url: str) -> str | None:
    """``scheme://authority`` of ``url`` (everything before its path), or None when it has no
    ``://``. urlsplit finds the same scheme and netloc in both (they end where the prefix
    does), so what depends only on them (the host check, a redaction without query or
    userinfo) is computed once per origin instead of once per URL. Remembered per URL: one
    fetch asks for it three times (policy check, redaction, environment route)."""
    start = url.find("://")
    if start < 0:
        return None
    return url[:_AUTHORITY.match(url, start + 3).end()]  # type: ignore[union-attr]


def url_to_send(url: str, headers: Mapping[str, str]) -> str:
    """The URL a driver sends for ``url`` with ``headers``: ``url`` itself, but without its
    userinfo when the caller sent an ``Authorization`` header of its own (any case).

    Both HTTP libraries turn URL userinfo into Basic credentials, and disagree when the caller
    also sent Authorization: requests overwrites the caller's header, aiohttp refuses the
    request (a ValueError). The caller's explicit header wins, on both sides alike. Only what is
    sent changes: the URL with its userinfo stays the request's identity (cache key, tenancy,
    partials, redaction). Everything after the authority is kept byte for byte (signed URLs).
    """
    if "@" not in url:
        return url
    origin = origin_prefix(url)
    if origin is None or "@" not in origin:
        return url  # an @ in the path or query is no userinfo
    for name in headers:  # a plain loop: this runs for every request with userinfo
        if name.lower() == "authorization":
            return without_userinfo(url)
    return url


def without_userinfo(url: str) -> str:
    """``url`` without its userinfo (everything after the authority byte for byte): what a
    result reports as its URL, on both sides alike (aiohttp drops userinfo from its URLs,
    requests keeps it), so a logged ``result.url`` carries no password."""
    if "@" not in url:
        return url
    origin = origin_prefix(url)
    if origin is None or "@" not in origin:
        return url  # an @ in the path or query is no userinfo
    scheme = origin.find("://") + 3
    return origin[:scheme] + origin.rpartition("@")[2] + url[len(origin):]


def checked_split(url: str) -> tuple[SplitResult, str | None, int | None]:
    """:func:`split_url`, a parse failure (a bad port too) as ``InvalidURLError``."""
    try:
        return split_url(url)
    except ValueError as exc:
        problem = parse_problem(exc)
    # raised out here: urllib's error (it may quote a password) is not its context
    raise InvalidURLError(f"Invalid HTTP URL: {problem}: {redact_url(url)}", url=redact_url(url))


def _after_scheme(url: str) -> tuple[str, str] | None:
    scheme, sep, rest = url.partition("://")
    return (scheme, rest) if sep else None


def _ambiguous_authority(url: str) -> bool:
    """Whether an ``@`` stands outside the authority the parser found: then the "host" and
    "port" it found may be a user name and the start of a password holding ``? # / @ %`` or
    whitespace (``http://alice:TOP?SECRET@host/``), and nothing before the last ``@`` is safe
    to show."""
    split = _after_scheme(url)
    if split is None or "@" not in split[1]:
        return False
    authority = re.split(r"[/?#\\]", split[1], maxsplit=1)[0]
    return "@" in split[1][len(authority):]


def _redact_ambiguous(url: str) -> str:
    scheme, rest = _after_scheme(url) or ("", url)
    tail = rest.rpartition("@")[2]
    host = re.split(r"[/?#\s\\]", tail, maxsplit=1)[0]
    more = "/…" if len(tail) > len(host) else ""
    return f"{scheme.lower()}://…@{host}{more}"


@lru_cache(maxsize=URL_CACHE_SIZE)
def redact_url(url: str) -> str:
    """The URL without userinfo, query or fragment: safe for messages and logs. When an ``@``
    stands outside the parsed authority (a password holding ``?``, ``#``, ``/`` …), everything
    up to the last ``@`` is hidden, and the path too. Remembered per URL (a URL asked for
    again, a cache hit's, costs a lookup) and, for a new URL, per origin."""
    if not isinstance(url, str):
        return "<invalid URL>"
    if "@" not in url and "?" not in url and "#" not in url and url.isprintable():
        # nothing to hide and nothing urlsplit strips (tabs, newlines): the origin's redaction
        # (remembered per origin) followed by the path as it is, as urlunsplit joins them
        origin = origin_prefix(url)
        if origin is not None and len(origin) < len(url):
            redacted = _redact(origin)
            if not redacted.startswith("<"):
                return redacted + url[len(origin):]
    return _redact(url)


@lru_cache(maxsize=URL_CACHE_SIZE)
def _redact(url: str) -> str:
    """:func:`redact_url` the long way: urlsplit, then urlunsplit of what is safe to show."""
    if _ambiguous_authority(url):
        return _redact_ambiguous(url)
    try:
        parts, hostname, port_number = split_url(url)
        host = hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{port_number}" if port_number is not None else ""
    except ValueError:
        return "<unparseable URL>"
    if not parts.scheme or not host:
        return "<invalid URL>"
    query = "?…" if parts.query else ""
    return urlunsplit((parts.scheme, host + port, parts.path, "", "")) + query


@lru_cache(maxsize=URL_CACHE_SIZE)
def quote_url(url: str) -> str:
    """``url`` with the characters requests and yarl would quote quoted, after the authority.

    A URL that needs none (every already-encoded URL) is returned as it is, byte for byte.
    Nothing is quoted when the URL holds a character :func:`validate_url` refuses (control
    characters, a backslash), or when the authority holds one of them: those are refused as
    parser differentials, never made acceptable.
    """
    if not isinstance(url, str) or _QUOTED.search(url) is None or _FORBIDDEN_BUT_SPACE.search(url):
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if _QUOTED.search(authority.encode("ascii", "ignore").decode()):
        return url  # a space or quote in the host or userinfo: refused later, never guessed
    return f"{scheme}://{authority}{quote(tail, safe=_KEPT)}"


_FORBIDDEN_BUT_SPACE = re.compile(r"[\x00-\x1f\x7f\\]")


def validate_url(url: object) -> str:
    """Return ``url`` unchanged if it is an http(s) URL with a host; raise InvalidURLError."""
    if not isinstance(url, str) or not url:
        raise InvalidURLError("Invalid HTTP URL: empty or not a string")
    if _FORBIDDEN.search(url):
        raise InvalidURLError(
            f"Invalid HTTP URL: contains whitespace, control characters or a backslash: "
            f"{redact_url(url)}"
        )
    parts, hostname, _ = checked_split(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise InvalidURLError(
            "Invalid HTTP URL: A valid HTTP URL must have scheme 'http' or 'https'."
        )
    if not hostname:
        raise InvalidURLError("Invalid HTTP URL: no host")
    return url


def parse_problem(exc: ValueError) -> str:
    """What urllib found wrong, without quoting the URL (its message can quote a port that
    is really part of a password)."""
    text = str(exc).lower()
    if "port" in text:
        return "bad port" if "range" not in text else "port out of range 0-65535"
    if "ipv6" in text or "bracket" in text:
        return "bad IPv6 address"
    return "cannot be parsed"


def origin_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with default ports filled in, for same-origin comparisons."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port
