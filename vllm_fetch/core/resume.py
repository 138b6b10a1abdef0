"""Resume planning (pure): what Range/If-Range to send, and whether an answer may be appended.

A partial download is only ever extended when the origin proves that the bytes it sends belong to
the same representation as the bytes on disk (RFC 9110 §13.1.5 If-Range, §14.4 Content-Range).
Any doubt means starting again: two versions of a file must never be spliced (faults F7-F9).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .body import announced_length, header, is_encoded
from .http_dates import parse_http_date

# RFC 9110 §8.8.3: entity-tag = [ W/ ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text.
_STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e\x80-\xff]*"')
# RFC 9110 §14.4: Content-Range = range-unit SP ( range-resp / unsatisfied-range ).
_CONTENT_RANGE = re.compile(r"bytes[ \t]+([0-9]+)-([0-9]+)/([0-9]+|\*)", re.IGNORECASE)
_UNSATISFIED = re.compile(r"bytes[ \t]+\*/([0-9]+)", re.IGNORECASE)


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"partial state: {key!r} must be a string or null")
    return value


def _optional_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"partial state: {key!r} must be an integer or null")
    return value


@dataclass(frozen=True)
class PartialState:
    """What is known about a partial temp file kept for resume (stored in a JSON sidecar)."""

    offset: int  # bytes on disk, contiguous from 0
    etag: str | None
    last_modified: str | None
    total: int | None
    url: str
    #: Parallel download: ``(start, end, written)`` per part; None for one sequential stream
    #: (then the bytes on disk are contiguous from 0 and the file size is the offset).
    parts: tuple[tuple[int, int, int], ...] | None = None

    def __post_init__(self) -> None:
        if self.offset < 0 or (self.total is not None and not 0 <= self.offset <= self.total):
            raise ValueError(f"partial state: bad offset {self.offset} for total {self.total}")
        if self.parts is not None:
            _check_parts(self.parts, self.total)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_dict` reverses it."""
        data: dict[str, Any] = {
            "offset": self.offset,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "total": self.total,
            "url": self.url,
        }
        if self.parts is not None:
            data["parts"] = [list(part) for part in self.parts]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PartialState:
        """Rebuild from :meth:`to_dict` output; ``ValueError`` on a corrupt sidecar."""
        offset = _optional_int(data, "offset")
        url = data.get("url")
        if offset is None or not isinstance(url, str):
            raise ValueError("partial state: 'offset' and 'url' are required")
        return cls(
            offset=offset,
            etag=_optional_str(data, "etag"),
            last_modified=_optional_str(data, "last_modified"),
            total=_optional_int(data, "total"),
            url=url,
            parts=_parts_from(data.get("parts")),
        )


def _parts_from(value: Any) -> tuple[tuple[int, int, int], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) for n in p) for p in value
    ):
        raise ValueError("partial state: 'parts' must be a list of [start, end, written]")
    return tuple((p[0], p[1], p[2]) for p in value)


def _check_parts(parts: tuple[tuple[int, int, int], ...], total: int | None) -> None:
    """Parts must tile ``[0, total)`` in order, each with a plausible written count."""
    expected_start = 0
    for start, end, written in parts:
        if start != expected_start or end < start or not 0 <= written <= end - start + 1:
            raise ValueError(f"partial state: bad part {start}-{end} written={written}")
        expected_start = end + 1
    if total is None or expected_start != total:
        raise ValueError(f"partial state: parts do not cover the total {total}")


def is_strong_etag(etag: str | None) -> bool:
    """True for a quoted entity-tag without the ``W/`` weakness prefix (RFC 9110 §8.8.3)."""
    return etag is not None and _STRONG_ETAG.fullmatch(etag) is not None


def _strong_equal(a: str | None, b: str | None) -> bool:
    # RFC 9110 §8.8.3.2 strong comparison: both strong and character-for-character identical.
    return is_strong_etag(a) and a == b


def _valid_http_date(value: str | None) -> bool:
    return parse_http_date(value) is not None


def _same_date(a: str, b: str) -> bool:
    when_a, when_b = parse_http_date(a), parse_http_date(b)
    return a == b if when_a is None or when_b is None else when_a == when_b


