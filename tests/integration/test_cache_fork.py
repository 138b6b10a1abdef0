"""The cache across fork: multiprocessing children that exit at once still store what they
queued, and a child never inherits the parent's queue or a lock a parent thread held."""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

import pytest

from tests.cache_entries import fresh_entry
from vllm_fetch import FetchCache
from vllm_fetch.core.cache_policy import cache_key

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX-only"),
    # forking with the cache writer's thread alive is the point (Python 3.12+ warns about it)
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

FORK = multiprocessing.get_context("fork")


def _queue_one_and_exit(directory: str, url: str, body: bytes) -> None:
    cache = FetchCache(directory)
    assert cache.submit_bytes(cache_key(url), fresh_entry(url), body, None) is None
    # returns at once: multiprocessing ends the child with os._exit (no atexit)


def test_a_child_that_exits_at_once_still_stores_its_body(tmp_path: Path) -> None:
    url, body = "https://example.com/from-child", os.urandom(2048)
    child = FORK.Process(target=_queue_one_and_exit, args=(str(tmp_path), url, body))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    cache = FetchCache(tmp_path)
    try:
        stored = cache.index.get(cache_key(url))
        assert stored is not None, "the child's queued body was lost at exit"
        assert cache.blobs.read(stored.sha256, len(body)) == body
    finally:
        cache.close()


def _store_while_parent_holds_the_lock(cache: FetchCache, parents_url: str, url: str) -> None:
    assert cache_key(parents_url) not in cache._pending  # the parent's queue stays the parent's
    assert cache.store_bytes(cache_key(url), fresh_entry(url), b"child", None)
    cache.close()


def test_a_forked_child_starts_with_no_queue_and_free_locks(tmp_path: Path) -> None:
    cache = FetchCache(tmp_path)
    parents_url, childs_url = "https://example.com/parent", "https://example.com/child"
    try:
        cache.submit_bytes(cache_key(parents_url), fresh_entry(parents_url), b"parent", None)
        with cache._guard:  # a parent thread inside the cache at the moment of the fork
            child = FORK.Process(target=_store_while_parent_holds_the_lock,
                                 args=(cache, parents_url, childs_url))
            child.start()
            child.join(60)
            alive = child.is_alive()
            if alive:
                child.kill()
        assert not alive, "the child deadlocked on a lock held in the parent"
        assert child.exitcode == 0
        cache.flush()
        assert cache.index.get(cache_key(parents_url)) is not None  # written by the parent
        assert cache.index.get(cache_key(childs_url)) is not None  # written by the child
    finally:
        cache.close()
