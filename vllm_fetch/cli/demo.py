"""``vllm-fetch demo``: a newcomer's first run, against a local origin that misbehaves on purpose.

No internet needed: the origin runs in-process on 127.0.0.1 (``demo_origin.DemoOrigin``), and
the cache and the download locks live in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..cache.fetch_cache import FetchCache
from ..connections import HTTPConnection
from ..core.retry import RetryPolicy
from .demo_origin import DemoOrigin

STEPS = [
    ("/flaky", "the origin answers 503 with Retry-After: 1 -> vllm_fetch waits, then retries"),
    ("/cut", "the origin drops the connection half way -> resumed with Range, verified"),
    ("/stall", "the origin stalls mid-body -> idle timeout (1 s), then resumed"),
]


def _requests_seen(origin: DemoOrigin, path: str) -> str:
    asked = [f"Range: {r}" if r else "whole file" for r in origin.seen[path]]
    return f"{len(asked)} request(s): " + ", ".join(asked)


@contextlib.contextmanager
def _locks_in(directory: Path) -> Iterator[None]:
    """Download locks in ``directory`` for the demo: it leaves nothing in the user's cache."""
    before = os.environ.get("VLLM_FETCH_LOCK_DIR")
    os.environ["VLLM_FETCH_LOCK_DIR"] = str(directory)
    try:
        yield
    finally:
        if before is None:
            del os.environ["VLLM_FETCH_LOCK_DIR"]
        else:
            os.environ["VLLM_FETCH_LOCK_DIR"] = before


def run_demo() -> int:
    """Run every step, print what happened, return the exit status."""
    with DemoOrigin(stall_seconds=30) as origin, tempfile.TemporaryDirectory() as tmp, \
            _locks_in(Path(tmp) / "locks"):
        work = Path(tmp)
        cache = FetchCache(work / "cache")
        conn = HTTPConnection(idle_timeout=1.0, retry=RetryPolicy(backoff_base=0.1),
                              cache=cache)
        try:
            for path, story in STEPS:
                print(f"\n== {path}: {story}")
                started = time.monotonic()
                result = conn.fetch_file(origin.url(path), work / path.strip("/"),
                                         expected_sha256=origin.sha256(path), progress=False)
                print(f"   ok: {result.size:,} bytes, sha256 verified, "
                      f"{time.monotonic() - started:.2f} s; origin saw "
                      f"{_requests_seen(origin, path)}")
            print("\n== /cut again, to another file: served from the cache, no request")
            before = len(origin.seen["/cut"])
            started = time.monotonic()
            again = conn.fetch_file(origin.url("/cut"), work / "copy", progress=False)
            print(f"   ok: from cache={again.from_cache}, "
                  f"{len(origin.seen['/cut']) - before} new request(s), "
                  f"{(time.monotonic() - started) * 1000:.1f} ms")
        finally:
            conn.close()
            cache.close()
    print("\nAll downloads complete and verified.")
    return 0