def _matches(validator: str, etag: str | None, last_modified: str | None) -> bool:
    """Whether a 206's own validators (when present) agree with the If-Range ``validator``."""
    if is_strong_etag(validator):
        return etag is None or _strong_equal(etag, validator)
    return last_modified is None or _same_date(last_modified, validator)


def validator_for(state: PartialState) -> str | None:
    """The If-Range validator: strong ETag, else Last-Modified, else None (cannot resume).

    RFC 9110 §13.1.5 only allows a date in If-Range when it is a *strong* validator (the
    representation was last modified at least a second before the origin's Date). We do not keep
    the original Date, so a date is accepted as is: a change within the same second could go
    unnoticed. The total size check in :func:`on_response` and the final sha256/size verification
    are the backstop. Weak ETags are never used: If-Range requires strong comparison.
    """
    if is_strong_etag(state.etag):
        return state.etag
    if _valid_http_date(state.last_modified):
        return state.last_modified
    return None


def _acts_as_strong(last_modified: str | None, date: str | None) -> bool:
    """RFC 9110 §8.8.2.2: a Last-Modified is strong when the response's Date is at least one
    second later (a change within that second could otherwise go unseen)."""
    modified, now = parse_http_date(last_modified), parse_http_date(date)
    return modified is not None and now is not None and now - modified >= 1


def strong_validators(
    etag: str | None, last_modified: str | None, date: str | None
) -> tuple[str | None, str | None]:
    """Of an answer's validators, those that can prove two answers are of one version: the
    ETag when strong, the Last-Modified when it acts as strong (given the answer's Date)."""
    strong_date = _acts_as_strong(last_modified, date)
    return (etag if is_strong_etag(etag) else None, last_modified if strong_date else None)


def same_validator(state: PartialState, headers: Mapping[str, str]) -> bool:
    """Whether an answer carries the partial's own validator (a part of a split download must:
    a missing or different one may be another version)."""
    if is_strong_etag(state.etag):
        return _strong_equal(header(headers, "ETag"), state.etag)
    last_modified = header(headers, "Last-Modified")
    return (_valid_http_date(state.last_modified) and last_modified is not None
            and _same_date(last_modified, state.last_modified or ""))


def plan_request(state: PartialState | None) -> dict[str, str]:
    """Headers for (re)starting a download: Range + If-Range when the partial can be resumed."""
    if state is None or state.offset == 0:
        return {}
    validator = validator_for(state)
    if validator is None:
        return {}
    return {"Range": f"bytes={state.offset}-", "If-Range": validator}


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``"bytes 100-199/1000"`` -> ``(100, 199, 1000)``; ``/*`` total -> None; invalid -> None.

    Invalid per RFC 9110 §14.4 includes last-pos < first-pos and last-pos >= complete-length.
    """
    match = _CONTENT_RANGE.fullmatch(value.strip()) if value else None
    if match is None:
        return None
    start, end = int(match[1]), int(match[2])
    total = None if match[3] == "*" else int(match[3])
    if end < start or (total is not None and end >= total):
        return None
    return start, end, total


def parse_unsatisfied_range(value: str | None) -> int | None:
    """The complete length from a 416's ``"bytes */1000"``; None when absent or invalid."""
    match = _UNSATISFIED.fullmatch(value.strip()) if value else None
    return int(match[1]) if match else None


class ResumeAction(enum.Enum):
    """What the driver does with the body of a (resume) response."""

    APPEND = "append"  # keep the bytes on disk, write this body at ``offset``
    RESTART = "restart"  # truncate to 0 and take this 200 body from the start
    VERIFY_EXISTING = "verify_existing"  # 416: the local part may be complete; verify it
    DISCARD_AND_RETRY = "discard_and_retry"  # unusable answer: truncate, request again, no Range
    FAIL = "fail"  # not a resume answer: the caller raises a status error (partial kept)


@dataclass(frozen=True)
class ResumeDecision:
    """The verdict on one response, with the validators to store for the next attempt."""

    action: ResumeAction
    offset: int  # where the body is written from (APPEND/RESTART); the local size otherwise
    total: int | None
    etag: str | None
    last_modified: str | None
    reason: str

    def state_for(self, url: str) -> PartialState:
        """The sidecar state to record once writing from ``offset`` starts."""
        return PartialState(self.offset, self.etag, self.last_modified, self.total, url)


