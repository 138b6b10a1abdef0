"""The download machine, driven by fake effects: no network, no files, no event loop.

A scripted origin answers each ``Send``; ``Receive`` writes into a bytearray (or is cut short);
parts run one after the other. Each case checks what a user would: the bytes published, the
requests sent (and their Range), the error and the attempts it reports.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from vllm_fetch.core.body import header
from vllm_fetch.core.deadline import Deadline
from vllm_fetch.core.download_machine import (
    Answer,
    HashAhead,
    Machine,
    Preallocate,
    Publish,
    RangeRefused,
    Receive,
    RunParts,
    SaveState,
    Send,
    Sink,
    Sleep,
    Start,
    StartProgress,
    Truncate,
)
from vllm_fetch.core.request import FetchRequest
from vllm_fetch.core.resume import PartialState, same_validator, strong_validators
from vllm_fetch.core.retry import RetryPolicy
from vllm_fetch.download.effects import Stepper
from vllm_fetch.errors import HTTPStatusError, TruncatedBodyError

URL = "https://example.com/model.bin"
SIZE = 4 * 1024 * 1024
DATA = os.urandom(SIZE)
NEW = os.urandom(SIZE)
STRONG = '"v1"'
OLD_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
NOW_DATE = "Tue, 01 Dec 2026 20:00:00 GMT"
PART = (SIZE + 3) // 4  # connections=4: the first part's size, give or take a byte
POLICY = RetryPolicy(max_attempts=3, backoff_base=0.0)


@dataclass
class Reply:
    """One scripted answer: a status, headers, the body, and where (absolute) it is cut."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    start: int = 0
    cut_at: int | None = None


Script = Callable[[int, FetchRequest], Reply]


def ranged(data: bytes, etag: str | None = STRONG, *, last_modified: str | None = None,
           date: str = NOW_DATE, cut: Callable[[int, int], int | None] | None = None,
           status_for: Callable[[int, int], int | None] | None = None) -> Script:
    """An origin serving ``data`` with ranges; ``cut(number, start)`` says where to cut a
    response, ``status_for(number, start)`` replaces a response with an error status."""

    def answer(number: int, req: FetchRequest) -> Reply:
        headers = {"Date": date, "Accept-Ranges": "bytes"}
        if etag:
            headers["ETag"] = etag
        if last_modified:
            headers["Last-Modified"] = last_modified
        wanted = req.headers.get("Range")
        start, end = 0, len(data) - 1
        if wanted:
            first, _, last = wanted[len("bytes="):].partition("-")
            start, end = int(first), int(last) if last else len(data) - 1
        status = status_for(number, start) if status_for else None
        if status is not None:
            return Reply(status, {"Date": date, "Retry-After": "0"})
        if wanted:
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        headers["Content-Length"] = str(end - start + 1)
        return Reply(206 if wanted else 200, headers, data[start:end + 1], start,
                     cut(number, start) if cut else None)

    return answer


