"""Answering a Range request from a stored full response (pure; RFC 9110 §14, RFC 9111 §3.4).

Only a single satisfiable byte range is answered from the cache (a 206 with Content-Range);
anything else (several ranges, another unit, an unsatisfiable or malformed range) goes to the
origin, and nothing it answers is stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .header_fields import Fields
from .http_dates import parse_http_date

_SPEC = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


@dataclass(frozen=True)
class ByteRange:
    """Inclusive ``first``..``last`` of a body of ``size`` bytes."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.size}"


def parse_range(value: str, size: int) -> ByteRange | None:
    """The single satisfiable range ``value`` asks of ``size`` bytes, else None (§14.1.2)."""
    m = _SPEC.fullmatch(value)
    if m is None or size <= 0:
        return None
    first_text, last_text = m.groups()
    if not first_text:  # suffix: the last N bytes
        if not last_text or int(last_text) == 0:
            return None
        return ByteRange(max(0, size - int(last_text)), size - 1, size)
    first = int(first_text)
    last = size - 1 if not last_text else min(int(last_text), size - 1)
    if first >= size or (last_text and int(last_text) < first):
        return None
    return ByteRange(first, last, size)


def if_range_holds(value: str | None, stored: Mapping[str, str]) -> bool:
    """Whether an ``If-Range`` (RFC 9110 §13.1.5) lets the range be served; true when absent.

    An entity-tag must match the stored ETag by strong comparison (a weak one never does); a
    date must equal the stored Last-Modified exactly, and that must be a strong validator
    (at least one second before the stored Date, §8.8.2.2).
    """
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        etag = stored.get("etag")
        return not value.startswith("W/") and etag is not None and etag.strip() == value
    when = parse_http_date(value)
    modified = parse_http_date(stored.get("last-modified"))
    date = parse_http_date(stored.get("date"))
    return (when is not None and when == modified and date is not None
            and modified is not None and date - modified >= 1)


def partial_lines(lines: Fields, byte_range: ByteRange) -> Fields:
    """The header lines of a 206 cut from a full response's lines."""
    kept = tuple((n, v) for n, v in lines if n.lower() not in ("content-length", "content-range"))
    return (*kept, ("Content-Range", byte_range.content_range),
            ("Content-Length", str(byte_range.length)))


__all__ = ["ByteRange", "if_range_holds", "parse_range", "partial_lines"]
