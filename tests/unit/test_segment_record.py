"""Segment record framing and the compaction plan: pure functions, no files."""

from __future__ import annotations

import hashlib

import pytest

from vllm_fetch.core.seal import seal_of
from vllm_fetch.core.segment_record import (
    ALIGN,
    FILLER_MAGIC,
    HEADER_SIZE,
    MAGIC,
    SegmentUse,
    accepts,
    body_seal,
    compaction_plan,
    encode_filler,
    encode_header,
    filler_size,
    iter_records,
    parse_header,
    record_size,
)


def record(body: bytes) -> tuple[str, str, bytes]:
    sha = hashlib.sha256(body).hexdigest()
    seal = seal_of(body)
    return sha, seal, encode_header(sha, len(body), seal) + body


def test_a_header_round_trips() -> None:
    sha, seal, raw = record(b"hello world")
    assert len(raw) == record_size(11) == HEADER_SIZE + 11
    header = parse_header(raw)
    assert header is not None
    assert (header.sha256, header.length, header.seal) == (sha, 11, seal)
    assert raw.startswith(MAGIC)


def test_the_seal_is_the_cache_seal() -> None:
    assert body_seal(b"x" * 1000) == seal_of(b"x" * 1000)


@pytest.mark.parametrize("cut", [0, 1, 8, HEADER_SIZE - 1])
def test_a_short_header_is_none(cut: int) -> None:
    _, _, raw = record(b"body")
    assert parse_header(raw[:cut]) is None


@pytest.mark.parametrize("at", range(0, HEADER_SIZE, 7))
def test_any_flipped_header_byte_is_caught(at: int) -> None:
    _, _, raw = record(b"body bytes")
    damaged = bytearray(raw)
    damaged[at] ^= 0x10
    assert parse_header(bytes(damaged)) is None


def test_accepts_only_the_body_asked_for() -> None:
    body = b"the body" * 100
    sha, seal, raw = record(body)
    header = parse_header(raw)
    got = raw[HEADER_SIZE:]
    assert accepts(header, got, sha, len(body), seal)
    assert accepts(header, got, sha, len(body), None)  # the record's own seal still checked
    assert accepts(header, got, sha, len(body), "")
    assert not accepts(None, got, sha, len(body), seal)
    assert not accepts(header, got, "0" * 64, len(body), seal)  # another body's record
    assert not accepts(header, got, sha, len(body) + 1, seal)
    assert not accepts(header, got[:-1], sha, len(body), seal)  # cut short
    assert not accepts(header, got, sha, len(body), "f" * 32)  # the index says otherwise
    flipped = bytearray(got)
    flipped[17] ^= 1
    assert not accepts(header, bytes(flipped), sha, len(body), seal)
    assert not accepts(header, bytes(flipped), sha, len(body), None)


def test_iter_records_stops_at_a_torn_tail() -> None:
    bodies = [b"a" * 10, b"", b"c" * 300]
    raws = [record(b)[2] for b in bodies]
    whole = b"".join(raws)
    found = list(iter_records(whole, base=100))
    assert [offset for offset, _ in found] == [100, 100 + len(raws[0]),
                                                100 + len(raws[0]) + len(raws[1])]
    assert [h.length for _, h in found] == [10, 0, 300]
    torn = whole + record(b"d" * 50)[2][:HEADER_SIZE + 20]  # a crash mid-append
    assert len(list(iter_records(torn))) == 3
    garbage = whole[: len(raws[0])] + b"\0" * 40 + whole[len(raws[0]):]
    assert len(list(iter_records(garbage))) == 1  # nothing after what is not a header


def test_compaction_plan() -> None:
    uses = {
        "empty.seg": SegmentUse(size=0, live=0),
        "dead.seg": SegmentUse(size=1000, live=0),
        "half.seg": SegmentUse(size=1000, live=500),
        "most.seg": SegmentUse(size=1000, live=900),
        "full.seg": SegmentUse(size=1000, live=1000),
        "thin.seg": SegmentUse(size=4000, live=100),
    }
    assert compaction_plan(uses) == ["thin.seg", "dead.seg", "half.seg", "empty.seg"]
    assert compaction_plan(uses, live_fraction=1.0) == [
        "thin.seg", "dead.seg", "half.seg", "most.seg", "empty.seg"]
    assert SegmentUse(100, 150).dead == 0


@pytest.mark.parametrize("end", [0, 1, 100, ALIGN - HEADER_SIZE, ALIGN - HEADER_SIZE + 1,
                                 ALIGN - 1, ALIGN, 5 * ALIGN + 17])
def test_a_filler_brings_a_group_to_the_next_boundary(end: int) -> None:
    pad = filler_size(end)
    assert (end + pad) % ALIGN == 0
    assert pad == 0 or HEADER_SIZE <= pad < ALIGN + HEADER_SIZE
    assert pad == 0 or pad == min(p for p in range(1, 2 * ALIGN)
                                  if (end + p) % ALIGN == 0 and p >= HEADER_SIZE)


def test_a_filler_is_never_a_body_and_scans_step_over_it() -> None:
    filler = encode_filler(HEADER_SIZE + 500)
    assert len(filler) == HEADER_SIZE + 500 and filler.startswith(FILLER_MAGIC)
    assert filler[HEADER_SIZE:] == bytes(500)
    assert parse_header(filler) is None  # a reader never takes it for a record
    bodies = [b"a" * 10, b"b" * 3000]
    raws = [record(b)[2] for b in bodies]
    pad = filler_size(len(raws[0]))
    segment = raws[0] + encode_filler(pad) + raws[1] + encode_filler(
        filler_size(len(raws[0]) + pad + len(raws[1])))
    assert len(segment) % ALIGN == 0
    assert [(at, h.length) for at, h in iter_records(segment)] == [
        (0, 10), (len(raws[0]) + pad, 3000)]
    damaged = bytearray(segment)
    damaged[len(raws[0]) + 3] ^= 1  # a damaged filler header stops the scan like any other
    assert [h.length for _, h in iter_records(bytes(damaged))] == [10]
    with pytest.raises(ValueError):
        encode_filler(HEADER_SIZE - 1)


def test_a_filler_covered_by_the_bodies_charge_is_not_dead() -> None:
    """A segment of live records and their group's filler: what the records are charged
    (whole blocks) covers the filler, so nothing is dead and nothing is compacted; once
    records go, their bytes are dead again."""
    full = SegmentUse(size=2 * ALIGN, live=1072 + 1072, charged=2 * ALIGN)
    assert full.dead == 0 and compaction_plan({"a.seg": full}, live_fraction=1.0) == []
    thinned = SegmentUse(size=2 * ALIGN, live=1072, charged=ALIGN)
    assert thinned.dead == ALIGN and compaction_plan({"a.seg": thinned}) == ["a.seg"]
    assert SegmentUse(size=1000, live=400).dead == 600  # nothing charged: live bytes count