@dataclass
class FakeIO:
    """Performs the machine's effects in memory and records what it was asked."""

    script: Script
    disk: bytearray = field(default_factory=bytearray)
    sent: list[FetchRequest] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    saved: list[PartialState | None] = field(default_factory=list)
    published: bytes | None = None
    open: Reply | None = None

    def run(self, machine: Machine, flow: Any) -> Any:
        with Stepper(flow, lambda: None) as step:
            while (effect := step.next()) is not None:
                step.settle(lambda e: self.perform(machine, e), effect)
            return step.result

    def perform(self, machine: Machine, effect: Any) -> Any:
        if isinstance(effect, Send):
            self.sent.append(effect.req)
            self.open = self.script(len(self.sent) - 1, effect.req)
            return Answer(self.open.status, self.open.headers, URL)
        if isinstance(effect, Receive):
            return self.receive(machine, effect.sink)
        if isinstance(effect, Sleep):
            self.sleeps.append(effect.seconds)
            return None
        if isinstance(effect, RunParts):
            first = effect.first
            for worker in range(effect.workers):
                self.run(machine, machine.part_flow(first if worker == 0 else None))
            return None
        if isinstance(effect, Truncate):
            self.disk = bytearray()
            self.saved.append(None)
        elif isinstance(effect, Preallocate):
            self.disk = bytearray(effect.size)
        elif isinstance(effect, SaveState):
            self.saved.append(effect.state)
        elif isinstance(effect, HashAhead):
            machine.hash_ahead(self.read, final=True)
        elif isinstance(effect, Publish):
            self.published = bytes(self.disk)
            return Path("/target")
        else:
            assert isinstance(effect, StartProgress)
        return None

    def read(self, buffer: bytearray, offset: int, size: int) -> memoryview:
        buffer[:size] = self.disk[offset:offset + size]
        return memoryview(buffer)[:size]

    def receive(self, machine: Machine, sink: Sink) -> None:
        reply, self.open = self.open, None
        assert reply is not None
        stop = len(reply.body) if reply.cut_at is None else reply.cut_at - reply.start
        for offset in range(0, stop, 256 * 1024):
            chunk = reply.body[offset:min(stop, offset + 256 * 1024)]
            sink.meter.feed(chunk)
            data = sink.clip(chunk)
            if len(self.disk) < sink.position + len(data):
                self.disk.extend(bytes(sink.position + len(data) - len(self.disk)))
            self.disk[sink.position:sink.position + len(data)] = data
            save = machine.wrote(sink, len(data))
            if save is not None:
                self.saved.append(save.state)
            if sink.full:
                return
        if reply.cut_at is not None:
            raise TruncatedBodyError("cut", url=URL)
        sink.meter.finish()


def machine(connections: int | None, *, policy: RetryPolicy = POLICY, sha: bytes | None = DATA,
            start: Start | None = None) -> Machine:
    req = FetchRequest(URL, {}, Deadline(None),
                       expected_sha256=hashlib.sha256(sha).hexdigest() if sha else None)
    return Machine(req, start or Start(None, 0), retry=policy, connections=connections,
                   rand=lambda: 0.0, clock=lambda: 0.0)


def run(m: Machine, script: Script) -> FakeIO:
    io = FakeIO(script)
    io.run(m, m.flow())
    return io


def ranges(io: FakeIO) -> list[str | None]:
    return [req.headers.get("Range") for req in io.sent]


def always_cut(low: int, high: int) -> Callable[[int, int], int | None]:
    """Every response starting in ``[low, high)`` is cut 1000 bytes in."""
    return lambda number, at: at + 1000 if low <= at < high else None


# -- one stream ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "script", "requests", "sleeps"),
    [
        ("whole body at once", ranged(DATA), [None], 0),
        ("cut once, resumed from the cut", ranged(DATA, cut=lambda n, s: 1000 if n == 0 else None),
         [None, "bytes=1000-"], 1),
        ("503 once, then the body", ranged(DATA, status_for=lambda n, s: 503 if n == 0 else None),
         [None, None], 1),
        ("no validator: a cut starts over from zero",
         ranged(DATA, etag=None, cut=lambda n, s: 1000 if n == 0 else None), [None, None], 1),
        ("weak ETag: a cut starts over from zero",
         ranged(DATA, etag='W/"x"', cut=lambda n, s: 1000 if n == 0 else None), [None, None], 1),
    ],
)
def test_one_stream(name: str, script: Script, requests: list[str | None], sleeps: int) -> None:
    io = run(machine(1), script)
    assert io.published == DATA, name
    assert ranges(io) == requests
    assert len(io.sleeps) == sleeps


def test_one_stream_that_always_breaks_is_asked_max_attempts_times() -> None:
    m = machine(1)
    io = FakeIO(ranged(DATA, cut=lambda n, s: s + 1000))
    with pytest.raises(TruncatedBodyError) as caught:
        io.run(m, m.flow())
    assert len(io.sent) == 3 and caught.value.attempts == 3
    assert io.published is None


# -- parallel parts ------------------------------------------------------------------------------
def test_split_fetches_each_part_once() -> None:
    io = run(machine(4), ranged(DATA))
    assert io.published == DATA
    assert ranges(io)[0] == "bytes=0-" and len(io.sent) == 4
    assert all(req.headers.get("If-Range") == STRONG for req in io.sent[1:])


