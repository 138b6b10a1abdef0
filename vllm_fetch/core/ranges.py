"""Parallel ranged download planning (pure): whether to split, how, and which answers to trust."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .body import header
from .resume import is_strong_etag, parse_content_range

MIB = 1024 * 1024
#: Below this size one connection is as fast as several (no split).
MIN_PARALLEL_SIZE = 64 * MIB
#: ``auto_connections`` opens one connection per this many bytes.
BYTES_PER_CONNECTION = 32 * MIB
DEFAULT_MIN_PART = 8 * MIB


def supports_ranges(status: int, headers: Mapping[str, str]) -> bool:
    """True when the origin serves byte ranges: ``Accept-Ranges: bytes`` or a 206 answer."""
    if status == 206:
        return True
    value = header(headers, "Accept-Ranges") or ""
    return "bytes" in (unit.strip().lower() for unit in value.split(","))


def split_ranges(total: int, parts: int, min_part: int = DEFAULT_MIN_PART) -> list[tuple[int, int]]:
    """Inclusive ``(start, end)`` ranges covering ``[0, total)`` exactly, in order, no overlap.

    At most ``parts`` ranges, each at least ``min_part`` bytes unless ``total`` itself is smaller
    (then one range). Sizes differ by at most one byte. ``total == 0`` gives ``[]``.
    """
    if total < 0 or parts < 1 or min_part < 1:
        raise ValueError(f"split_ranges: bad total={total} parts={parts} min_part={min_part}")
    if total == 0:
        return []
    count = max(1, min(parts, total // min_part))
    base, extra = divmod(total, count)
    ranges: list[tuple[int, int]] = []
    start = 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        ranges.append((start, start + size - 1))
        start += size
    return ranges


def auto_connections(total: int | None, *, accepts_ranges: bool, max_connections: int = 8) -> int:
    """How many connections to use when the caller did not say.

    1 when the size is unknown, the origin does not serve ranges, or the file is under 64 MiB.
    Otherwise one connection per 32 MiB, capped at ``max_connections`` (64 MiB -> 2,
    128 MiB -> 4, 256 MiB and up -> 8).
    """
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections}")
    if total is None or not accepts_ranges or total < MIN_PARALLEL_SIZE:
        return 1
    return max(1, min(max_connections, total // BYTES_PER_CONNECTION))


#: Preferred size of one ranged request of a parallel download.
PIECE_SIZE = 16 * MIB
#: At most this many pieces per connection.
MAX_PIECES_PER_CONNECTION = 4


def piece_count(total: int, connections: int, *, piece_size: int = PIECE_SIZE) -> int:
    """How many pieces to cut a file into for ``connections`` workers pulling them in order.

    At least one per connection; more (about ``piece_size`` each, up to 4 per connection) for
    big files, so pieces complete roughly in file order: the sha256 can then follow the
    contiguous prefix while the download runs instead of re-reading the file at the end.
    """
    if connections < 1 or piece_size < 1 or total < 0:
        raise ValueError(f"piece_count: bad total={total} connections={connections}")
    return max(connections, min(connections * MAX_PIECES_PER_CONNECTION, total // piece_size))


def range_header(start: int, end: int) -> str:
    """The ``Range`` header value for the inclusive byte range ``start..end``."""
    if start < 0 or end < start:
        raise ValueError(f"bad byte range {start}-{end}")
    return f"bytes={start}-{end}"


def remaining_range(part: tuple[int, int], written: int) -> tuple[int, int] | None:
    """The rest of inclusive ``part`` once ``written`` of its bytes are on disk; None if done."""
    start, end = part
    if written < 0 or written > end - start + 1:
        raise ValueError(f"{written} bytes written does not fit part {start}-{end}")
    if start + written > end:
        return None
    return start + written, end


@dataclass(frozen=True)
class PartProgress:
    """One part of a parallel download and how many of its bytes are on disk."""

    start: int
    end: int
    written: int = 0

    @property
    def remaining(self) -> tuple[int, int] | None:
        """The range still to fetch, or None when the part is complete."""
        return remaining_range((self.start, self.end), self.written)

    def advanced(self, nbytes: int) -> PartProgress:
        """This part after ``nbytes`` more bytes were written."""
        return PartProgress(self.start, self.end, self.written + nbytes)


def part_response_ok(
    part: tuple[int, int],
    total: int,
    status: int,
    headers: Mapping[str, str],
    *,
    etag: str | None = None,
) -> bool:
    """Whether a response to ``range_header(*part)`` is exactly that part of the same resource.

    Only a 206 whose Content-Range is ``part`` of ``total`` qualifies (a 200 carries the whole
    body and must not be written into a part). When ``etag`` is strong, the response's ETag, if
    any, must equal it so parts from two versions are never assembled (F8).
    """
    if status != 206:
        return False
    if parse_content_range(header(headers, "Content-Range")) != (*part, total):
        return False
    got = header(headers, "ETag")
    return not (is_strong_etag(etag) and got is not None and got != etag)


__all__ = [
    "BYTES_PER_CONNECTION",
    "DEFAULT_MIN_PART",
    "MAX_PIECES_PER_CONNECTION",
    "MIN_PARALLEL_SIZE",
    "PIECE_SIZE",
    "PartProgress",
    "auto_connections",
    "part_response_ok",
    "piece_count",
    "range_header",
    "remaining_range",
    "split_ranges",
    "supports_ranges",
]
