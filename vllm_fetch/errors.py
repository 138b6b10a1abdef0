"""The exception hierarchy: everything raised for a failed fetch is a ``FetchError``.

``url`` attributes and messages always hold the *redacted* URL (no userinfo, no query string):
signed URLs carry credentials in their query and must never reach a log.

For vLLM's callers, each class is also the requests exception vLLM's code would have seen
(``HTTPStatusError`` is a ``requests.HTTPError`` whose ``.response.status_code`` is right, ...),
so their ``except`` clauses keep working; the async side raises twins that are also aiohttp's
(``vllm_fetch.aiohttp_errors``). The size errors keep vLLM 0.33's names and attributes.
"""

from __future__ import annotations

import http
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import requests.exceptions as rex

if TYPE_CHECKING:
    import requests

_E = TypeVar("_E", bound=BaseException)
MiB = 1 << 20


class FetchError(Exception):
    """Base class of every error vllm_fetch raises for a failed fetch."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        #: How many attempts were made when this error ended the call (set by the retry loop).
        self.attempts: int | None = None

    def __str__(self) -> str:
        return super().__str__() + self._attempts_note()

    def _attempts_note(self) -> str:
        return f" (after {self.attempts} attempts)" if self.attempts and self.attempts > 1 else ""


class InvalidURLError(FetchError, rex.InvalidURL):  # a ValueError too
    """The URL is not an http(s) URL with a host, or cannot be sent as given."""


class BlockedURLError(InvalidURLError):
    """The URL (or a redirect hop) is refused by policy: allowed_domains or block_private_ips."""


class TooManyRedirectsError(FetchError, rex.TooManyRedirects):
    """A redirect chain went past ``max_redirects``."""


def _standard_reason(status: int) -> str:
    """The reason phrase RFC 9110 §15 gives ``status`` ("" for a status it does not name)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