def _discard(reason: str) -> ResumeDecision:
    return ResumeDecision(ResumeAction.DISCARD_AND_RETRY, 0, None, None, None, reason)


def _on_partial(
    state: PartialState, requested_offset: int, headers: Mapping[str, str]
) -> ResumeDecision:
    parsed = parse_content_range(header(headers, "Content-Range"))
    if parsed is None:
        return _discard("206 without a valid single Content-Range")
    start, end, total = parsed
    if start != requested_offset:
        return _discard(f"206 starts at {start}, asked for {requested_offset}")
    if total is not None and state.total is not None and total != state.total:
        return _discard(f"206 total {total} differs from the partial's {state.total}")
    length = announced_length(headers)
    if length is not None and length != end - start + 1:
        return _discard(f"206 Content-Length {length} disagrees with Content-Range")
    validator = validator_for(state) if requested_offset else None
    if requested_offset and validator is None:
        return _discard("206 for a partial without a safe validator")
    etag = header(headers, "ETag")
    last_modified = header(headers, "Last-Modified")
    if validator is not None and not _matches(validator, etag, last_modified):
        return _discard("206 carries a different validator than the one sent in If-Range")
    return ResumeDecision(
        ResumeAction.APPEND,
        requested_offset,
        total if total is not None else state.total,
        etag if etag is not None else state.etag,
        last_modified if last_modified is not None else state.last_modified,
        f"206 continues at byte {start}",
    )


def _on_unsatisfiable(
    state: PartialState, requested_offset: int, headers: Mapping[str, str]
) -> ResumeDecision:
    total = parse_unsatisfied_range(header(headers, "Content-Range"))
    if total is None or total != requested_offset:
        return _discard(f"416 with complete length {total}, local part is {requested_offset}")
    if state.total is not None and state.total != total:
        return _discard(f"416 complete length {total} differs from the partial's {state.total}")
    etag = header(headers, "ETag")
    if etag is not None and is_strong_etag(state.etag) and not _strong_equal(etag, state.etag):
        return _discard("416 carries a different ETag than the partial's")
    return ResumeDecision(
        ResumeAction.VERIFY_EXISTING,
        requested_offset,
        total,
        state.etag,
        state.last_modified,
        "416: the local part has the full length; verify it before publishing",
    )


def on_response(
    state: PartialState, requested_offset: int, status: int, headers: Mapping[str, str]
) -> ResumeDecision:
    """Decide what a response to :func:`plan_request`'s headers means for the partial on disk.

    ``requested_offset`` is the Range start actually sent (0 when no Range was sent).

    A content-coded body (an origin that ignored ``Accept-Encoding: identity``) is never
    continued: its ranges count coded bytes while the partial holds decoded ones. A 206 of it
    is discarded; a 200 restarts and records no validator, so nothing resumes from it later.
    """
    if is_encoded(headers) and status in (200, 206):
        if status == 206:
            return _discard("206 of a content-coded body cannot continue decoded bytes")
        return ResumeDecision(ResumeAction.RESTART, 0, None, None, None,
                              "200 content-coded: start from zero, not resumable")
    if status == 206:
        return _on_partial(state, requested_offset, headers)
    if status == 200:
        # The origin ignored Range, or If-Range failed because the resource changed (F7, F8).
        return ResumeDecision(
            ResumeAction.RESTART,
            0,
            announced_length(headers),
            header(headers, "ETag"),
            header(headers, "Last-Modified"),
            "200: full body, start from zero",
        )
    if status == 416:
        return _on_unsatisfiable(state, requested_offset, headers)
    return ResumeDecision(
        ResumeAction.FAIL,
        state.offset,
        state.total,
        state.etag,
        state.last_modified,
        f"HTTP {status} is not an answer to a resume request",
    )


__all__ = [
    "PartialState",
    "ResumeAction",
    "ResumeDecision",
    "is_strong_etag",
    "on_response",
    "parse_content_range",
    "parse_unsatisfied_range",
    "plan_request",
    "same_validator",
    "strong_validators",
    "validator_for",
]
