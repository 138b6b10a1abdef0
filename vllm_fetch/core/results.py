"""What a completed fetch hands back, the same shape from both drivers (plain data)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from multidict import CIMultiDict, CIMultiDictProxy

from .body import CASE_INSENSITIVE_TYPES, AnyURL
from .urls import redact_url, without_userinfo

if TYPE_CHECKING:
    from .mirrors import Source

Headers: TypeAlias = "CIMultiDictProxy[str]"
CASE_INSENSITIVE_TYPES.update((CIMultiDict, CIMultiDictProxy))


def as_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> Headers:
    """``headers`` as a read-only, case-insensitive multidict (every line kept)."""
    if isinstance(headers, CIMultiDictProxy):
        return headers
    items = headers.items() if isinstance(headers, Mapping) else headers
    return CIMultiDictProxy(CIMultiDict(items))


class FetchResult:
    """A complete body and the response it came in, from ``fetch_bytes`` / ``async_fetch_bytes``.

    Frozen. ``headers`` is a case-insensitive ``multidict.CIMultiDictProxy`` keeping repeated
    lines (``headers.getall("Set-Cookie")``), the same type on the sync and async side; an
    answer from the cache carries ``Age``. ``url`` is the final URL (after redirects,
    without userinfo); ``from_cache`` says the body came from the disk cache (``age``: its
    current age in seconds, RFC 9111 §4.2.3; 0 for a network answer); ``sha256`` is the
    body's hex digest
    (known for a cached body, computed on first use otherwise). ``source`` says where the
    bytes came from: ``"cache"``, ``"mirror"`` or ``"origin"``.
    """

    __slots__ = ("_headers", "_lines", "_sha256", "_url", "age", "content", "from_cache",
                 "source", "status")

    content: bytes
    status: int
    _url: str | AnyURL
    from_cache: bool
    age: int
    source: Source
    _headers: Headers | None
    _lines: Mapping[str, str] | Iterable[tuple[str, str]] | None
    _sha256: str | None

    def __init__(
        self,
        content: bytes,
        status: int,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        url: str | AnyURL,
        sha256: str | None = None,
        *,
        from_cache: bool = False,
        age: int = 0,
        source: Source = "origin",
    ) -> None:
        setter = object.__setattr__
        setter(self, "source", "cache" if from_cache else source)
        setter(self, "content", content)
        setter(self, "status", status)
        setter(self, "_url", url)  # a library's URL object is made a string on first use
        setter(self, "from_cache", from_cache)
        setter(self, "age", age)
        setter(self, "_sha256", sha256)
        if isinstance(headers, CIMultiDictProxy):
            setter(self, "_headers", headers)
            setter(self, "_lines", None)
        else:  # built on first use: a get_bytes hit never looks at its headers
            setter(self, "_headers", None)
            setter(self, "_lines", headers)

    @property
    def url(self) -> str:
        url = self._url
        if type(url) is not str or "@" in url:
            url = without_userinfo(str(url))
            object.__setattr__(self, "_url", url)
        return url

    @property
    def headers(self) -> Headers:
        built: Headers | None = self._headers
        if built is None:
            built = as_headers(self._lines or ())
            object.__setattr__(self, "_headers", built)
            object.__setattr__(self, "_lines", None)
        return built

    @property
    def sha256(self) -> str:
        digest: str | None = self._sha256
        if digest is None:
            digest = hashlib.sha256(self.content).hexdigest()
            object.__setattr__(self, "_sha256", digest)
        return digest

    @property
    def known_sha256(self) -> str | None:
        """The digest if it is already known (never hashes): what the cache's writer reuses."""
        return self._sha256

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"FetchResult is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"FetchResult is frozen: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FetchResult):
            return NotImplemented
        return (self.content, self.status, self.url, self.from_cache, self.age,
                list(self.headers.items())) == (other.content, other.status, other.url,
                                                other.from_cache, other.age,
                                                list(other.headers.items()))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        # redacted: a result logged with %r must not quote a signed URL's query or a password
        return (f"FetchResult(status={self.status}, url={redact_url(self.url)!r}, "
                f"{len(self.content)} bytes, from_cache={self.from_cache}, age={self.age})")


#: The drivers' name for it: a complete body in memory, checked against every limit.
Body = FetchResult


@dataclass(frozen=True)
class DownloadResult:
    """A file published at ``path``: its size, sha256 (when hashed) and the final response;
    ``from_cache`` when the bytes came from the disk cache rather than a body transfer;
    ``source``: ``"cache"``, ``"mirror"`` or ``"origin"`` (always ``"cache"`` with
    ``from_cache``). ``headers`` is case-insensitive, as ``FetchResult.headers`` is."""

    path: Path
    size: int
    sha256: str | None
    status: int
    headers: Mapping[str, str]
    url: str
    from_cache: bool = False
    source: Source = "origin"

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", without_userinfo(self.url))  # no password, either side
        # a CIMultiDict, not a proxy: a result pickles (a process pool's), copies and asdict()s
        object.__setattr__(self, "headers", CIMultiDict(
            self.headers.items() if isinstance(self.headers, Mapping) else self.headers))
        if self.from_cache:
            object.__setattr__(self, "source", "cache")

    def __repr__(self) -> str:
        # the URL redacted (no userinfo, query or fragment), as in FetchResult's
        return (f"DownloadResult(path={self.path!r}, size={self.size}, sha256={self.sha256!r}, "
                f"status={self.status}, url={redact_url(self.url)!r}, "
                f"from_cache={self.from_cache}, source={self.source!r})")
