"""The writer's burst rule (``take_burst``): when the background writer starts on what is queued
(driven with a fake clock and a real queue), and that queued bodies still reach the disk."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from pathlib import Path

import pytest

from vllm_fetch import FetchCache
from vllm_fetch.cache import writer
from vllm_fetch.cache.writer import StoreJob, take_burst
from vllm_fetch.core.cache_policy import CacheEntry, cache_key

TEMPLATE = CacheEntry(url="http://example.com/x", headers={}, stored_at=0.0, request_time=0.0,
                      response_time=0.0)


def job(size: int = 10, key: str = "k") -> StoreJob:
    return StoreJob(key, TEMPLATE, b"x" * size)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_everything_queued_is_taken_once_stores_pause() -> None:
    items: queue.SimpleQueue[object] = queue.SimpleQueue()
    jobs = [job(key=str(n)) for n in range(5)]
    for j in jobs:
        items.put(j)
    taken, barriers, stop = take_burst(items)  # type: ignore[arg-type]
    assert taken == jobs and barriers == [] and not stop
    assert items.empty()


def test_a_flush_barrier_ends_the_linger_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "LINGER", 3600.0)  # a lingering writer would block the test
    items: queue.SimpleQueue[object] = queue.SimpleQueue()
    first, barrier = job(), threading.Event()
    items.put(first)
    items.put(barrier)
    assert take_burst(items) == ([first], [barrier], False)  # type: ignore[arg-type]


def test_the_stop_signal_takes_what_is_queued_and_stops() -> None:
    items: queue.SimpleQueue[object] = queue.SimpleQueue()
    first = job()
    items.put(first)
    items.put(None)
    assert take_burst(items) == ([first], [], True)  # type: ignore[arg-type]


def test_enough_queued_bytes_start_the_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "LINGER", 3600.0)
    monkeypatch.setattr(writer, "LINGER_BYTES", 100)
    items: queue.SimpleQueue[object] = queue.SimpleQueue()
    big, later = job(60), job(60)
    for j in (big, later):
        items.put(j)
    taken, _, _ = take_burst(items)  # type: ignore[arg-type]
    assert taken == [big, later]


def test_a_steady_stream_is_written_after_max_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores that never pause still get written: the clock passes MAX_LINGER."""
    clock = Clock()
    monkeypatch.setattr(writer, "LINGER", 3600.0)

    class Stream(queue.SimpleQueue):  # type: ignore[type-arg]
        """Hands out a new job on every get, as a busy server would; time moves 0.3 s each."""

        def __init__(self) -> None:
            super().__init__()
            self.handed = 0

        def get(self, block: bool = True, timeout: float | None = None) -> StoreJob:
            assert timeout is None or timeout <= writer.MAX_LINGER
            self.handed += 1
            clock.now += 0.3
            return job(key=str(self.handed))

    stream = Stream()
    taken, _, stop = take_burst(stream, clock=clock)
    assert not stop
    assert len(taken) == stream.handed
    assert 3 <= len(taken) <= 5  # about MAX_LINGER (1 s) worth of 0.3 s arrivals, then written


def test_a_queued_body_reaches_disk_without_a_flush(tmp_path: Path) -> None:
    """The linger only delays the writer: another process sees the body soon, unasked."""
    cache = FetchCache(tmp_path)
    try:
        data = os.urandom(4096)
        url = "https://example.com/later"
        key = cache_key(url)
        now = time.time()
        stored = CacheEntry(url=url, headers={"cache-control": "max-age=600"}, stored_at=now,
                            request_time=now, response_time=now)
        assert cache.submit_bytes(key, stored, data, None) is None  # queued, nothing to wait for
        give_up = time.monotonic() + 30  # generous: linger is 20 ms, at most 1 s
        while cache.index.get(key) is None and time.monotonic() < give_up:
            time.sleep(0.01)
        on_disk = cache.index.get(key)
        assert on_disk is not None and on_disk.sha256 == hashlib.sha256(data).hexdigest()
        assert cache.blobs.read(on_disk.sha256, len(data)) == data
    finally:
        cache.close()


def test_a_store_that_must_wait_gets_a_future_that_settles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_PENDING_BYTES the caller gets its job's future; the writer settles it."""
    monkeypatch.setattr(writer, "MAX_PENDING_BYTES", 0)
    cache = FetchCache(tmp_path)
    try:
        url = "https://example.com/backlog"
        now = time.time()
        stored = CacheEntry(url=url, headers={"cache-control": "max-age=600"}, stored_at=now,
                            request_time=now, response_time=now)
        done = cache.submit_bytes(cache_key(url), stored, b"body", None)
        assert done is not None
        assert done.result(timeout=30) == len(b"body")  # the blob total after the commit
        assert cache.index.get(cache_key(url)) is not None
    finally:
        cache.close()
