"""What the environment says for an aiohttp request (proxy, proxy and .netrc credentials),
computed with aiohttp's own helpers and remembered by :mod:`.environment`.

The driver's session has ``trust_env`` off and passes these itself: with it on, aiohttp runs
two worker-thread hops per request to work them out again.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import aiohttp
from aiohttp.helpers import (
    IS_WINDOWS,
    basicauth_from_netrc,
    get_env_proxy_for_url,
    netrc_from_env,
)
from requests.utils import should_bypass_proxies
from yarl import URL

from ..core.urls import origin_prefix
from .environment import EnvironmentMemo, home_netrc


class Route(NamedTuple):
    """What the environment says for one request: its proxy (and proxy credentials), and the
    .netrc credentials for its host."""

    proxy: URL | None = None
    proxy_auth: aiohttp.BasicAuth | None = None
    auth: aiohttp.BasicAuth | None = None

    def credentials(
        self, url: URL, headers: dict[str, str]
    ) -> tuple[dict[str, str], dict[str, str] | None]:
        """(request headers, proxy headers) carrying the credentials as aiohttp's trust_env
        sends them, without its deprecated ``auth=`` / ``proxy_auth=`` arguments.

        .netrc credentials: unless the URL has its own or the caller sent an Authorization.
        Proxy credentials: on the CONNECT for an https URL, else on the request itself (a
        plain-http proxy reads them there), replacing any the caller sent, as aiohttp does.
        """
        proxy_headers = None
        if self.auth is not None and url.user is None and url.password is None and \
                not _has(headers, "Authorization"):
            headers = {**headers, "Authorization": self.auth.encode()}
        if self.proxy is not None and self.proxy_auth is not None:
            credentials = {"Proxy-Authorization": self.proxy_auth.encode()}
            if url.scheme == "https":
                proxy_headers = credentials
            else:
                headers = {k: v for k, v in headers.items()
                           if k.lower() != "proxy-authorization"} | credentials
        return headers, proxy_headers


def _has(headers: dict[str, str], name: str) -> bool:
    lower = name.lower()
    return any(key.lower() == lower for key in headers)


NO_ROUTE = Route()
_ENVIRONMENT = EnvironmentMemo(home_netrc(("_netrc",) if IS_WINDOWS else (".netrc",)))


def _route(url: URL) -> Route:
    """aiohttp's own answers, as ``ClientSession(trust_env=True)`` computes them per request,
    except that ``NO_PROXY`` is read as the sync side (requests) reads it: CIDR ranges
    (``10.0.0.0/8``) included, which aiohttp's ``proxy_bypass`` ignores."""
    try:
        if should_bypass_proxies(str(url), None):
            raise LookupError("NO_PROXY")
        proxy, proxy_auth = get_env_proxy_for_url(url)
    except LookupError:
        proxy, proxy_auth = None, None
    try:
        auth = basicauth_from_netrc(netrc_from_env(), url.host or "")
    except LookupError:
        auth = None
    route = Route(proxy, proxy_auth, auth)
    return NO_ROUTE if route == NO_ROUTE else route  # the usual answer, told by identity


def _key(url: URL, text: str) -> str:
    """What a route is remembered by: the ``scheme://authority`` the URL was parsed from
    (the route depends on the scheme and host only; a finer key never mixes two answers)."""
    return origin_prefix(text) or str(url.origin())


def known_route(url: URL, text: str) -> Route | None:
    """The remembered :func:`environment_route` of ``url`` (``text``: the string it was parsed
    from), or None when it must be computed (no coroutine for the common case)."""
    route: Route | None = _ENVIRONMENT.current().get(origin_prefix(text) or _key(url, text))
    return route


async def environment_route(url: URL, text: str) -> Route:
    """:func:`_route` for ``url``'s scheme and host, remembered until the environment or the
    netrc file changes; computed in a worker thread (it reads the netrc file) when new."""
    known = _ENVIRONMENT.current()
    key = _key(url, text)
    route: Route | None = known.get(key)
    if route is None:
        route = known[key] = await asyncio.to_thread(_route, url)
    return route
