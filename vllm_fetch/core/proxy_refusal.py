"""A proxy that refuses to open a CONNECT tunnel, as one clear error for both drivers (pure)."""

from __future__ import annotations

import re

from ..errors import FetchConnectionError

_STATUS = re.compile(r"Tunnel connection failed: (\d{3})")


def tunnel_status(message: str) -> int | None:
    """The proxy's status in urllib3/http.client's "Tunnel connection failed: 403 Forbidden"."""
    match = _STATUS.search(message)
    return int(match.group(1)) if match else None


def proxy_refused(safe_url: str, status: int | None) -> FetchConnectionError:
    """The error for a proxy answering CONNECT with ``status`` (``safe_url`` redacted):
    a caching proxy cannot serve https through a tunnel; a mirror can (README "Fleets")."""
    code = f" with HTTP {status}" if status is not None else ""
    return FetchConnectionError(
        f"the proxy refused to open a tunnel to {safe_url}{code}; https through a caching "
        "proxy needs a mirror (see the README's \"Fleets\")", url=safe_url)
