"""The exception hierarchy: everything raised for a failed fetch is a ``FetchError``.

``url`` attributes and messages always hold the *redacted* URL (no userinfo, no query string):
signed URLs carry credentials in their query and must never reach a log.
"""

from __future__ import annotations

from collections.abc import Mapping


class FetchError(Exception):
    """Base class of every error vllm_fetch raises for a failed fetch."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        #: How many attempts were made when this error ended the call (set by the retry loop).
        self.attempts: int | None = None

    def __str__(self) -> str:
        base = super().__str__()
        if self.attempts and self.attempts > 1:
            return f"{base} (after {self.attempts} attempts)"
        return base


class InvalidURLError(FetchError, ValueError):
    """The URL is not an http(s) URL with a host, or cannot be sent as given."""


class BlockedURLError(InvalidURLError):
    """The URL (or a redirect hop) is refused by policy: allowed_domains or block_private_ips."""


class TooManyRedirectsError(FetchError):
    """A redirect chain went past ``max_redirects``."""


class HTTPStatusError(FetchError):
    """The origin answered a status the call does not accept (4xx, 5xx, an unfollowed 3xx)."""

    def __init__(
        self,
        status: int,
        url: str,
        *,
        reason: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        text = f"HTTP {status}{' ' + reason if reason else ''} for {url}"
        super().__init__(text, url=url)
        self.status = status
        self.reason = reason
        self.headers: Mapping[str, str] = dict(headers or {})


class FetchTimeoutError(FetchError, TimeoutError):
    """The call's total deadline (``timeout``) ran out."""


class IdleTimeoutError(FetchTimeoutError):
    """No byte arrived for ``idle_timeout`` seconds (a stalled connection or origin)."""


class FetchConnectionError(FetchError, ConnectionError):
    """The connection could not be opened or was dropped (refused, reset, DNS failure, TLS)."""


class IntegrityError(FetchError):
    """The body is not what was promised: short, too long, or the wrong size or sha256."""


class TruncatedBodyError(IntegrityError):
    """Fewer bytes arrived than Content-Length (or the expected size) announced."""

    def __init__(self, message: str, *, url: str | None = None, received: int = 0) -> None:
        super().__init__(message, url=url)
        self.received = received


class ChecksumMismatchError(IntegrityError):
    """The body's sha256 or size differs from ``expected_sha256`` / ``expected_size``."""


class SizeLimitExceededError(FetchError):
    """The body is larger than ``max_bytes``."""


class ResponseHeadersError(FetchError):
    """The origin sent malformed or oversized headers, or a garbage Content-Length."""


class OfflineError(FetchError):
    """Offline mode is on and the URL is not in the cache."""


class CachedBodyDamagedError(IntegrityError, OfflineError):
    """Offline, the only copy is the cached one, and its stored bytes are damaged or gone (the
    entry has been dropped; online it would have been fetched again)."""


class DiskError(FetchError, OSError):
    """A local file could not be written (disk full, read-only target). Never retried."""


__all__ = [
    "BlockedURLError",
    "CachedBodyDamagedError",
    "ChecksumMismatchError",
    "DiskError",
    "FetchConnectionError",
    "FetchError",
    "FetchTimeoutError",
    "HTTPStatusError",
    "IdleTimeoutError",
    "IntegrityError",
    "InvalidURLError",
    "OfflineError",
    "ResponseHeadersError",
    "SizeLimitExceededError",
    "TooManyRedirectsError",
    "TruncatedBodyError",
]
