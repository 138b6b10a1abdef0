"""Parallel ranged downloads: range support, splitting, connection count, part resume."""

from __future__ import annotations

import itertools

import pytest

from vllm_fetch.core.ranges import (
    PartProgress,
    auto_connections,
    part_response_ok,
    piece_count,
    range_header,
    remaining_range,
    split_ranges,
    supports_ranges,
)

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, {"Accept-Ranges": "bytes"}, True),
        (200, {"accept-ranges": "Bytes"}, True),
        (200, {"Accept-Ranges": "none, bytes"}, True),
        (200, {"Accept-Ranges": "none"}, False),
        (200, {"Accept-Ranges": "bytesx"}, False),
        (200, {}, False),
        (206, {}, True),
        (404, {}, False),
    ],
)
def test_supports_ranges(status: int, headers: dict[str, str], expected: bool) -> None:
    assert supports_ranges(status, headers) is expected


PRIMES = [2, 3, 7, 13, 101, 8 * MIB + 7, 64 * MIB + 3]
MULTIPLES = [8 * MIB, 16 * MIB, 64 * MIB, 256 * MIB, 1024 * MIB]
SIZES = [0, 1, 2, 100, 8 * MIB - 1, 8 * MIB + 1, 17 * MIB, 1000 * MIB + 12345, *PRIMES, *MULTIPLES]


@pytest.mark.parametrize(
    ("total", "parts", "min_part"),
    list(itertools.product(SIZES, [1, 2, 3, 7, 8, 16], [1, 3, 8 * MIB])),
)
def test_split_ranges_covers_exactly(total: int, parts: int, min_part: int) -> None:
    ranges = split_ranges(total, parts, min_part)
    if total == 0:
        assert ranges == []
        return
    assert 1 <= len(ranges) <= parts
    assert ranges[0][0] == 0
    assert ranges[-1][1] == total - 1
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert start == end + 1  # contiguous: no gap, no overlap
    sizes = [end - start + 1 for start, end in ranges]
    assert sum(sizes) == total
    assert all(size >= min_part for size in sizes[:-1])
    if total >= min_part:
        assert all(size >= min_part for size in sizes)
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    ("total", "parts", "expected"),
    [
        (1, 8, [(0, 0)]),
        (10, 3, [(0, 9)]),  # below min_part: a single range
        (16 * MIB, 8, [(0, 8 * MIB - 1), (8 * MIB, 16 * MIB - 1)]),
        (64 * MIB, 1, [(0, 64 * MIB - 1)]),
        (64 * MIB, 8, [(i * 8 * MIB, (i + 1) * 8 * MIB - 1) for i in range(8)]),
    ],
)
def test_split_ranges_examples(total: int, parts: int, expected: list[tuple[int, int]]) -> None:
    assert split_ranges(total, parts) == expected


def test_split_ranges_spreads_the_remainder() -> None:
    assert split_ranges(10, 3, min_part=1) == [(0, 3), (4, 6), (7, 9)]


@pytest.mark.parametrize(("total", "parts", "min_part"), [(-1, 2, 1), (10, 0, 1), (10, 2, 0)])
def test_split_ranges_rejects_bad_arguments(total: int, parts: int, min_part: int) -> None:
    with pytest.raises(ValueError):
        split_ranges(total, parts, min_part)


@pytest.mark.parametrize(
    ("total", "accepts_ranges", "max_connections", "expected"),
    [
        (None, True, 8, 1),
        (10 * 1024 * MIB, False, 8, 1),
        (0, True, 8, 1),
        (64 * MIB - 1, True, 8, 1),
        (64 * MIB, True, 8, 2),
        (96 * MIB - 1, True, 8, 2),
        (96 * MIB, True, 8, 3),
        (128 * MIB, True, 8, 4),
        (256 * MIB, True, 8, 8),
        (10 * 1024 * MIB, True, 8, 8),
        (10 * 1024 * MIB, True, 16, 16),
        (10 * 1024 * MIB, True, 1, 1),
        (128 * MIB, True, 2, 2),
    ],
)
def test_auto_connections(
    total: int | None, accepts_ranges: bool, max_connections: int, expected: int
) -> None:
    got = auto_connections(total, accepts_ranges=accepts_ranges, max_connections=max_connections)
    assert got == expected


