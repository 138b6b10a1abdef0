"""Body accounting (pure): Content-Length, size caps, truncation, running sha256."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from ..errors import (
    ChecksumMismatchError,
    ResponseHeadersError,
    TruncatedBodyError,
    size_exceeded,
)
from .media_limits import charge
from .urls import redact_url

if TYPE_CHECKING:
    from .media_limits import ByteBudget

#: Mapping types whose ``get`` already ignores case; each driver registers its library's
#: header types. A miss in one of them is final (no scan of every name, lowercased).
CASE_INSENSITIVE_TYPES: set[type] = set()


class AnyURL(Protocol):
    """A URL as a library hands it back (a yarl ``URL``): ``str()`` makes the string."""

    def __str__(self) -> str: ...


def safe_url(url: str | AnyURL, redacted: bool) -> str:
    """``url`` as messages show it: as it is when ``redacted``, else redacted now."""
    return url if redacted and isinstance(url, str) else redact_url(str(url))


#: Content-Length is ASCII digits only (RFC 9110 §8.6); str.isdigit would accept "²".
_DIGITS = re.compile(r"[0-9]+")
_HEX = frozenset("0123456789abcdef")


def is_sha256(text: str) -> bool:
    """Whether ``text`` is a sha256 hex digest as the store names blobs (64, lower case)."""
    return len(text) == 64 and set(text) <= _HEX


def expected_digest(value: object) -> str | None:
    """A caller's ``expected_sha256``: None for none (``None`` or ``""``), the value itself for
    64 hex digits in either case, else a ValueError, before any byte moves (no body can match
    it: it is the call's mistake, not a checksum mismatch after the whole file)."""
    if value is None or value == "":
        return None
    if not (isinstance(value, str) and is_sha256(value.lower())):
        raise ValueError(f"expected_sha256 must be exactly 64 hex digits, got {value!r:.80}")
    return value


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works on any mapping."""
    value = headers.get(name)
    if value is not None or type(headers) in CASE_INSENSITIVE_TYPES:
        return value
    lower = name.lower()
    for key, val in headers.items():
        if key.lower() == lower:
            return val
    return None


def parse_content_length(headers: Mapping[str, str], url: str) -> int | None:
    """The announced body length; garbage or conflicting values are a typed error (fault F5)."""
    raw = header(headers, "Content-Length")
    if raw is None:
        return None
    if header(headers, "Transfer-Encoding") is not None:
        # RFC 9112 §6.3: the framing is ambiguous (a smuggling vector); never guess
        raise ResponseHeadersError(
            f"both Content-Length and Transfer-Encoding from {url}", url=url)
    if raw.isdigit() and raw.isascii():
        return int(raw)  # one plain number: the common case, without the checks below
    values = {v.strip() for v in raw.split(",")}
    if len(values) != 1:
        raise ResponseHeadersError(f"conflicting Content-Length {raw!r} from {url}", url=url)
    value = values.pop()
    if not _DIGITS.fullmatch(value):
        raise ResponseHeadersError(f"invalid Content-Length {raw!r} from {url}", url=url)
    return int(value)


def wire_length(
    headers: Mapping[str, str], url: str | AnyURL, redacted: bool = True
) -> int | None:
    """The Content-Length a body must reach on the wire, or None when the body is content-coded
    (its length counts encoded bytes) or unannounced: :func:`parse_content_length` (a bad
    value refused) and :func:`is_encoded` in one pass, as every response's meter asks.
    ``redacted=False``: ``url`` is redacted only for a refusal's message."""
    if type(headers) not in CASE_INSENSITIVE_TYPES:
        length = parse_content_length(headers, safe_url(url, redacted))
        return None if is_encoded(headers) else length
    raw = headers.get("Content-Length")
    if raw is None:
        return None
    if not (raw.isdigit() and raw.isascii()) or headers.get("Transfer-Encoding") is not None:
        # the refusals, and their messages
        length = parse_content_length(headers, safe_url(url, redacted))
    else:
        length = int(raw)
    encoding = headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        return None
    return length


def announced_length(headers: Mapping[str, str]) -> int | None:
    """The Content-Length when it is one plain number, else None (never raises): for decisions
    that only trust a clean length; :func:`parse_content_length` refuses a bad one instead."""
    raw = header(headers, "Content-Length")
    if raw is None or not _DIGITS.fullmatch(raw.strip()):
        return None
    return int(raw.strip())


def is_encoded(headers: Mapping[str, str]) -> bool:
    """True when the body on the wire is content-coded, so Content-Length counts encoded bytes."""
    encoding = (header(headers, "Content-Encoding") or "identity").strip().lower()
    return encoding not in ("", "identity")


def refuse_oversized(length: int | None, max_bytes: int | None, url: str, *,
                     media: bool = False) -> None:
    """Refuse before reading when the announced length is already over the cap (fault F15)."""
    if max_bytes is not None and length is not None and length > max_bytes:
        raise size_exceeded(max_bytes, length, url, media=media)


class BodyMeter:
    """Counts (and optionally hashes) body bytes as they stream; enforces every size promise.

    ``expected_length`` is the wire length announced by Content-Length (None when the body is
    content-coded or unannounced); ``expected_size`` and ``expected_sha256`` are the caller's.
    ``media_limit``: ``max_bytes`` is vLLM's media download limit; ``budget`` is charged for
    every chunk (after the size checks, as vLLM does). ``redacted=False``: ``url`` is the
    response's own URL, redacted only when a message needs it (most bodies never fail).
    """

    __slots__ = ("_hash", "_url", "_url_redacted", "budget", "expected_length",
                 "expected_sha256", "expected_size", "max_bytes", "media_limit", "received")

    def __init__(
        self,
        url: str | AnyURL,
        expected_length: int | None = None,
        max_bytes: int | None = None,
        expected_size: int | None = None,
        expected_sha256: str | None = None,
        hash_body: bool = False,
        offset: int = 0,
        hasher: hashlib._Hash | None = None,
        media_limit: bool = False,
        budget: ByteBudget | None = None,
        redacted: bool = True,
    ) -> None:
        self._url = url
        self._url_redacted = redacted
        self.expected_length = expected_length
        self.max_bytes = max_bytes
        self.media_limit = media_limit
        self.budget = budget
        self.expected_size = expected_size
        self.expected_sha256 = expected_sha256.lower() if expected_sha256 else None
        self.received = offset
        want_hash = hash_body or expected_sha256 is not None
        self._hash = hasher if hasher is not None else (hashlib.sha256() if want_hash else None)
        if expected_length is None:
            return  # nothing announced: every check below is made as the bytes arrive
        if max_bytes is not None and expected_length > max_bytes:
            refuse_oversized(expected_length, max_bytes, self.url, media=media_limit)
        if expected_size is not None and expected_length != expected_size:
            safe = self.url
            raise ChecksumMismatchError(
                f"{safe} announces {expected_length} bytes, expected {expected_size}", url=safe
            )

    @property
    def url(self) -> str:
        """The response's URL as messages show it (redacted on first use when given raw)."""
        url = self._url
        if not self._url_redacted or not isinstance(url, str):
            url = self._url = safe_url(url, False)
            self._url_redacted = True
        return url

    def read_size(self, chunk_size: int) -> int:
        """How much to read next: ``chunk_size``, but never past ``max_bytes + 1`` in all, so
        an oversized body is noticed after reading exactly one byte too many (fault F16)."""
        if self.max_bytes is None:
            return chunk_size
        return max(1, min(chunk_size, self.max_bytes + 1 - self.received))

    def feed(self, chunk: bytes | memoryview) -> None:
        """Account for one chunk; raise as soon as a limit is passed (stop at max_bytes + 1)."""
        self.received += len(chunk)
        if self.max_bytes is not None and self.received > self.max_bytes:
            # F16: the body is refused at its first byte past the cap, however much of it the
            # HTTP library had buffered into this chunk (aiohttp hands over up to ~64 KiB+)
            self.received = self.max_bytes + 1
            raise size_exceeded(self.max_bytes, self.received, self.url, media=self.media_limit)
        if self.expected_size is not None and self.received > self.expected_size:
            raise ChecksumMismatchError(
                f"body of {self.url} is larger than expected_size={self.expected_size}",
                url=self.url,
            )
        if self.budget is not None:
            charge(self.budget, len(chunk), self.url)
        if self._hash is not None:
            self._hash.update(chunk)

    @property
    def sha256(self) -> str | None:
        return self._hash.hexdigest() if self._hash is not None else None

    def finish(self) -> None:
        """Check the complete body against every promise made about it."""
        if self.expected_length is not None and self.received < self.expected_length:
            raise TruncatedBodyError(
                f"body of {self.url} ended after {self.received} of {self.expected_length} bytes",
                url=self.url,
                received=self.received,
            )
        if self.expected_size is not None and self.received != self.expected_size:
            raise TruncatedBodyError(
                f"body of {self.url} has {self.received} bytes, expected {self.expected_size}",
                url=self.url,
                received=self.received,
            )
        if self.expected_sha256 is not None and (digest := self.sha256) != self.expected_sha256:
            raise ChecksumMismatchError(
                f"sha256 of {self.url} is {digest}, expected {self.expected_sha256}", url=self.url
            )
