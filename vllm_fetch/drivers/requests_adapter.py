"""A requests adapter that sends the request target byte-for-byte as the caller wrote it.

urllib3 normalises percent-escapes in the target (``%7e`` -> ``%7E``), which breaks signatures
that cover the raw query. The driver names the verbatim target for the current call; the pool
uses it only when urllib3's own encoding of it is exactly what urllib3 was about to send, so
nothing that urllib3 would have had to escape is ever sent raw.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.url import _encode_target

_VERBATIM_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "vllm_fetch_verbatim_target", default=None
)


def request_target(url: str) -> str:
    """The origin-form target of a URL: path (or /) and query, as written."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


@contextlib.contextmanager
def verbatim_target(url: str) -> Iterator[None]:
    """Within this block, requests in this thread send ``url``'s target unnormalised."""
    token = _VERBATIM_TARGET.set(request_target(url))
    try:
        yield
    finally:
        _VERBATIM_TARGET.reset(token)


class _VerbatimTargetMixin:
    def _make_request(self, conn: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        wanted = _VERBATIM_TARGET.get()
        if wanted is not None and wanted != url and _encode_target(wanted) == url:
            url = wanted
        return super()._make_request(conn, method, url, *args, **kwargs)  # type: ignore[misc]


class VerbatimHTTPConnectionPool(_VerbatimTargetMixin, HTTPConnectionPool):
    pass


class VerbatimHTTPSConnectionPool(_VerbatimTargetMixin, HTTPSConnectionPool):
    pass


class FetchAdapter(HTTPAdapter):
    """The adapter every vllm_fetch ``requests.Session`` mounts for http and https."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": VerbatimHTTPConnectionPool,
            "https": VerbatimHTTPSConnectionPool,
        }