def test_auto_connections_agrees_with_split_ranges() -> None:
    for total in [64 * MIB, 100 * MIB, 256 * MIB, 5000 * MIB]:
        n = auto_connections(total, accepts_ranges=True)
        assert len(split_ranges(total, n)) == n


def test_auto_connections_rejects_zero_cap() -> None:
    with pytest.raises(ValueError):
        auto_connections(MIB, accepts_ranges=True, max_connections=0)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [(0, 0, "bytes=0-0"), (0, 99, "bytes=0-99"), (100, 199, "bytes=100-199")],
)
def test_range_header(start: int, end: int, expected: str) -> None:
    assert range_header(start, end) == expected


@pytest.mark.parametrize(("start", "end"), [(-1, 5), (5, 4)])
def test_range_header_rejects_bad_ranges(start: int, end: int) -> None:
    with pytest.raises(ValueError):
        range_header(start, end)


@pytest.mark.parametrize(
    ("part", "written", "expected"),
    [
        ((0, 99), 0, (0, 99)),
        ((0, 99), 1, (1, 99)),
        ((0, 99), 99, (99, 99)),
        ((0, 99), 100, None),
        ((100, 199), 50, (150, 199)),
        ((5, 5), 0, (5, 5)),
        ((5, 5), 1, None),
    ],
)
def test_remaining_range(
    part: tuple[int, int], written: int, expected: tuple[int, int] | None
) -> None:
    assert remaining_range(part, written) == expected


@pytest.mark.parametrize("written", [-1, 101])
def test_remaining_range_rejects_impossible_counts(written: int) -> None:
    with pytest.raises(ValueError):
        remaining_range((0, 99), written)


def test_part_progress_advances_to_done() -> None:
    part = PartProgress(100, 199)
    assert part.remaining == (100, 199)
    part = part.advanced(60)
    assert (part.written, part.remaining) == (60, (160, 199))
    assert part.advanced(40).remaining is None


ETAG = '"v1"'


@pytest.mark.parametrize(
    ("status", "headers", "etag", "ok"),
    [
        (206, {"Content-Range": "bytes 100-199/1000"}, None, True),
        (206, {"content-range": "bytes 100-199/1000", "ETag": ETAG}, ETAG, True),
        (206, {"Content-Range": "bytes 100-199/1000"}, ETAG, True),
        (206, {"Content-Range": "bytes 100-199/1000", "ETag": '"v2"'}, ETAG, False),  # F8
        (206, {"Content-Range": "bytes 100-199/1000", "ETag": '"v2"'}, 'W/"v1"', True),
        (206, {"Content-Range": "bytes 100-199/2000"}, None, False),
        (206, {"Content-Range": "bytes 100-199/*"}, None, False),
        (206, {"Content-Range": "bytes 100-150/1000"}, None, False),
        (206, {"Content-Range": "bytes 0-199/1000"}, None, False),
        (206, {}, None, False),
        (200, {"Content-Length": "1000"}, None, False),  # F7: a whole body never fills a part
        (416, {"Content-Range": "bytes */1000"}, None, False),
    ],
)
def test_part_response_ok(status: int, headers: dict[str, str], etag: str | None, ok: bool) -> None:
    assert part_response_ok((100, 199), 1000, status, headers, etag=etag) is ok


@pytest.mark.parametrize(
    ("total", "connections", "expected"),
    [
        (4 * MIB, 4, 4),  # small: one piece per connection
        (256 * MIB, 8, 16),  # 16 MiB pieces
        (1024 * MIB, 8, 32),  # capped at 4 per connection
        (0, 2, 2),
    ],
)
def test_piece_count(total: int, connections: int, expected: int) -> None:
    assert piece_count(total, connections) == expected


def test_piece_count_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        piece_count(10, 0)
