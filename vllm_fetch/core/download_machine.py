"""One download call as a state machine (pure): it yields effects, runners perform them.

Like the cache flows (``cache/flows.py``), the download is written once as generators of effects:
``Send`` a request (the answer comes back, its body stays open), ``Receive`` that body into the
partial through a :class:`Sink`, ``Truncate`` / ``Preallocate`` / ``SaveState`` / ``HashAhead``
/ ``Publish`` for file work, ``Sleep`` before a retry, ``RunParts`` to run part flows at once.
A failing effect throws its error into the flow. Nothing here opens a socket or a file; the two
runners (``download/sync_runner.py``, ``download/async_runner.py``) only perform effects.

The machine decides everything: what Range/If-Range to send (``core.resume``), what an answer
means, whether to split (``core.ranges``), and every retry. Retries follow one budget per byte
range: the sequential stream has one, each part of a split download its own, each bounded by
``RetryPolicy.max_attempts`` (part 0's budget counts the probe that carried it), all under the
call's deadline. A file is split only when the probe carries a strong validator, and a part is
written only when its answer carries that same validator: never a file stitched from two
versions (fault F21).

sha256 (and the cache's seal), when asked, is never computed from the bytes in flight: it
follows the contiguous prefix on disk (``hash_ahead``, which a runner calls from a helper thread
whenever ``hash_due``), as far behind the writes as it needs to be, for one stream as for the
parts of a split, a resumed partial's prefix included. Whatever is left at the end is hashed
while the file's fsync runs (``HashAhead``): on a machine whose cores are busy with the transfer,
the hash costs the download little time instead of competing with it.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FetchError, FetchTimeoutError, IntegrityError, TruncatedBodyError
from .body import BodyMeter, header, is_encoded, parse_content_length
from .ranges import (
    DEFAULT_MIN_PART,
    MIN_PARALLEL_SIZE,
    PartProgress,
    auto_connections,
    part_response_ok,
    piece_count,
    range_header,
    split_ranges,
)
from .request import FetchRequest
from .responses import check_status
from .results import DownloadResult
from .resume import (
    PartialState,
    ResumeAction,
    on_response,
    parse_content_range,
    plan_request,
    same_validator,
    strong_validators,
    validator_for,
)
from .retry import RetryDecision, RetryPolicy, deadline_error, decide
from .seal import new_sealer
from .seal import remember as remember_seal
from .urls import redact_url

logger = logging.getLogger("vllm_fetch")

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
#: Whole-file requests one attempt may send when the plan changes (a discarded partial, a
#: refused split): a plan change is not a failure, but it must not loop.
MAX_PLAN_CHANGES = 4


# -- effects (what the runners do) -------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    req: FetchRequest  # -> Answer; the response stays open for ``Receive``


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    url: str


@dataclass(frozen=True)
class Receive:
    sink: Sink  # -> None: the open body written through ``sink``, then the response closed


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Truncate:
    """Forget every byte of the partial: size 0, no sidecar."""


@dataclass(frozen=True)
class Preallocate:
    size: int


@dataclass(frozen=True)
class SaveState:
    state: PartialState


@dataclass(frozen=True)
class HashAhead:
    """Call ``Machine.hash_ahead(read, final=True)`` with a reader of the partial (while its
    fsync runs: ``Publish`` fsyncs again, finding little left)."""


@dataclass(frozen=True)
class StartProgress:
    total: int | None
    done: int


@dataclass(frozen=True)
class RunParts:
    """Run ``workers`` :meth:`Machine.part_flow` flows at once (the first takes ``first``, the
    probe's open body, as part 0); -> None, or the first flow's error once all have stopped."""

    workers: int
    first: Sink | None


@dataclass(frozen=True)
class Publish:
    """fsync, rename onto the target, fsync the directory; -> the target path."""


Effect = (Send | Receive | Sleep | Truncate | Preallocate | SaveState | HashAhead
          | StartProgress | RunParts | Publish)
Flow = Generator[Effect, Any, Any]
Reader = Callable[[bytearray, int, int], memoryview]


class RangeRefused(Exception):
    """A part's answer is not exactly that part of the same file: fall back to one stream."""


class Kind(enum.Enum):
    STREAM = "stream"  # one sequential stream
    PART = "part"  # one part of a split download
    VERIFIED = "verified"  # no body to read: the partial already holds the file (416)


@dataclass
class Sink:
    """Where a body goes: the next byte's offset, the meter checking it, and where it stops."""

    kind: Kind
    position: int
    meter: BodyMeter
    limit: int | None = None  # absolute end (exclusive): a part's, or part 0's in the probe
    total: int | None = None  # the file's full size, when the origin said
    part: int = 0  # the part index (``Kind.PART``)

    def clip(self, chunk: bytes | memoryview, pending: int = 0) -> bytes | memoryview:
        """The part of ``chunk`` that belongs before ``limit`` (after ``pending`` bytes not
        yet counted)."""
        start = self.position + pending
        if self.limit is None or start + len(chunk) <= self.limit:
            return chunk
        return chunk[: max(0, self.limit - start)]

    @property
    def full(self) -> bool:
        return self.limit is not None and self.position >= self.limit


@dataclass(frozen=True)
class Start:
    """What the runner found on disk before the first request: the claimed partial."""

    state: PartialState | None
    size: int


class Machine:
    """Everything one call knows about its download, across retries and connections."""

    def __init__(self, req: FetchRequest, start: Start, *, retry: RetryPolicy,
                 connections: int | None = None,
                 rand: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.time) -> None:
        self.req = req
        self.policy = retry
        self.connections = connections
        self._rand, self._clock = rand, clock
        #: sha256 only when asked (``hash_body``, e.g. by the cache) or checked (expected_sha256)
        self.hashing = req.hash_body or req.expected_sha256 is not None
        self.safe_url = redact_url(req.url)
        self.state = start.state
        self.on_disk = start.size  # size of the partial (sequential: contiguous from 0)
        # No probe when one stream is certain: forced, or a known size too small to split.
        small = req.expected_size is not None and req.expected_size < MIN_PARALLEL_SIZE
        self.split_allowed = connections != 1 and not (connections is None and small)
        self.parts: list[PartProgress] | None = None
        self.total: int | None = None
        self.workers = 1
        self.attempts = 0  # requests of the sequential stream that failed
        self.part_attempts: dict[int, int] = {}  # requests sent for each part
        self.final_error: BaseException | None = None  # a part's budget ran out: the call ends
        self._claimed: set[int] = set()
        self._hasher = hashlib.sha256()
        self._sealer = new_sealer()
        self._hashed = 0  # bytes [0, _hashed) of the partial are in _hasher and _sealer
        self._hash_epoch = 0  # bumped to stop a hash_ahead running on another thread
        self._hash_lock = threading.Lock()
        self._hash_buffer = bytearray()
        self._requested = 0
        self._probing = False
        self._lock = threading.Lock()
        self._unsaved = 0
        self._checkpoint = CHECKPOINT_BYTES
        self._final: tuple[int, dict[str, str], str] = (200, {}, req.url)

    # -- retries ---------------------------------------------------------------------------
    def decide(self, error: BaseException, attempt: int) -> RetryDecision:
        """Retry after N seconds, or give up, after failed request number ``attempt``."""
        return decide(self.policy, error, attempt=attempt, remaining=self.req.deadline.remaining(),
                      rand=self._rand(), now=self._clock())

    def _retry(self, error: FetchError, attempt: int, what: str) -> Flow:
        """Sleep before the next request of a range, or raise the error that ends the call."""
        decision = self.decide(error, attempt)
        if not decision.retry:
            error.attempts = attempt
            self.final_error = error
            if isinstance(error, FetchTimeoutError):
                replacement = deadline_error(error, timeout=self.req.deadline.timeout,
                                             remaining=self.req.deadline.remaining(),
                                             url=self.safe_url)
                if replacement is not None:
                    self.final_error = replacement
                    raise replacement from error
            raise error
        logger.warning("%s %s: attempt %d/%d failed (%s); retrying in %.2f s", what,
                       self.safe_url, attempt, self.policy.max_attempts, decision.reason,
                       decision.wait)
        yield Sleep(decision.wait)

    # -- the call --------------------------------------------------------------------------
    def flow(self) -> Flow:
        """The whole call: attempts of the sequential stream (or the split) until one
        publishes, each failure retried under the stream's budget."""
        while True:
            try:
                return (yield from self._attempt())
            except FetchError as exc:
                if self.final_error is not None:
                    raise
                self.attempts += 1
                yield from self._retry(exc, self.attempts, "download")

    def _attempt(self) -> Flow:
        for _ in range(MAX_PLAN_CHANGES):
            request = yield from self._next_request()
            first = None  # part 0 in the probe's body; None: the parts resume from the sidecar
            if request is not None:
                answer: Answer = yield Send(request)
                first = yield from self._on_answer(answer)
                if first is None:
                    continue  # the partial was discarded: ask again
                if first.kind is Kind.STREAM:
                    yield Receive(first)
                if first.kind is not Kind.PART:
                    return (yield from self._publish(first.meter, first.total))
            try:
                yield RunParts(self.workers, first)
            except RangeRefused as exc:
                logger.info("%s: %s; one stream from zero", self.safe_url, exc)
                yield from self._fall_back()
                continue
            return (yield from self._finish_parts())
        raise IntegrityError(f"{self.safe_url} keeps answering unusable ranges",
                             url=self.safe_url)

    # -- the next request ------------------------------------------------------------------
    def _next_request(self) -> Generator[Effect, Any, FetchRequest | None]:
        """The whole-file request to send, or None when split parts are pending (then every
        unfinished part is up for grabs again, whoever had it in a failed attempt)."""
        if self.parts is not None or (yield from self._resume_parts()):
            with self._lock:
                self._claimed.clear()
            return None
        state = self.state
        offset = 0
        if state is not None and state.parts is None:
            offset = self.on_disk if state.total is None else min(self.on_disk, state.total)
        headers = plan_request(dataclasses.replace(state, offset=offset)) if state else {}
        self._requested = offset if headers else 0
        self._probing = not headers and self.split_allowed
        if self._probing:
            headers = {"Range": "bytes=0-"}
        return self._with(headers)

    def _with(self, headers: Mapping[str, str]) -> FetchRequest:
        return dataclasses.replace(self.req, headers={**self.req.headers, **headers})

    def _resume_parts(self) -> Generator[Effect, Any, bool]:
        state = self.state
        if state is None or state.parts is None or not self.split_allowed:
            return False
        if validator_for(state) is None or self.on_disk != state.total:
            yield from self._truncate()
            return False
        self.parts = [PartProgress(*part) for part in state.parts]
        self.total = state.total
        self._checkpoint = _checkpoint_every(state.total)
        self.workers = min(len(self.parts), self.connections
                           or auto_connections(state.total, accepts_ranges=True))
        yield StartProgress(self.total, sum(p.written for p in self.parts))
        return True

    def _truncate(self) -> Flow:
        self.state, self.on_disk = None, 0
        self._reset_hash()
        yield Truncate()

    def _save(self, state: PartialState) -> SaveState:
        self.state = state
        return SaveState(state)

    # -- the answer ------------------------------------------------------------------------
    def _on_answer(self, answer: Answer) -> Generator[Effect, Any, Sink | None]:
        """What to do with a whole-file answer (raises for an error status); None: ask again."""
        status, headers = answer.status, answer.headers
        self._final = (status, dict(headers), answer.url)
        state = self.state or PartialState(0, None, None, None, self.req.url)
        if self._probing:
            self._probing = False
            # never probe again after an unusable answer; coded ranges count coded bytes
            self.split_allowed = status == 206 and not is_encoded(headers)
            split = yield from self._split(status, headers)
            if split is not None:
                return split
        decision = on_response(state, self._requested, status, headers)
        if decision.action is ResumeAction.FAIL:
            check_status(status, redact_url(answer.url), headers=dict(headers))
            decision = on_response(state, self._requested, 200, headers)
        if decision.action is ResumeAction.DISCARD_AND_RETRY:
            yield from self._truncate()
            return None
        if decision.action is ResumeAction.VERIFY_EXISTING:
            return (yield from self._verify_existing(decision.offset))
        if decision.offset == 0:
            yield from self._truncate()
        meter = self._meter(headers, decision.offset)
        etag, last_modified = strong_validators(decision.etag, decision.last_modified,
                                                header(headers, "Date"))
        yield self._save(PartialState(decision.offset, etag, last_modified, decision.total,
                                      self.req.url))
        yield StartProgress(decision.total, decision.offset)
        total = None if is_encoded(headers) else decision.total  # a coded length is no size
        return Sink(Kind.STREAM, decision.offset, meter, total=total)

    def _meter(self, headers: Mapping[str, str], offset: int) -> BodyMeter:
        """The stream's sizes as they arrive (its sha256 is checked from the disk at the end)."""
        length = parse_content_length(headers, self.safe_url)
        wire = None if is_encoded(headers) or length is None else offset + length
        return BodyMeter(self.safe_url, expected_length=wire, max_bytes=self.req.max_bytes,
                         expected_size=self.req.expected_size, offset=offset)

    def _verify_existing(self, size: int) -> Generator[Effect, Any, Sink | None]:
        try:
            yield from self._check_file(size)
        except IntegrityError:
            yield from self._truncate()
            return None
        return Sink(Kind.VERIFIED, size, BodyMeter(self.safe_url, offset=size))

    def _split(self, status: int, headers: Mapping[str, str]) -> Generator[Effect, Any,
                                                                            Sink | None]:
        """Split when the probe's 206 covers the whole file with a strong validator (so every
        part can be proven to be of the same version) and more than one part pays."""
        parsed = parse_content_range(header(headers, "Content-Range"))
        if status != 206 or parsed is None or parsed[0] != 0 or parsed[2] is None:
            return None
        etag, last_modified = strong_validators(header(headers, "ETag"),
                                                header(headers, "Last-Modified"),
                                                header(headers, "Date"))
        if is_encoded(headers) or (etag is None and last_modified is None):
            return None  # coded ranges cannot place decoded bytes; no validator, no proof
        total = parsed[2]
        wanted = self.connections or auto_connections(total, accepts_ranges=True)
        min_part = MIN_EXPLICIT_PART if self.connections else DEFAULT_MIN_PART
        ranges = split_ranges(total, piece_count(total, wanted), min_part)
        if len(ranges) < 2 or parsed[1] != total - 1:
            return None
        self.workers = min(wanted, len(ranges))
        # The size promises are checked before a byte is fetched.
        BodyMeter(self.safe_url, expected_length=total, max_bytes=self.req.max_bytes,
                  expected_size=self.req.expected_size)
        yield from self._truncate()
        yield Preallocate(total)
        self.on_disk = self.total = total
        self._checkpoint = _checkpoint_every(total)
        self.parts = [PartProgress(start, end) for start, end in ranges]
        self._claimed = {0}  # part 0 is the head of the probe's body
        self.part_attempts = {0: 1}  # ... and the probe is its first request
        yield self._save(PartialState(0, etag, last_modified, total, self.req.url,
                                      tuple((p.start, p.end, 0) for p in self.parts)))
        yield StartProgress(total, 0)
        return Sink(Kind.PART, 0, BodyMeter(self.safe_url), limit=ranges[0][1] + 1, part=0)

    # -- writing ---------------------------------------------------------------------------
    def wrote(self, sink: Sink, nbytes: int) -> SaveState | None:
        """Count ``nbytes`` written at the sink's position; a part's progress is checkpointed
        into the sidecar now and then (the effect to perform, if any)."""
        sink.position += nbytes
        if sink.kind is Kind.STREAM:
            self.on_disk = sink.position
            return None
        assert self.parts is not None
        with self._lock:
            self.parts[sink.part] = self.parts[sink.part].advanced(nbytes)
            self._unsaved += nbytes
            if self._unsaved < self._checkpoint:
                return None
            self._unsaved = 0
            return self._checkpoint_state()

    def _checkpoint_state(self) -> SaveState | None:
        state = self.state
        if state is None or self.parts is None or validator_for(state) is None:
            return None
        parts = tuple((p.start, p.end, p.written) for p in self.parts)
        return self._save(dataclasses.replace(state, parts=parts))

    def checkpoint(self) -> SaveState | None:
        """After the call failed: the parts' progress to record for a later resume."""
        with self._lock:
            return self._checkpoint_state()

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

    def part_flow(self, first: Sink | None) -> Flow:
        """One connection's work: part 0 from the probe's body (``first``), then parts in file
        order until none is left, each retried under its own budget."""
        if first is not None:
            try:
                yield Receive(first)
            except FetchError as exc:
                yield from self._retry(exc, self.part_attempts[0], "download part")
                yield from self._fetch_part(0)
        while (index := self.claim_part()) is not None:
            yield from self._fetch_part(index)

    def _fetch_part(self, index: int) -> Flow:
        while (request := self._part_request(index)) is not None:
            attempt = self.part_attempts.get(index, 0) + 1
            self.part_attempts[index] = attempt
            try:
                answer: Answer = yield Send(request)
                yield Receive(self._part_sink(index, answer))
            except FetchError as exc:
                yield from self._retry(exc, attempt, "download part")

    def _part_request(self, index: int) -> FetchRequest | None:
        """Range (+ If-Range) for the rest of part ``index``; None when it is complete."""
        assert self.parts is not None
        rest = self.parts[index].remaining
        if rest is None:
            return None
        headers = {"Range": range_header(*rest)}
        validator = validator_for(self.state) if self.state else None
        if validator is not None:
            headers["If-Range"] = validator
        return dataclasses.replace(self._with(headers), read_bufsize=PART_READ_BUFSIZE,
                                   chunk_size=min(self.req.chunk_size, PART_READ_BUFSIZE))

    def _part_sink(self, index: int, answer: Answer) -> Sink:
        """Accept an answer only if it is exactly the asked range of the same version; a status
        the policy retries is retried (that part only); any other refusal ends the split."""
        assert self.parts is not None and self.total is not None
        rest = self.parts[index].remaining
        assert rest is not None
        status, headers = answer.status, answer.headers
        if status in self.policy.retry_statuses:
            check_status(status, redact_url(answer.url), headers=dict(headers))
        state = self.state
        if not (part_response_ok(rest, self.total, status, headers,
                                 etag=state.etag if state else None)
                and state is not None and same_validator(state, headers)):
            raise RangeRefused(f"part {rest[0]}-{rest[1]}: HTTP {status} "
                               f"{header(headers, 'Content-Range')!r}")
        length = rest[1] - rest[0] + 1
        meter = BodyMeter(self.safe_url, expected_length=length, max_bytes=length)
        return Sink(Kind.PART, rest[0], meter, limit=rest[1] + 1, part=index)

    def _fall_back(self) -> Flow:
        """The origin would not serve the parts: forget them, fetch one stream from zero."""
        self.parts = None
        self._reset_hash()
        self.split_allowed = False
        self.part_attempts = {}
        yield from self._truncate()

    def _frontier(self) -> int:
        """Bytes on disk contiguous from 0 (the stream's; whole parts, then the next part's
        written head)."""
        if self.parts is None:
            return self.on_disk
        for part in self.parts:
            if part.remaining is not None:
                return part.start + part.written
        return self.total or 0

    def hash_due(self) -> bool:
        """Whether enough new contiguous bytes wait for :meth:`hash_ahead` (a cheap check)."""
        if not self.hashing:
            return False
        with self._lock:
            return self._frontier() - self._hashed >= HASH_STEP

    def hash_ahead(self, read: Reader, *, final: bool = False) -> None:
        """Extend the running sha256 and seal over newly contiguous bytes, read back with
        ``read`` (skipped if another thread is at it, unless ``final``: then wait and hash up to
        the end). Stops early, between two blocks, when :meth:`stop_hashing` is called."""
        if not self.hashing or not self._hash_lock.acquire(blocking=final):
            return
        try:
            epoch = self._hash_epoch
            while epoch == self._hash_epoch:
                with self._lock:
                    frontier = self._frontier()
                todo = frontier - self._hashed
                if todo <= 0 or (not final and todo < HASH_STEP):
                    return
                if not self._hash_buffer:
                    self._hash_buffer = bytearray(HASH_STEP)
                block = read(self._hash_buffer, self._hashed, min(todo, HASH_STEP))
                self._hasher.update(block)
                self._sealer.update(block)
                self._hashed += len(block)
        finally:
            self._hash_lock.release()

    def stop_hashing(self) -> None:
        """Have a :meth:`hash_ahead` running on another thread return after its block."""
        self._hash_epoch += 1

    def _reset_hash(self) -> None:
        """The partial starts again from nothing: so does its hash (once no thread is in it)."""
        self.stop_hashing()
        with self._hash_lock:
            self._hasher, self._sealer, self._hashed = hashlib.sha256(), new_sealer(), 0

    def _check_file(self, size: int) -> Flow:
        """Hash what is left of the file's ``size`` bytes on disk (``HashAhead``), then check
        them against ``expected_size``/``expected_sha256``; the cache is told the seal."""
        if self.hashing:
            yield HashAhead()
        meter = BodyMeter(self.safe_url, expected_size=self.req.expected_size,
                          expected_sha256=self.req.expected_sha256, offset=size,
                          hasher=self._hasher if self.hashing else None)
        meter.finish()
        if self.hashing and self._hashed == size:
            remember_seal(self._hasher.hexdigest(), self._sealer.hexdigest())
        return meter

    # -- endings ---------------------------------------------------------------------------
    def _finish_parts(self) -> Flow:
        """Every part on disk: hash the file in order, verify, publish."""
        if self.pending_parts():
            raise IntegrityError(f"parts of {self.safe_url} are missing", url=self.safe_url)
        assert self.total is not None
        return (yield from self._publish(BodyMeter(self.safe_url, offset=self.total), None))

    def _publish(self, meter: BodyMeter, total: int | None) -> Flow:
        meter.finish()
        if total is not None and meter.received != total:
            raise TruncatedBodyError(
                f"{self.safe_url}: {meter.received} of {total} bytes arrived",
                url=self.safe_url, received=meter.received)
        meter = yield from self._check_file(meter.received)
        path: Path = yield Publish()
        status, headers, url = self._final
        return DownloadResult(path, meter.received, meter.sha256,
                              200 if status in (206, 416) else status, headers, url)


def _checkpoint_every(total: int | None) -> int:
    return max(MIN_CHECKPOINT_BYTES, min(CHECKPOINT_BYTES, (total or 0) // 16))


__all__ = [
    "Answer",
    "Effect",
    "Flow",
    "HashAhead",
    "Kind",
    "Machine",
    "Preallocate",
    "Publish",
    "RangeRefused",
    "Receive",
    "RunParts",
    "SaveState",
    "Send",
    "Sink",
    "Sleep",
    "Start",
    "StartProgress",
    "Truncate",
]
