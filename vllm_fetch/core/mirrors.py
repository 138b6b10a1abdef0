"""Mirrors (pure): which prefix rewrite a URL gets, what a mirror is sent, when to fall back.

A mirror is an operator-configured prefix rewrite applied at send time only: the request keeps
the origin URL as its identity (cache key, partial sidecar, lock, sha256 lookup, URL policy),
and only the first request of each attempt goes to the mirror's URL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, TypeAlias
from urllib.parse import urlsplit

from ..errors import (
    FetchConnectionError,
    FetchTimeoutError,
    HTTPStatusError,
    IntegrityError,
    InvalidURLError,
)
from .address_policy import normalize_host
from .tenancy import is_credential_field
from .urls import redact_url, validate_url

if TYPE_CHECKING:
    from .request import FetchRequest

#: Where the bytes of a result came from.
Source: TypeAlias = Literal["cache", "mirror", "origin"]


_BOUNDARIES = ("/", "?", "#")


def _normalized(url: str) -> str:
    """``url`` with its scheme and host lowercased (path and query as written)."""
    parts = urlsplit(url)
    head = f"{parts.scheme.lower()}://{parts.netloc.lower()}"
    return head + url[len(parts.scheme) + 3 + len(parts.netloc):]


def _prefix(url: str, what: str) -> str:
    """A configured prefix: an http(s) URL with a host, no userinfo, query or fragment; kept
    without a trailing ``/``, so an origin and a mirror written one with and one without
    still join at a path boundary (``/mir`` + ``/f``, never ``/mirf`` or ``/mir//f``)."""
    try:
        validate_url(url)
    except InvalidURLError:
        raise ValueError(f"mirror {what} {redact_url(url)!r} is not an http(s) URL") from None
    parts = urlsplit(url)
    if "@" in parts.netloc or parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"mirror {what} {redact_url(url)!r} must be scheme://host[/path] "
                         "(no userinfo, query or fragment)")
    return _normalized(url).rstrip("/")


def _matches(url: str, prefix: str) -> bool:
    """True when ``url`` starts with ``prefix`` at a path boundary (``https://hf.co`` does not
    match ``https://hf.co.evil.example/``, ``/hf`` does not match ``/hfx``)."""
    if not url.startswith(prefix):
        return False
    rest = url[len(prefix):]
    return not rest or prefix.endswith("/") or rest.startswith(_BOUNDARIES)


@dataclass(frozen=True)
class Route:
    """One rewrite: URLs under ``origin`` are sent to the same path under ``mirror``."""

    origin: str
    mirror: str


@dataclass(frozen=True)
class Mirrors:
    """The configured rewrites (longest origin prefix first) and how they behave.

    - ``fallback``: on a mirror failure that the origin may not share (see
      :func:`falls_back`), try the origin; else the mirror's error is the call's.
    - ``credentials``: send the origin's credential headers to the mirror too.
    """

    routes: tuple[Route, ...] = ()
    fallback: bool = True
    credentials: bool = False

    @classmethod
    def build(cls, mapping: Mapping[str, str] | Iterable[tuple[str, str]] | None, *,
              fallback: bool = True, credentials: bool = False) -> Mirrors:
        """Validated routes from ``{origin_prefix: mirror_prefix}``; ValueError when bad."""
        if isinstance(mapping, str):
            raise TypeError("mirrors must be a mapping of origin prefix to mirror prefix")
        items = mapping.items() if isinstance(mapping, Mapping) else (mapping or ())
        routes = [Route(_prefix(origin, "origin"), _prefix(mirror, "prefix"))
                  for origin, mirror in items]
        routes.sort(key=lambda r: len(r.origin), reverse=True)
        return cls(tuple(routes), fallback=fallback, credentials=credentials)

    def __bool__(self) -> bool:
        return bool(self.routes)

    @property
    def hosts(self) -> frozenset[str]:
        """The mirrors' host names: trusted, because the operator configured them."""
        return frozenset(normalize_host(urlsplit(r.mirror).hostname or "") for r in self.routes)

    def route(self, url: str) -> Route | None:
        """The rewrite for ``url`` (the longest matching origin prefix), or None."""
        if not self.routes:
            return None
        normalized = _normalized(url)
        return next((r for r in self.routes if _matches(normalized, r.origin)), None)

    def rewrite(self, url: str) -> str | None:
        """Where ``url`` is sent instead, or None when no mirror serves it."""
        route = self.route(url)
        if route is None:
            return None
        return route.mirror + _normalized(url)[len(route.origin):]

    def restore(self, url: str, route: Route) -> str:
        """A URL the mirror answered from, as the origin URL it stands for (a URL outside
        the mirror prefix, after a redirect elsewhere, is returned as it is)."""
        normalized = _normalized(url)
        if _matches(normalized, route.mirror):
            return route.origin + normalized[len(route.mirror):]
        return url

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The headers a mirror is sent: all, less the caller's credentials for the origin
        (``tenancy.is_credential_field``) unless the operator says so (``credentials``)."""
        if self.credentials:
            return dict(headers)
        return {k: v for k, v in headers.items() if not is_credential_field(k)}


def mirror_request(req: FetchRequest, mirrors: Mirrors) -> tuple[FetchRequest, Route] | None:
    """``req`` as sent to its mirror (None when no mirror serves its URL): the same identity
    (``url``), sent to the mirror's URL with the mirror's headers. Redirects from the mirror
    are followed by the driver, each hop checked by the policy: a hop-by-hop cache request
    (``redirect_answers``) must not store a mirror's own redirect under the origin URL."""
    route = mirrors.route(req.url)
    if route is None:
        return None
    sent = replace(req, send_url=route.mirror + _normalized(req.url)[len(route.origin):],
                   headers=mirrors.headers(req.headers))
    if req.redirect_answers:
        sent = replace(sent, redirect_answers=False, allow_redirects=True)
    return sent, route


def parse_mirrors(text: str | None) -> dict[str, str]:
    """``VLLM_FETCH_MIRRORS``: ``origin=mirror`` pairs separated by commas; ValueError when a
    pair has no ``=``."""
    pairs: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        origin, sep, mirror = item.partition("=")
        if not sep or not origin.strip() or not mirror.strip():
            raise ValueError(f"VLLM_FETCH_MIRRORS: {redact_url(item.strip())!r} is not "
                             "origin=mirror")
        pairs[origin.strip()] = mirror.strip()
    return pairs


def falls_back_status(status: int) -> bool:
    """A mirror status the origin may not share: 404 (not mirrored) or any 5xx."""
    return status == 404 or 500 <= status <= 599


def falls_back(error: BaseException) -> bool:
    """Whether a mirror's failure sends the call to the origin: connection errors, timeouts,
    404 and 5xx statuses, and bodies that fail their size or checksum (a mirror serving bad
    bytes). Refused URLs (a mirror's redirect out of the policy), size caps and other
    statuses are the call's answer."""
    if isinstance(error, HTTPStatusError):
        return falls_back_status(error.status)
    return isinstance(error, (FetchConnectionError, FetchTimeoutError, IntegrityError))
