"""HTTP-date parsing as RFC 9110 §5.6.7 defines it (pure), strictly.

The three formats a recipient must accept: IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``),
the obsolete RFC 850 form (``Sunday, 06-Nov-94 08:49:37 GMT``) and asctime
(``Sun Nov  6 08:49:37 1994``). Anything else — ``UTC`` for ``GMT``, a 2-digit year or dashes
in the IMF form, a missing comma, extra spaces, a 1-digit hour, several values — is invalid,
which for ``Expires`` means "already expired" (RFC 9111 §5.3). ``email.utils`` guesses at all
of these, so it is not used for cache decisions.
"""

from __future__ import annotations

import calendar
import re
from datetime import timezone
from email.utils import parsedate_to_datetime
from functools import lru_cache

_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "(" + "|".join(_MONTHS) + ")"
_TIME = r"(\d\d):(\d\d):(\d\d)"
_IMF = re.compile(rf"{_DAY}, (\d\d) {_MONTH} (\d{{4}}) {_TIME} GMT")
_RFC850 = re.compile(rf"{_LONG_DAY}, (\d\d)-{_MONTH}-(\d\d) {_TIME} GMT")
_ASCTIME = re.compile(rf"{_DAY} {_MONTH} ([ \d]\d) {_TIME} (\d{{4}})")
_SECONDS_PER_YEAR = 365.2425 * 86400


@lru_cache(maxsize=1024)
def parse_http_date(value: str | None, now: float | None = None) -> float | None:
    """Unix seconds for a valid HTTP-date, else None. ``now`` places an RFC 850 two-digit year
    (one more than 50 years ahead is in the past century, §5.6.7); None: the year 2000's view.
    """
    if not value:
        return None
    if m := _IMF.fullmatch(value):
        day, month, year, hh, mm, ss = m.groups()
    elif m := _ASCTIME.fullmatch(value):
        month, day, hh, mm, ss, year = m.groups()
    elif m := _RFC850.fullmatch(value):
        day, month, yy, hh, mm, ss = m.groups()
        year = str(_full_year(int(yy), now))
    else:
        return None
    return _timestamp(int(year), _MONTHS.index(month) + 1, int(day), int(hh), int(mm), int(ss))


def _full_year(yy: int, now: float | None) -> int:
    this_year = 2000 if now is None else int(1970 + now // _SECONDS_PER_YEAR)
    year = this_year - this_year % 100 + yy
    return year - 100 if year > this_year + 50 else year


def _timestamp(year: int, month: int, day: int, hh: int, mm: int, ss: int) -> float | None:
    if not 1 <= day <= calendar.monthrange(year, month)[1] or hh > 23 or mm > 59 or ss > 60:
        return None
    return float(calendar.timegm((year, month, day, hh, mm, min(ss, 59), 0, 0, 0)))


def parse_lenient_http_date(value: str | None) -> float | None:
    """Unix seconds for an HTTP-date or anything ``email.utils`` reads as one (a numeric zone,
    a missing comma), else None. Only for a value whose misreading costs nothing but a
    different wait (``Retry-After``); cache and validator decisions use :func:`parse_http_date`.
    """
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime form or "-0000": HTTP-dates are always UTC
        when = when.replace(tzinfo=timezone.utc)
    try:
        return when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


__all__ = ["parse_http_date", "parse_lenient_http_date"]
