"""The writer's burst rule (``take_burst``): when the background writer starts on what is queued
(driven by a fake queue and clock), and that queued bodies still reach the disk."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from pathlib import Path

import pytest

from tests.cache_entries import fresh_entry
from vllm_fetch import FetchCache
from vllm_fetch.cache import writer
from vllm_fetch.cache.costs import ENTRY_COST, blob_cost
from vllm_fetch.cache.writer import StoreJob, take_burst
from vllm_fetch.core.cache_policy import CacheEntry, cache_key

TEMPLATE = CacheEntry(url="http://example.com/x", headers={}, stored_at=0.0, request_time=0.0,
                      response_time=0.0)
Item = StoreJob | threading.Event | None


def job(size: int = 10, key: str = "k") -> StoreJob:
    return StoreJob(key, TEMPLATE, b"x" * size)


class FakeQueue:
    """Hands out ``items`` in order. Only the first item is waited for (``get()``); the rest
    are taken without waiting, and a ``pause`` moves the clock by its length (with ``arrival``
    set, a new job arrives every ``arrival`` seconds meanwhile, without end)."""

    def __init__(self, items: list[Item], *, arrival: float | None = None) -> None:
        self.items = list(items)
        self.arrival = arrival
        self.now = 100.0
        self.pauses: list[float] = []
        self.next_arrival = 100.0 + (arrival or 0.0)

    def clock(self) -> float:
        return self.now

    def get(self, block: bool = True, timeout: float | None = None) -> Item:
        assert len(self.pauses) < 1000, "the burst never ends"
        if self.items:
            return self.items.pop(0)
        if block:
            raise AssertionError("the writer would wait forever on an empty queue")
        raise queue.Empty

    def pause(self, seconds: float) -> None:
        assert seconds > 0, "a pause must be positive"
        self.pauses.append(seconds)
        self.now += seconds
        while self.arrival is not None and self.next_arrival <= self.now:
            self.items.append(job(key=str(self.next_arrival)))
            self.next_arrival += self.arrival


def burst(items: FakeQueue, clock: object = None) -> tuple[list[StoreJob], object, bool]:
    return take_burst(items, clock=clock or items.clock, pause=items.pause)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _slow_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    """A linger long enough that only the rule under test can end a burst."""
    monkeypatch.setattr(writer, "LINGER", 0.5)
    monkeypatch.setattr(writer, "MAX_LINGER", 10.0)


def test_everything_queued_is_taken_once_stores_pause() -> None:
    jobs = [job(key=str(n)) for n in range(5)]
    items = FakeQueue(list(jobs))
    taken, barrier, stop = burst(items)
    assert (taken, barrier, stop) == (jobs, None, False)
    assert items.pauses == [0.5]  # all taken at once, then one LINGER pause found no more


def test_a_flush_barrier_ends_the_burst_at_once() -> None:
    first, flush, later = job(), threading.Event(), job(key="later")
    items = FakeQueue([first, flush, later])
    assert burst(items) == ([first], flush, False)
    assert items.items == [later]  # queued after the flush: the next burst's
    assert items.now == 100.0  # no waiting


def test_the_stop_signal_takes_what_is_queued_and_stops() -> None:
    first = job()
    items = FakeQueue([first, None])
    assert burst(items) == ([first], None, True)


def test_enough_queued_bytes_start_the_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "LINGER_BYTES", 100)
    first, second, third = job(60), job(60), job(60)
    items = FakeQueue([first, second, third])
    assert burst(items) == ([first, second], None, False)
    assert items.items == [third]


def test_a_steady_stream_is_written_after_max_linger() -> None:
    """Stores that never pause for LINGER still get written: MAX_LINGER after the first."""
    items = FakeQueue([], arrival=0.3)
    items.items.append(job(key="first"))
    taken, _, stop = burst(items)
    assert not stop
    # the first, then one every 0.3 s, taken after each pause, until MAX_LINGER was up
    assert len(taken) == 34
    assert items.now == pytest.approx(110.0)  # and it paused only until MAX_LINGER was up
    assert all(p <= 0.5 for p in items.pauses)


def test_a_queued_body_reaches_disk_without_a_flush(tmp_path: Path) -> None:
    """The linger only delays the writer: another process sees the body soon, unasked."""
    cache = FetchCache(tmp_path)
    try:
        data = os.urandom(4096)
        key = cache_key("https://example.com/later")
        assert cache.submit_bytes(key, fresh_entry("https://example.com/later"), data, None) is None
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
        key = cache_key("https://example.com/backlog")
        done = cache.submit_bytes(key, fresh_entry("https://example.com/backlog"), b"body", None)
        assert done is not None
        # the running total after the commit: the body's block and its entry
        assert done.result(timeout=30) == blob_cost(len(b"body")) + ENTRY_COST
        assert cache.index.get(key) is not None
    finally:
        cache.close()


def test_max_linger_also_counts_time_between_pauses() -> None:
    """A burst whose writer is slow to look ends on time, and never pauses for less than
    nothing."""
    items = FakeQueue([job(key=str(n)) for n in range(3)], arrival=0.1)

    def slow_clock() -> float:  # every look at the clock costs 0.4 s here
        items.now += 0.4
        return items.now

    taken, _, _ = burst(items, clock=slow_clock)
    assert items.now <= 100.0 + 10.0 + 0.5 + 0.4  # MAX_LINGER, one last pause, one look
    assert len(taken) >= 3 and all(p > 0 for p in items.pauses)


def test_a_store_does_not_wake_the_writer(tmp_path: Path) -> None:
    """Stores during a burst are taken after the writer's pause, not one wake-up each; a
    flush wakes it at once."""
    cache = FetchCache(tmp_path)
    wakes: list[float] = []
    real = writer.take_burst

    def counting(items: writer.ItemQueue, **kwargs: object) -> object:
        pause = kwargs["pause"]
        assert callable(pause)

        def counted(seconds: float) -> object:
            wakes.append(seconds)
            return pause(seconds)

        return real(items, pause=counted)

    try:
        writer.take_burst = counting  # type: ignore[assignment]
        for n in range(50):
            url = f"https://example.com/{n}"
            cache.submit_bytes(cache_key(url), fresh_entry(url), b"x" * n, None)
        started = time.monotonic()
        cache.flush()
        assert time.monotonic() - started < 30  # generous: no linger after a flush
        assert len(wakes) < 50  # pauses, not a wake-up per store
        assert cache.info().entries == 50
    finally:
        writer.take_burst = real
        cache.close()
