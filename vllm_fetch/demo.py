"""``vllm-fetch demo``: a newcomer's first run, against a local origin that misbehaves on purpose.

No internet needed: the origin runs in-process on 127.0.0.1 (``demo_origin.DemoOrigin``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .connections import HTTPConnection
from .core.retry import RetryPolicy
from .demo_origin import DemoOrigin

STEPS = [
    ("/flaky", "the origin answers 503 with Retry-After: 1 -> vllm_fetch waits, then retries"),
    ("/cut", "the origin drops the connection half way -> retried, verified by sha256"),
    ("/stall", "the origin stalls mid-body -> the idle timeout (1 s) ends it, retried"),
]


def run_demo() -> int:
    """Run every step, print what happened, return the exit status."""
    with DemoOrigin(stall_seconds=30) as origin, tempfile.TemporaryDirectory() as tmp:
        conn = HTTPConnection(idle_timeout=1.0, retry=RetryPolicy(backoff_base=0.1))
        try:
            for path, story in STEPS:
                print(f"\n== {path}: {story}")
                started = time.monotonic()
                target = conn.download_file(origin.url(path), Path(tmp) / path.strip("/"),
                                            expected_sha256=origin.sha256)
                print(f"   ok: {target.stat().st_size:,} bytes, sha256 verified, "
                      f"{origin.hits[path]} requests, {time.monotonic() - started:.2f} s")
        finally:
            conn.close()
    print("\nAll downloads complete and verified.")
    return 0
