"""Range answered from a stored full response (RFC 9110 §14, §13.1.5 If-Range)."""

from __future__ import annotations

import pytest

from vllm_fetch.core.cache_range import ByteRange, if_range_holds, parse_range, partial_lines


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        ("bytes=0-7", 100, (0, 7)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-1000", 100, (0, 99)),  # a suffix longer than the body: all of it
        ("bytes=90-1000", 100, (90, 99)),  # a last past the end is clipped (§14.1.2)
        ("BYTES = 3 - 4", 100, (3, 4)),
        ("bytes=99-99", 100, (99, 99)),
        # what the cache does not answer (the origin does, uncached)
        ("bytes=100-", 100, None),  # unsatisfiable
        ("bytes=5-4", 100, None),  # invalid
        ("bytes=-0", 100, None),
        ("bytes=0-1,5-6", 100, None),  # several ranges
        ("items=0-1", 100, None),  # another unit
        ("bytes=", 100, None),
        ("bytes=0-7", 0, None),
    ],
)
def test_parse_range(value: str, size: int, expected: tuple[int, int] | None) -> None:
    got = parse_range(value, size)
    assert (None if got is None else (got.first, got.last)) == expected


DATE = "Tue, 01 Dec 2026 10:00:00 GMT"
MODIFIED = "Mon, 30 Nov 2026 10:00:00 GMT"


@pytest.mark.parametrize(
    ("value", "stored", "holds"),
    [
        (None, {}, True),
        ('"v1"', {"etag": '"v1"'}, True),
        ('"v2"', {"etag": '"v1"'}, False),
        ('W/"v1"', {"etag": 'W/"v1"'}, False),  # weak tags never match (strong comparison)
        ('"v1"', {"etag": 'W/"v1"'}, False),
        ('"v1"', {}, False),
        (MODIFIED, {"last-modified": MODIFIED, "date": DATE}, True),
        (MODIFIED, {"last-modified": MODIFIED, "date": MODIFIED}, False),  # a weak date
        (DATE, {"last-modified": MODIFIED, "date": DATE}, False),
        ("not a date", {"last-modified": MODIFIED, "date": DATE}, False),
    ],
)
def test_if_range_holds(value: str | None, stored: dict[str, str], holds: bool) -> None:
    assert if_range_holds(value, stored) is holds


def test_partial_lines_replace_the_length_and_add_content_range() -> None:
    lines = (("Content-Type", "image/png"), ("Content-Length", "100"), ("ETag", '"1"'))
    assert partial_lines(lines, ByteRange(0, 7, 100)) == (
        ("Content-Type", "image/png"), ("ETag", '"1"'), ("Content-Range", "bytes 0-7/100"),
        ("Content-Length", "8"))