class HTTPStatusError(FetchError, rex.HTTPError):
    """The origin answered a status the call does not accept (4xx, 5xx, an unfollowed 3xx).

    ``.response`` is a body-less ``requests.Response`` (status, reason, headers, redacted URL),
    as ``raise_for_status()`` would have attached; it is built on first access.
    """

    def __init__(
        self,
        status: int,
        url: str,
        *,
        reason: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        reason = reason or _standard_reason(status)  # a stored or retried answer has none
        text = f"HTTP {status}{' ' + reason if reason else ''} for {url}"
        super().__init__(text, url=url)
        self.status = status
        self.reason = reason
        self.headers: Mapping[str, str] = dict(headers or {})

    @property
    def response(self) -> requests.Response:
        built: requests.Response | None = self.__dict__.get("_response")
        if built is None:
            import requests
            from requests.structures import CaseInsensitiveDict

            built = requests.Response()
            built.status_code, built.reason, built.url = self.status, self.reason, self.url or ""
            built.headers = CaseInsensitiveDict(self.headers)
            built._content = b""
            self.__dict__["_response"] = built
        return built

    @response.setter
    def response(self, value: requests.Response | None) -> None:
        self.__dict__["_response"] = value


class FetchTimeoutError(FetchError, rex.Timeout, TimeoutError):
    """The call's total deadline (``timeout``) ran out."""


class IdleTimeoutError(FetchTimeoutError, rex.ReadTimeout):
    """No byte arrived for ``idle_timeout`` seconds (a stalled connection or origin)."""


class FetchConnectionError(FetchError, rex.ConnectionError, ConnectionError):
    """The connection could not be opened or was dropped (refused, reset, DNS failure, TLS)."""


class IntegrityError(FetchError):
    """The body is not what was promised: short, too long, or the wrong size or sha256."""


class TruncatedBodyError(IntegrityError, rex.ChunkedEncodingError):
    """Fewer bytes arrived than Content-Length (or the expected size) announced."""

    def __init__(self, message: str, *, url: str | None = None, received: int = 0) -> None:
        super().__init__(message, url=url)
        self.received = received


class ChecksumMismatchError(IntegrityError):
    """The body's sha256 or size differs from ``expected_sha256`` / ``expected_size``."""


class SizeLimitExceededError(FetchError):
    """The body is larger than a limit: ``max_bytes``, vLLM's media download limit, or the
    byte budget of a request. Raised as one of the three subclasses below.

    ``str()`` is vLLM 0.33's message for the same refusal, word for word (with the
    ``(parameter=..., value=...)`` vLLM's ``VLLMValidationError`` appends, where vLLM's class is
    one), then `` from <redacted URL>`` when the URL is known. ``args[0]`` is vLLM's message.
    """

    def __str__(self) -> str:
        # BaseException's, not super()'s: after vllm_compat.install() the next __str__ in the
        # MRO may be vLLM's VLLMValidationError's, which would add vLLM's suffix a second time
        text = self._vllm_text()
        if self.url:
            text += f" from {self.url}"
        return text + self._attempts_note()

    def _vllm_text(self) -> str:
        """What ``str()`` of vLLM's own exception says."""
        return BaseException.__str__(self)


class HTTPResponseSizeExceededError(SizeLimitExceededError, ValueError):
    """The body is larger than ``max_bytes`` (vLLM's class of that name; also a ValueError).

    ``max_bytes`` and ``received_bytes`` (at least that many arrived, or were announced);
    ``parameter`` and ``value`` as vLLM's (a ``VLLMValidationError`` there)."""

    def __init__(self, max_bytes: int, received_bytes: int, *, url: str | None = None,
                 message: str | None = None) -> None:
        self.max_bytes = max_bytes
        self.received_bytes = received_bytes
        self.parameter: str | None = "audio_filesize_mb"
        self.value: Any = received_bytes / MiB
        super().__init__(message or (
            "Maximum file size exceeded: HTTP response exceeded maximum size of "
            f"{max_bytes} bytes (received at least {received_bytes} bytes)"), url=url)

    def _vllm_text(self) -> str:
        """vLLM's ``VLLMValidationError.__str__``: the message, then its parameter and value."""
        base = BaseException.__str__(self)
        extras = []
        parameter, value = getattr(self, "parameter", None), getattr(self, "value", None)
        if parameter is not None:
            extras.append(f"parameter={parameter}")
        if value is not None:
            extras.append(f"value={value}")
        return f"{base} ({', '.join(extras)})" if extras else base


class MediaDownloadSizeExceededError(SizeLimitExceededError, ValueError):
    """A ``get_bytes`` body is larger than ``$VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB`` (vLLM's class)."""

    def __init__(self, max_bytes: int, received_bytes: int | None = None, *,
                 url: str | None = None) -> None:
        self.max_bytes = max_bytes
        self.received_bytes = received_bytes
        message = ("Remote media download exceeds "
                   f"VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB={max_bytes / MiB:g}")
        if received_bytes is not None:
            message += f" (received at least {received_bytes} bytes)"
        super().__init__(message, url=url)


class MediaRequestDownloadSizeExceededError(SizeLimitExceededError, ValueError):
    """The fetches sharing one ``MediaRequestDownloadBudget`` received more than
    ``$VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB`` in all (vLLM's class)."""


class ResponseHeadersError(FetchError):
    """The origin sent malformed or oversized headers, or a garbage Content-Length."""


class OfflineError(FetchError):
    """Offline mode is on and the URL is not in the cache."""


class CacheUnreadableError(OfflineError):
    """Offline, and the cache index cannot be opened (read-only for SQLite's write-ahead log,
    locked, unreadable): not a miss, an unknown."""


class CachedBodyDamagedError(IntegrityError, OfflineError):
    """Offline, the only copy is the cached one, and its stored bytes are damaged or gone (the
    entry has been dropped; online it would have been fetched again)."""


class DiskError(FetchError, OSError):
    """A local file could not be written (disk full, read-only target). Never retried."""


def wrapped_fetch_error(exc: BaseException, depth: int = 5) -> FetchError | None:
    """A ``FetchError`` that a library wrapped inside ``exc`` (in its args or causes), if any.

    Most classes here are ``OSError``s (requests' exceptions are), so a refusal raised inside a
    library's connection code (the address guard, a pinned resolver) comes back wrapped in that
    library's connection error; the drivers unwrap it instead of calling it a connection error.
    """
    if isinstance(exc, FetchError):
        return exc
    if depth:
        for inner in (*exc.args, exc.__cause__):
            if isinstance(inner, BaseException) and inner is not exc:
                found = wrapped_fetch_error(inner, depth - 1)
                if found is not None:
                    return found
    return None


#: Filled by ``vllm_compat.install()``: a class of ours -> a subclass of it that also inherits
#: the same-named class of vLLM's module, so that vLLM's ``except`` clauses (which name vLLM's
#: classes) catch what vllm_fetch raises. Applied by the factories below.
ADOPTED: dict[type[BaseException], type[BaseException]] = {}


def retype(error: _E, cls: type[_E]) -> _E:
    """``error`` as an instance of ``cls`` (a subclass of its class): same args, attributes,
    cause, context and traceback; ``cls.__init__`` is not run (vLLM's take other arguments)."""
    twin = cls.__new__(cls, *error.args)
    twin.args = error.args  # OSError.__new__ leaves them to __init__
    twin.__dict__.update(error.__dict__)
    twin.__cause__, twin.__context__ = error.__cause__, error.__context__
    twin.__suppress_context__ = error.__suppress_context__
    return twin.with_traceback(error.__traceback__)


def adopted(error: _E) -> _E:
    """``error``, retyped to the class ``install()`` made for its class, if any."""
    cls: Any = ADOPTED.get(type(error))
    return error if cls is None else retype(error, cls)


def size_exceeded(max_bytes: int, received: int, url: str, *,
                  media: bool = False) -> SizeLimitExceededError:
    """The error for a body over ``max_bytes``: ``MediaDownloadSizeExceededError`` when that
    limit is vLLM's media download limit (``media``), else ``HTTPResponseSizeExceededError``.
    ``received``: the announced size (Content-Length, a stored body) or the count so far; vLLM
    words both alike ("received at least")."""
    if media:
        return adopted(MediaDownloadSizeExceededError(max_bytes, received, url=url))
    return adopted(HTTPResponseSizeExceededError(max_bytes, received, url=url))


def budget_exceeded(message: str, url: str | None = None) -> MediaRequestDownloadSizeExceededError:
    """The error for a request's media download budget running out."""
    return adopted(MediaRequestDownloadSizeExceededError(message, url=url))


__all__ = [
    "BlockedURLError",
    "CacheUnreadableError",
    "CachedBodyDamagedError",
    "ChecksumMismatchError",
    "DiskError",
    "FetchConnectionError",
    "FetchError",
    "FetchTimeoutError",
    "HTTPResponseSizeExceededError",
    "HTTPStatusError",
    "IdleTimeoutError",
    "IntegrityError",
    "InvalidURLError",
    "MediaDownloadSizeExceededError",
    "MediaRequestDownloadSizeExceededError",
    "OfflineError",
    "ResponseHeadersError",
    "SizeLimitExceededError",
    "TooManyRedirectsError",
    "TruncatedBodyError",
]