def test_a_part_that_always_breaks_is_asked_max_attempts_times_in_all() -> None:
    """The nested-loop bug: 3 attempts of the call x 3 of the part made 9 requests."""
    m = machine(4)
    io = FakeIO(ranged(DATA, cut=always_cut(PART, 2 * PART)))
    with pytest.raises(TruncatedBodyError) as caught:
        io.run(m, m.flow())
    asked = [r for r in ranges(io)
             if r is not None and int(r[6:].partition("-")[0]) in range(PART, 2 * PART)]
    assert asked == [f"bytes={PART}-{2 * PART - 1}", f"bytes={PART + 1000}-{2 * PART - 1}",
                     f"bytes={PART + 2000}-{2 * PART - 1}"]
    assert caught.value.attempts == 3
    assert io.published is None


def test_a_503_on_a_part_retries_that_part_only() -> None:
    m = machine(4)
    io = run(m, ranged(DATA, status_for=lambda n, s: 503 if n == 1 else None))
    assert io.published == DATA
    asked = ranges(io)
    assert asked[0] == "bytes=0-" and None not in asked  # never one stream from zero
    assert len(asked) == 5 and asked[1] == asked[2]  # the 503'd part again, the others once
    assert len(io.sleeps) == 1


def test_a_part_that_keeps_answering_503_gives_up_after_its_budget() -> None:
    m = machine(4)
    io = FakeIO(ranged(DATA, status_for=lambda n, s: 503 if s == PART else None))
    with pytest.raises(HTTPStatusError) as caught:
        io.run(m, m.flow())
    assert caught.value.status == 503 and caught.value.attempts == 3
    assert ranges(io).count(f"bytes={PART}-{2 * PART - 1}") == 3


def test_the_probe_counts_in_part_zeros_budget() -> None:
    m = machine(4)
    io = FakeIO(ranged(DATA, cut=always_cut(0, PART)))
    with pytest.raises(TruncatedBodyError) as caught:
        io.run(m, m.flow())
    assert caught.value.attempts == 3
    assert [r for r in ranges(io) if r is not None and r.startswith("bytes=")][:3] == [
        "bytes=0-", f"bytes=1000-{PART - 1}", f"bytes=2000-{PART - 1}"]


@pytest.mark.parametrize(
    ("name", "etag", "last_modified", "split"),
    [
        ("strong ETag", STRONG, None, True),
        ("Last-Modified a second before Date acts as strong", None, OLD_DATE, True),
        ("Last-Modified equal to Date is weak", None, NOW_DATE, False),
        ("weak ETag", 'W/"x"', None, False),
        ("no validator", None, None, False),
    ],
)
def test_split_only_with_a_strong_validator(name: str, etag: str | None,
                                            last_modified: str | None, split: bool) -> None:
    io = run(machine(4), ranged(DATA, etag, last_modified=last_modified))
    assert io.published == DATA, name
    assert len(io.sent) == (4 if split else 1)


def swapping(etag_after: str | None, *, etag: str | None = STRONG) -> Script:
    """The first answer is ``DATA``; every later one is ``NEW`` (the file was replaced)."""
    old, new = ranged(DATA, etag), ranged(NEW, etag_after)
    return lambda n, req: old(n, req) if n == 0 else new(n, req)


@pytest.mark.parametrize(
    ("name", "script", "published"),
    [
        # no validator or a weak one: no split, the probe's one stream is the whole old file
        ("no ETag", swapping(None, etag=None), DATA),
        ("weak ETag", swapping('W/"b"', etag='W/"a"'), DATA),
        # strong: the parts carry another ETag, so the split is dropped for one new stream
        ("strong ETag changes", swapping('"v2"'), NEW),
        ("strong ETag disappears", swapping(None), NEW),
    ],
)
def test_never_a_file_stitched_from_two_versions(name: str, script: Script,
                                                 published: bytes) -> None:
    io = run(machine(4, sha=None), script)
    assert io.published == published, name


