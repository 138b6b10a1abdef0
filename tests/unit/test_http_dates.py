"""RFC 9110 §5.6.7 HTTP-date parsing: the three formats, and nothing else."""

from __future__ import annotations

import pytest

from vllm_fetch.core.http_dates import parse_http_date

SUNDAY = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", SUNDAY),  # IMF-fixdate
        ("Sunday, 06-Nov-94 08:49:37 GMT", SUNDAY),  # obsolete RFC 850
        ("Sun Nov  6 08:49:37 1994", SUNDAY),  # asctime
        ("Sun Nov 16 08:49:37 1994", SUNDAY + 10 * 86400),
        ("Thu, 29 Feb 2024 23:59:59 GMT", 1709251199.0),
        # RFC 9111 §5.3 / the conformance suite's invalid Expires values: all invalid
        ("Sun, 06 Nov 1994 08:49:37 UTC", None),
        ("Sun, 06 Nov 94 08:49:37 GMT", None),  # 2-digit year
        ("Sun 06 Nov 1994 08:49:37 GMT", None),  # no comma
        ("Sun,  06 Nov 1994 08:49:37 GMT", None),  # extra space
        ("Sun, 06 Nov 1994  08:49:37 GMT", None),
        ("Sun, 06 Nov 1994 8:49:37 GMT", None),  # 1-digit hour
        ("Sun, 06-Nov-1994 08:49:37 GMT", None),  # dashes in the date
        ("Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT", None),  # two lines
        (" Sun, 06 Nov 1994 08:49:37 GMT", None),
        ("sun, 06 nov 1994 08:49:37 gmt", None),  # names are case-sensitive
        ("Sun, 31 Feb 1994 08:49:37 GMT", None),  # no such day
        ("Sun, 06 Nov 1994 24:00:00 GMT", None),
        ("0", None),
        ("-1", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_http_date(value: str | None, expected: float | None) -> None:
    assert parse_http_date(value) == expected


def test_rfc850_two_digit_year_more_than_50_years_ahead_is_the_past_century() -> None:
    now_2026 = 1_790_000_000.0
    assert parse_http_date("Friday, 01-Jan-99 00:00:00 GMT", now_2026) == 915148800.0  # 1999
    assert parse_http_date("Thursday, 01-Jan-70 00:00:00 GMT", now_2026) == 3155760000.0  # 2070
