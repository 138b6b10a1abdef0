"""One download call's state, shared by the sync and async engines (no network, no asyncio).

The engines open connections and move bytes; every decision about them is made here, with the
pure core: which Range/If-Range to send (``core.resume.plan_request``), what an answer means
(``core.resume.on_response``, ``core.ranges.part_response_ok``), whether to split
(``core.ranges``). File work goes through :class:`~vllm_fetch.download.partials.Partial`.

sha256 (only with ``expected_sha256`` or ``FetchRequest.hash_body``, which the cache sets): a
sequential stream is hashed as it arrives (a resumed one re-reads its local prefix once, or
keeps the hasher in memory between attempts of one call). A parallel download is cut into more
pieces than connections, pulled in file order, and its sha256 follows the contiguous prefix on
disk while the download runs (``hash_ahead``): that re-reads each byte once from the page
cache, overlapped with the transfer, so at the end only the last pieces are left to hash.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from ..core.body import BodyMeter, is_encoded, parse_content_length
from ..core.ranges import (
    DEFAULT_MIN_PART,
    MIN_PARALLEL_SIZE,
    PartProgress,
    auto_connections,
    part_response_ok,
    piece_count,
    range_header,
    split_ranges,
)
from ..core.request import FetchRequest
from ..core.responses import check_status
from ..core.results import DownloadResult
from ..core.resume import (
    PartialState,
    ResumeAction,
    header_value,
    on_response,
    parse_content_range,
    plan_request,
    validator_for,
)
from ..core.urls import redact_url
from ..errors import IntegrityError, TruncatedBodyError
from ..files import preallocate
from .options import DownloadOptions
from .partials import Partial
from .progress import Progress

#: With an explicit ``connections=N``, parts may be this small (the automatic choice uses 8 MiB).
MIN_EXPLICIT_PART = 256 * 1024
#: Parallel part progress is written to the sidecar after this many new bytes (for kill -9),
#: or after 1/16 of the file when that is less (but never more often than every 64 KiB).
CHECKPOINT_BYTES = 32 * 1024 * 1024
MIN_CHECKPOINT_BYTES = 64 * 1024
#: Read size of one part's response (aiohttp: its buffer, whose high-water mark is twice this;
#: requests: its chunk size): up to 8 parts read at once, so this bounds peak memory.
PART_READ_BUFSIZE = 256 * 1024
#: ``hash_ahead`` waits for this many new contiguous bytes before reading them back.
HASH_STEP = 1024 * 1024


class RangeRefused(Exception):
    """A part's answer is not exactly that part of the same file: fall back to one stream."""


class Step(enum.Enum):
    STREAM = "stream"  # write this body from ``Stream.position``
    PARALLEL = "parallel"  # split: this body is part 0, fetch the other parts
    DONE = "done"  # the partial already holds the whole verified file (416)
    AGAIN = "again"  # the partial was discarded: send the request again


@dataclass
class Stream:
    """A body being written: where the next byte goes and the meter checking it."""

    step: Step
    position: int
    meter: BodyMeter
    limit: int | None = None  # absolute end (exclusive) for part 0 of a split download
    hasher: hashlib._Hash | None = None  # the running sha256 of bytes [0, position)
    total: int | None = None  # the file's full size, when the origin said


