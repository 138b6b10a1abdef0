"""Header lines: RFC 9110 §5.3 combining, RFC 9111 §3.1 storing, §3.2 replacing."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from vllm_fetch.core.header_fields import (
    combine,
    combined_view,
    field_lines,
    joined,
    replace_lines,
    storable_lines,
)


def test_field_lines_keep_every_line_of_a_multidict() -> None:
    headers = CIMultiDict([("Vary", ""), ("Vary", "*"), ("ETag", '"1"')])
    assert field_lines(headers) == (("Vary", ""), ("Vary", "*"), ("ETag", '"1"'))


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([("Vary", ""), ("Vary", "*")], {"vary": ", *"}),  # aiohttp's two Vary lines
        ([("Cache-Control", "max-age=1"), ("cache-control", "no-store")],
         {"cache-control": "max-age=1, no-store"}),
        ([("ETag", '"1"')], {"etag": '"1"'}),
        ([], {}),
    ],
)
def test_combine(lines: list[tuple[str, str]], expected: dict[str, str]) -> None:
    assert combine(lines) == expected


def test_joined_keeps_the_first_spelling_of_a_name() -> None:
    assert joined([("X-A", "1"), ("x-a", "2"), ("B", "3")]) == {"X-A": "1, 2", "B": "3"}


def test_combined_view_is_the_mapping_itself_without_repeats() -> None:
    plain = {"A": "1"}
    assert combined_view(plain) is plain
    multi = CIMultiDict([("Vary", "a"), ("Vary", "b")])
    assert combined_view(multi) == {"Vary": "a, b"}


def test_storable_lines_drop_hop_by_hop_connection_named_and_age() -> None:
    lines = [("Connection", "close, X-Private-Hop"), ("X-Private-Hop", "1"),
             ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"), ("TE", "x"),
             ("Upgrade", "h2"), ("Proxy-Authenticate", "Basic"), ("Trailer", "X"),
             ("Age", "10"), ("Content-Security-Policy", "default-src 'none'"),
             ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Frame-Options", "DENY")]
    assert storable_lines(lines) == (
        ("Content-Security-Policy", "default-src 'none'"), ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"), ("X-Frame-Options", "DENY"))


def test_replace_lines_replaces_every_line_of_an_updated_name_except_kept_ones() -> None:
    stored = (("ETag", '"1"'), ("X-A", "old1"), ("X-A", "old2"), ("Content-Length", "9"))
    update = (("x-a", "new"), ("Content-Length", "0"), ("X-B", "b"))
    assert replace_lines(stored, update, frozenset({"content-length"})) == (
        ("ETag", '"1"'), ("Content-Length", "9"), ("x-a", "new"), ("X-B", "b"))