def test_a_refused_range_falls_back_to_one_stream_from_zero() -> None:
    plain = ranged(DATA)

    def refuses_parts(n: int, req: FetchRequest) -> Reply:
        if n in (1, 2, 3):  # a 200 with the whole body to a part's Range
            return Reply(200, {"ETag": STRONG, "Content-Length": str(SIZE)}, DATA)
        return plain(n, req)

    io = run(machine(4), refuses_parts)
    assert io.published == DATA
    assert ranges(io)[-1] is None and io.saved[-2] is None  # truncated, then one whole stream


def test_parts_resume_from_the_sidecar() -> None:
    half = bytearray(DATA)
    state = PartialState(0, STRONG, None, SIZE, URL,
                         ((0, PART - 1, PART), (PART, SIZE - 1, 1000)))
    m = machine(2, start=Start(state, SIZE))
    io = FakeIO(ranged(DATA), disk=half)
    io.run(m, m.flow())
    assert io.published == DATA and ranges(io) == [f"bytes={PART + 1000}-{SIZE - 1}"]


def test_parts_resumed_from_the_sidecar_of_a_replaced_file_start_over() -> None:
    state = PartialState(0, STRONG, None, SIZE, URL,
                         ((0, PART - 1, PART), (PART, SIZE - 1, 1000)))
    m = machine(2, start=Start(state, SIZE), sha=NEW)
    io = FakeIO(ranged(NEW, '"v2"'), disk=bytearray(DATA))
    io.run(m, m.flow())
    assert io.published == NEW  # the old part 0 is never kept
    assert ranges(io) == [f"bytes={PART + 1000}-{SIZE - 1}", None]


def test_part_answers_that_are_refused() -> None:
    m = machine(4)
    io = FakeIO(ranged(DATA))
    flow = m.flow()
    effect = flow.send(None)
    assert isinstance(effect, Send)
    io.open = Reply(206, {"ETag": STRONG, "Date": NOW_DATE,
                          "Content-Range": f"bytes 0-{SIZE - 1}/{SIZE}"}, DATA)
    while not isinstance(effect, RunParts):
        effect = flow.send(Answer(206, io.open.headers, URL) if isinstance(effect, Send)
                           else io.perform(m, effect))
    request = m._part_request(1)
    assert request is not None
    wrong = {"ETag": STRONG, "Content-Range": f"bytes 0-9/{SIZE}"}
    with pytest.raises(RangeRefused):
        m._part_sink(1, Answer(206, wrong, URL))
    with pytest.raises(HTTPStatusError):
        m._part_sink(1, Answer(429, {}, URL))
    flow.close()


# -- validators ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"ETag": STRONG}, (STRONG, None)),
        ({"ETag": 'W/"x"'}, (None, None)),
        ({"Last-Modified": OLD_DATE, "Date": NOW_DATE}, (None, OLD_DATE)),
        ({"Last-Modified": OLD_DATE}, (None, None)),  # no Date: cannot tell
        ({"Last-Modified": NOW_DATE, "Date": NOW_DATE}, (None, None)),
        ({"Last-Modified": "garbage", "Date": NOW_DATE}, (None, None)),
    ],
)
def test_strong_validators(headers: dict[str, str], expected: tuple[str | None, str | None]
                           ) -> None:
    found = strong_validators(headers.get("ETag"), headers.get("Last-Modified"),
                              headers.get("Date"))
    assert found == expected


@pytest.mark.parametrize(
    ("etag", "last_modified", "headers", "same"),
    [
        (STRONG, None, {"ETag": STRONG}, True),
        (STRONG, None, {}, False),
        (STRONG, None, {"ETag": '"v2"'}, False),
        (STRONG, None, {"ETag": f"W/{STRONG}"}, False),
        (None, OLD_DATE, {"Last-Modified": OLD_DATE}, True),
        (None, OLD_DATE, {}, False),
        (None, None, {}, False),
    ],
)
def test_same_validator(etag: str | None, last_modified: str | None, headers: dict[str, str],
                        same: bool) -> None:
    state = PartialState(0, etag, last_modified, SIZE, URL)
    assert same_validator(state, headers) is same
    assert header(headers, "etag") == headers.get("ETag")
