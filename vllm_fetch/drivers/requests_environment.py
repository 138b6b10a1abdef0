"""What the environment says for a requests request (proxies, CA bundle, .netrc), computed
with requests' own helpers and remembered by :mod:`.environment`.

``Session.merge_environment_settings`` and ``prepare_request`` re-read all of it for every
request when ``trust_env`` is on; the driver asks :func:`send_settings` instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import requests
from requests.utils import NETRC_FILES, get_environ_proxies, get_netrc_auth

from ..config import ca_bundle
from ..core.body import header
from .environment import EnvironmentMemo, home_netrc


class Route(NamedTuple):
    """What the environment says for one request, as requests computes it with ``trust_env``:
    the proxies (none when ``NO_PROXY`` matches), the CA bundle, the .netrc credentials."""

    proxies: Mapping[str, str]
    ca_bundle: str | None
    netrc: tuple[str, str] | None


_ENVIRONMENT = EnvironmentMemo(home_netrc(NETRC_FILES))


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An explicit "no credentials" (requests would otherwise look .netrc up again)."""
    return request


def environment_route(url: str) -> Route:
    """requests' own answers for ``url`` (``get_environ_proxies``, the CA bundle variables,
    ``get_netrc_auth``), remembered per host and port until the environment or a netrc file
    changes (``merge_environment_settings`` re-reads them all: ~125 µs a request)."""
    known = _ENVIRONMENT.current()
    parts = urlsplit(url)
    key = (parts.hostname, parts.port)
    route: Route | None = known.get(key)
    if route is None:
        bundle = ca_bundle()
        route = known[key] = Route(get_environ_proxies(url), bundle, get_netrc_auth(url))
    return route


def send_settings(session: requests.Session, url: str,
                  headers: Mapping[str, str]) -> tuple[dict[str, Any], Any]:
    """``session.merge_environment_settings(url, {}, True, None, None)`` with the environment's
    part remembered, and the ``auth`` that ``session.prepare_request`` would look up in .netrc
    (None: let it). Returns (settings, auth). A caller's own ``Authorization`` in ``headers``
    wins over a .netrc entry, as on the async side (requests would overwrite it)."""
    proxies: Mapping[str, str] = {}
    bundle = None
    auth: Any = None
    if session.trust_env:
        route = environment_route(url)
        proxies, bundle = route.proxies, route.ca_bundle
        if (not session.auth and route.netrc is not None  # the header looked up only then
                and header(headers, "Authorization") is None):
            auth = route.netrc
        elif not session.auth and urlsplit(url).username is None:
            auth = _no_auth  # no netrc entry to use and no URL credentials: nothing to look up
    merged = {**session.proxies, **proxies}  # requests' merge_setting: the environment wins
    settings = {
        "proxies": {k: v for k, v in merged.items() if v is not None},
        "verify": bundle if bundle is not None else session.verify,
        "cert": session.cert,
    }
    return settings, auth
