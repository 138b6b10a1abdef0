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
