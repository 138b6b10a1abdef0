"""HTTP-dates (pure): one parser for every header that carries one (RFC 9110 §5.6.7)."""

from __future__ import annotations

from datetime import timezone
from email.utils import parsedate_to_datetime


def parse_http_date(value: str | None) -> float | None:
    """Unix time of an HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms);
    None when absent or invalid. A date without a zone is UTC, as HTTP-dates always are."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
        if when.tzinfo is None:  # asctime form or "-0000"
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None


__all__ = ["parse_http_date"]
