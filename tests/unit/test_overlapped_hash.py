"""The overlapped sha256: the same digest as hashlib, whatever the chunks; its seal remembered."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import xxhash

from vllm_fetch.cache.transfer_lock import lock_name
from vllm_fetch.core import overlapped_hash, seal
from vllm_fetch.core.overlapped_hash import OverlappedSha256


def test_digest_and_seal_match_hashlib_and_xxh3_for_any_chunking() -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    for step in (1, 4096, 120 * 1024, 1 << 20):
        hasher = OverlappedSha256()
        for start in range(0, min(len(data), 500 * step), step):
            hasher.update(memoryview(data)[start:start + step])
        covered = data[:min(len(data), 500 * step)]
        assert hasher.hexdigest() == hashlib.sha256(covered).hexdigest()
        assert seal.known(hashlib.sha256(covered).hexdigest()) == xxhash.xxh3_128_hexdigest(
            covered)


def test_copy_continues_independently() -> None:
    hasher = OverlappedSha256()
    hasher.update(b"abc")
    twin = hasher.copy()
    twin.update(b"def")
    hasher.update(b"xyz")
    assert twin.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()
    assert hasher.digest() == hashlib.sha256(b"abcxyz").digest()


def test_the_helper_thread_exits_when_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overlapped_hash, "IDLE_EXIT", 0.05)
    hasher = OverlappedSha256()
    hasher.update(b"x" * overlapped_hash.BATCH)  # a whole batch: handed over at once
    assert hasher._worker is not None
    deadline = time.monotonic() + 10
    while hasher._worker is not None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    hasher.update(b"y")  # a new chunk starts a new one
    assert hasher.hexdigest() == hashlib.sha256(b"x" * overlapped_hash.BATCH + b"y").hexdigest()


def test_transfer_lock_names() -> None:
    digest = "ab" * 32
    assert lock_name("k1", digest) == lock_name("k2", digest.upper())  # same bytes, one lock
    assert lock_name("k1", None) != lock_name("k2", None)
    assert lock_name("k1", None) != lock_name("k1", digest)


def test_lent_buffers_are_hashed_without_a_copy_and_lent_again_only_once_hashed() -> None:
    data = os.urandom(9 * 1024 * 1024 + 5)
    size = 100_000
    hasher = OverlappedSha256()
    lent: set[int] = set()
    for start in range(0, len(data), size):
        buffer = hasher.lend(size)
        lent.add(id(buffer))
        piece = data[start:start + size]
        buffer[:len(piece)] = piece  # the ring slot is free: nothing queued still points at it
        view = memoryview(buffer)[:len(piece)]
        hasher.update(view)
        if hasher._batch:  # (not yet handed over as a whole batch)
            assert hasher._batch[-1][0] is view  # queued as it is: no bytes() copy
    assert len(lent) <= overlapped_hash.LEND_BYTES // size + 1  # a small ring, reused
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert seal.known(hasher.hexdigest()) == xxhash.xxh3_128_hexdigest(data)


def test_a_lent_buffer_never_given_back_is_simply_lent_again() -> None:
    """A read that failed or hit the end never passes its buffer to update: no slot is lost."""
    hasher = OverlappedSha256()
    for _ in range(200):
        hasher.lend(64 * 1024)
    buffer = hasher.lend(64 * 1024)
    buffer[:3] = b"abc"
    hasher.update(memoryview(buffer)[:3])
    assert hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_other_reused_buffers_are_copied() -> None:
    hasher = OverlappedSha256()
    buffer = bytearray(b"abc")
    hasher.update(memoryview(buffer))
    buffer[:] = b"xyz"  # its owner reuses it before the helper thread got to it
    assert hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_a_sink_reads_into_the_hashers_ring_or_one_reused_buffer() -> None:
    from vllm_fetch.core.body import BodyMeter
    from vllm_fetch.core.download_machine import Kind, Sink

    plain = Sink(Kind.STREAM, 0, BodyMeter("u"), hasher=hashlib.sha256()).buffers(1024)
    assert plain() is plain()  # written (and hashed in place) before the next read
    overlapped = OverlappedSha256()
    lend = Sink(Kind.STREAM, 0, BodyMeter("u"), hasher=overlapped).buffers(1024)  # type: ignore[arg-type]
    assert lend() is not lend()  # each read its own ring slot
    assert id(lend()) in overlapped._slots


def test_continuing_from_a_prefix_gives_the_whole_streams_digest_and_seal() -> None:
    data = os.urandom(2 * 1024 * 1024 + 3)
    cut = 700_001
    sha, sealer = hashlib.sha256(data[:cut]), seal.new_sealer()
    sealer.update(data[:cut])
    hasher = OverlappedSha256.continuing(sha, sealer)
    buffer = hasher.lend(256 * 1024)
    for start in range(cut, len(data), len(buffer)):
        buffer = hasher.lend(256 * 1024)
        piece = data[start:start + len(buffer)]
        buffer[:len(piece)] = piece
        hasher.update(memoryview(buffer)[:len(piece)])
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert seal.known(hashlib.sha256(data).hexdigest()) == xxhash.xxh3_128_hexdigest(data)