class Transfer:
    """Everything one call knows about its download, across retries and connections."""

    def __init__(self, req: FetchRequest, partial: Partial, options: DownloadOptions,
                 progress: Progress) -> None:
        self.req = req
        #: sha256 only when asked (``hash_body``, e.g. by the cache) or checked (expected_sha256)
        self.hashing = req.hash_body or req.expected_sha256 is not None
        self.partial = partial
        self.options = options
        self.progress = progress
        self.safe_url = redact_url(req.url)
        # No probe when one stream is certain: forced, or a known size too small to split.
        small = req.expected_size is not None and req.expected_size < MIN_PARALLEL_SIZE
        self.split_allowed = options.connections != 1 and not (
            options.connections is None and small)
        self.parts: list[PartProgress] | None = None
        self.total: int | None = None
        self.workers = 1  # connections for the parts
        self._claimed: set[int] = set()
        self._hasher = hashlib.sha256()
        self._hashed = 0
        self._hash_lock = threading.Lock()
        self._hash_buffer = bytearray()  # allocated on first use (parallel downloads only)
        self._requested = 0
        self._probing = False
        self._lock = threading.Lock()
        self._unsaved = 0
        self._checkpoint = CHECKPOINT_BYTES
        self._final: tuple[int, dict[str, str], str] = (200, {}, req.url)

    # -- the next request ------------------------------------------------------------------
    def next_request(self) -> FetchRequest | None:
        """The whole-file request to send, or None when split parts are pending (then every
        unfinished part is up for grabs again, whoever had it in a failed attempt)."""
        if self.parts is not None or self._resume_parts():
            with self._lock:
                self._claimed.clear()
            return None
        offset = self.partial.contiguous()
        state = self.partial.state
        headers = plan_request(dataclasses.replace(state, offset=offset)) if state else {}
        self._requested = offset if headers else 0
        self._probing = not headers and self.split_allowed
        if self._probing:
            headers = {"Range": "bytes=0-"}
        return self._with(headers)

    def _with(self, headers: Mapping[str, str]) -> FetchRequest:
        return dataclasses.replace(self.req, headers={**self.req.headers, **headers})

    def _resume_parts(self) -> bool:
        state = self.partial.state
        if state is None or state.parts is None or not self.split_allowed:
            return False
        if validator_for(state) is None or self.partial.size() != state.total:
            self.partial.reset()
            return False
        self.parts = [PartProgress(*part) for part in state.parts]
        self.total = state.total
        self._checkpoint = _checkpoint_every(state.total)
        self.workers = min(len(self.parts), self.options.connections
                           or auto_connections(state.total, accepts_ranges=True))
        self._claimed.clear()
        self.progress.start(self.total, sum(p.written for p in self.parts))
        return True

    # -- the answer ------------------------------------------------------------------------
    def on_response(self, status: int, headers: Mapping[str, str], url: str) -> Stream:
        """What to do with a whole-file answer (raises for an error status)."""
        self._final = (status, dict(headers), url)
        state = self.partial.state or PartialState(0, None, None, None, self.req.url)
        if self._probing:
            self._probing = False
            # never probe again after an unusable answer; coded ranges count coded bytes
            self.split_allowed = status == 206 and not is_encoded(headers)
            split = self._split(status, headers)
            if split is not None:
                return split
        decision = on_response(state, self._requested, status, headers)
        if decision.action is ResumeAction.FAIL:
            check_status(status, redact_url(url), headers=dict(headers))
            decision = on_response(state, self._requested, 200, headers)
        if decision.action is ResumeAction.DISCARD_AND_RETRY:
            self.partial.reset()
            return Stream(Step.AGAIN, 0, BodyMeter(self.safe_url))
        if decision.action is ResumeAction.VERIFY_EXISTING:
            return self._verify_existing(decision.offset)
        if decision.offset == 0:
            self.partial.reset()
        hasher = self._hasher_at(decision.offset)
        meter = self._meter(headers, decision.offset, hasher)
        self.partial.save(decision.state_for(self.req.url))
        self.progress.start(decision.total, decision.offset)
        total = None if is_encoded(headers) else decision.total  # a coded length is no size
        return Stream(Step.STREAM, decision.offset, meter, hasher=hasher, total=total)

    def _hasher_at(self, offset: int) -> hashlib._Hash | None:
        if not self.hashing:
            return None
        return self.partial.hasher_at(offset) if offset else hashlib.sha256()

    def _meter(self, headers: Mapping[str, str], offset: int,
               hasher: hashlib._Hash | None) -> BodyMeter:
        length = parse_content_length(headers, self.safe_url)
        wire = None if is_encoded(headers) or length is None else offset + length
        return BodyMeter(self.safe_url, expected_length=wire, max_bytes=self.req.max_bytes,
                         expected_size=self.req.expected_size,
                         expected_sha256=self.req.expected_sha256, offset=offset, hasher=hasher)

    def _verify_existing(self, size: int) -> Stream:
        meter = BodyMeter(self.safe_url, expected_size=self.req.expected_size,
                          expected_sha256=self.req.expected_sha256, offset=size,
                          hasher=self._hasher_at(size))
        try:
            meter.finish()
        except IntegrityError:
            self.partial.reset()
            return Stream(Step.AGAIN, 0, BodyMeter(self.safe_url))
        return Stream(Step.DONE, size, meter)

    def _split(self, status: int, headers: Mapping[str, str]) -> Stream | None:
        """Split when the probe's 206 covers the whole file and more than one part pays."""
        parsed = parse_content_range(header_value(headers, "Content-Range"))
        if status != 206 or parsed is None or parsed[0] != 0 or parsed[2] is None:
            return None
        if is_encoded(headers):  # ranges of coded bytes cannot place decoded ones
            return None
        total = parsed[2]
        wanted = self.options.connections or auto_connections(total, accepts_ranges=True)
        min_part = MIN_EXPLICIT_PART if self.options.connections else DEFAULT_MIN_PART
        ranges = split_ranges(total, piece_count(total, wanted), min_part)
        if len(ranges) < 2 or parsed[1] != total - 1:
            return None
        self.workers = min(wanted, len(ranges))
        # The size promises are checked before a byte is fetched.
        BodyMeter(self.safe_url, expected_length=total, max_bytes=self.req.max_bytes,
                  expected_size=self.req.expected_size)
        self.partial.reset()
        preallocate(self.partial.open(), total, self.partial.path)
        self.total = total
        self._checkpoint = _checkpoint_every(total)
        self.parts = [PartProgress(start, end) for start, end in ranges]
        self._claimed = {0}  # part 0 is the head of the probe's body
        state = PartialState(0, header_value(headers, "ETag"),
                             header_value(headers, "Last-Modified"), total, self.req.url,
                             tuple((p.start, p.end, 0) for p in self.parts))
        self.partial.save(state)
        self.progress.start(total, 0)
        return Stream(Step.PARALLEL, 0, BodyMeter(self.safe_url), limit=ranges[0][1] + 1)

    # -- writing ---------------------------------------------------------------------------
    def write(self, stream: Stream, data: bytes | memoryview) -> None:
        """Write at the stream's position (positional writes: parts share one file)."""
        self.partial.write(data, stream.position)
        self.advance(stream, len(data))

    def advance(self, stream: Stream, nbytes: int) -> None:
        """Count ``nbytes`` written at the stream's position."""
        stream.position += nbytes
        self.progress.add(nbytes)

    def interrupted(self, stream: Stream) -> None:
        """Keep the running hash for the next attempt when it covers exactly the bytes on disk."""
        if stream.hasher is not None and stream.meter.received == self.partial.size():
            self.partial.hashed = (stream.meter.received, stream.hasher)

    # -- parallel parts --------------------------------------------------------------------
    def pending_parts(self) -> list[int]:
        assert self.parts is not None
        return [i for i, part in enumerate(self.parts) if part.remaining is not None]

    def claim_part(self) -> int | None:
        """The first unfinished part nobody works on (parts are taken in file order)."""
        with self._lock:
            for index in self.pending_parts():
                if index not in self._claimed:
                    self._claimed.add(index)
                    return index
        return None

    def _frontier(self) -> int:
        """Bytes on disk contiguous from 0 (whole parts, then the next part's written head)."""
        assert self.parts is not None
        for part in self.parts:
            if part.remaining is not None:
                return part.start + part.written
        return self.total or 0

    def hash_ahead(self, *, final: bool = False) -> None:
        """Extend the running sha256 over newly contiguous bytes (skipped if another thread is
        at it, unless ``final``: then wait and hash up to the end)."""
        if not self.hashing or not self._hash_lock.acquire(blocking=final):
            return
        try:
            while True:
                with self._lock:
                    frontier = self._frontier()
                todo = frontier - self._hashed
                if todo <= 0 or (not final and todo < HASH_STEP):
                    return
                if not self._hash_buffer:
                    self._hash_buffer = bytearray(HASH_STEP)
                block = self.partial.read_into(self._hash_buffer, self._hashed,
                                               min(todo, HASH_STEP))
                self._hasher.update(block)
                self._hashed += len(block)
        finally:
            self._hash_lock.release()

    def part_request(self, index: int) -> FetchRequest | None:
        """Range (+ If-Range) for the rest of part ``index``; None when it is complete."""
        assert self.parts is not None
        rest = self.parts[index].remaining
        if rest is None:
            return None
        headers = {"Range": range_header(*rest)}
        state = self.partial.state
        validator = validator_for(state) if state else None
        if validator is not None:
            headers["If-Range"] = validator
        return dataclasses.replace(self._with(headers), read_bufsize=PART_READ_BUFSIZE,
                                   chunk_size=min(self.req.chunk_size, PART_READ_BUFSIZE))

    def part_stream(self, index: int, status: int, headers: Mapping[str, str]) -> Stream:
        """Accept an answer only if it is exactly the asked range of the same file."""
        assert self.parts is not None and self.total is not None
        rest = self.parts[index].remaining
        assert rest is not None
        state = self.partial.state
        if not part_response_ok(rest, self.total, status, headers,
                                etag=state.etag if state else None):
            raise RangeRefused(f"part {rest[0]}-{rest[1]}: HTTP {status} "
                               f"{header_value(headers, 'Content-Range')!r}")
        length = rest[1] - rest[0] + 1
        meter = BodyMeter(self.safe_url, expected_length=length, max_bytes=length)
        return Stream(Step.PARALLEL, rest[0], meter)

    def write_part(self, index: int, stream: Stream, data: bytes | memoryview) -> None:
        self.partial.write(data, stream.position)
        self.advance_part(index, stream, len(data))
        self.hash_ahead()

    def advance_part(self, index: int, stream: Stream, nbytes: int) -> None:
        stream.position += nbytes
        self.part_written(index, nbytes)

    def part_written(self, index: int, nbytes: int) -> None:
        """Count bytes of part ``index`` now on disk; checkpoint the sidecar now and then."""
        assert self.parts is not None
        with self._lock:
            self.parts[index] = self.parts[index].advanced(nbytes)
            self._unsaved += nbytes
            if self._unsaved >= self._checkpoint:
                self._unsaved = 0
                self._save_parts()
        self.progress.add(nbytes)

    def _save_parts(self) -> None:
        state = self.partial.state
        if state is not None and self.parts is not None and validator_for(state) is not None:
            parts = tuple((p.start, p.end, p.written) for p in self.parts)
            self.partial.save(dataclasses.replace(state, parts=parts))

    def fall_back(self) -> None:
        """The origin would not serve the parts: forget them, fetch one stream from zero."""
        self.parts = None
        self._hasher, self._hashed = hashlib.sha256(), 0
        self.split_allowed = False
        self.partial.reset()

    # -- endings ---------------------------------------------------------------------------
    def finish(self, stream: Stream) -> DownloadResult:
        """Verify (parallel: hash the file in order) and publish."""
        meter = stream.meter
        if stream.step is Step.PARALLEL:
            assert self.total is not None
            self.hash_ahead(final=True)
            meter = BodyMeter(self.safe_url, expected_size=self.req.expected_size,
                              expected_sha256=self.req.expected_sha256, offset=self.total,
                              hasher=self._hasher if self.hashing else None)
            meter.finish()
        elif stream.total is not None and meter.received != stream.total:
            raise TruncatedBodyError(
                f"{self.safe_url}: {meter.received} of {stream.total} bytes arrived",
                url=self.safe_url, received=meter.received)
        path = self.partial.publish()
        status, headers, url = self._final
        return DownloadResult(path, meter.received, meter.sha256,
                              200 if status in (206, 416) else status, headers, url)

    def abandon(self, error: BaseException | None) -> None:
        """After the call failed: checkpoint parts, keep the partial for resume or remove it."""
        if self.parts is not None:
            with self._lock:
                self._save_parts()
        self.partial.abandon(error)


def _checkpoint_every(total: int | None) -> int:
    return max(MIN_CHECKPOINT_BYTES, min(CHECKPOINT_BYTES, (total or 0) // 16))


def parts_done(transfer: Transfer) -> Stream:
    """The stream to finish a split download with once every part is on disk."""
    if transfer.pending_parts():
        raise IntegrityError(f"parts of {transfer.safe_url} are missing", url=transfer.safe_url)
    return Stream(Step.PARALLEL, transfer.total or 0, BodyMeter(transfer.safe_url))
