"""What a cold store of one 100 KB body costs in CPU, primitive by primitive, each measured alone.

The parts no cold cache within the design can skip (``../shared/DESIGN.md``: sha256 is the
blob's address, xxhash the seal checked on every read, the diskcache index holds the entry,
bodies are durable once committed), through vllm_fetch's own store: the body's sha256, its
seal, its segment append (written and synced 128 to a group, as the writer does), its index
rows (the entry and its segment record, 128 to a transaction), and the index query that finds
a miss. Each is ``time.thread_time()`` per body over 1024 bodies, the median of ``--rounds``.

Set these beside ``bench_cache.py``'s cold-cache row: the fetch itself (the cache-off row),
plus these, plus holding the bodies until written (its "bodies kept" row minus raw aiohttp), is
what the cold cache costs before any of its own decisions, queueing or bookkeeping.

Run: ``(cd /tmp && python /path/to/benchmarks/bench_store_floor.py [--rounds 5])``. Not run by
the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from vllm_fetch import FetchCache
from vllm_fetch.core.cache_policy import CacheEntry
from vllm_fetch.core.segment_record import Location, body_seal

SIZE = 100 * 1024
COUNT = 1024
GROUP = 128  # the writer's MAX_GROUP
FIELDS = (("Content-Type", "application/octet-stream"), ("Content-Length", str(SIZE)),
          ("Cache-Control", "max-age=600"), ("ETag", '"1"'),
          ("Date", "Tue, 01 Dec 2026 10:00:00 GMT"), ("Server", "Python/3.11 aiohttp/3.14"))


def _per_body_us(work: Callable[[], object]) -> float:
    start = time.thread_time()
    work()
    return (time.thread_time() - start) / COUNT * 1e6


def one_round(tag: int, bodies: list[bytes]) -> dict[str, float]:
    costs: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = FetchCache(tmp)
        shas: list[str] = []
        seals: list[str] = []
        costs["sha256 (the address)"] = _per_body_us(
            lambda: shas.extend(hashlib.sha256(b).hexdigest() for b in bodies))
        costs["seal (xxh3-128)"] = _per_body_us(
            lambda: seals.extend(body_seal(b) for b in bodies))
        segments = cache.blobs.segments
        assert segments is not None
        where: list[Location] = []

        def append() -> None:
            for start in range(0, COUNT, GROUP):
                group = range(start, start + GROUP)
                where.extend(segments.append([(shas[i], seals[i], bodies[i]) for i in group]))

        costs["segment append + sync"] = _per_body_us(append)
        now = time.time()
        items = []
        for i in range(COUNT):
            url = f"http://127.0.0.1:1/obj/{tag}-{i}"
            key, _ = cache.key_for(url, {})
            entry = CacheEntry(url=url, headers=dict(FIELDS), stored_at=now, request_time=now,
                               response_time=now, fields=FIELDS, sha256=shas[i],
                               size=len(bodies[i]), seal=seals[i])
            items.append((key, entry, SIZE))

        def commit() -> None:
            for start in range(0, COUNT, GROUP):
                group = range(start, start + GROUP)
                cache.index.commit_many([items[i] for i in group],
                                        placed=[(shas[i], where[i], seals[i], now) for i in group])

        costs["index rows (entry + segment record)"] = _per_body_us(commit)
        misses = [cache.key_for(f"http://127.0.0.1:1/miss/{tag}-{i}", {})[0]
                  for i in range(COUNT)]
        costs["index query of a miss"] = _per_body_us(
            lambda: [cache.index.get(key) for key in misses])
        cache.close()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    base = os.urandom(SIZE)
    bodies = [str(i).encode().ljust(16, b"-") + base[16:] for i in range(COUNT)]
    rounds = [one_round(r, bodies) for r in range(args.rounds)]
    print(f"CPU per 100 KB body (thread_time, {COUNT} bodies, median of {args.rounds} rounds):")
    total = 0.0
    for name in rounds[0]:
        values = [costs[name] for costs in rounds]
        total += statistics.median(values)
        print(f"  {name:38s} {statistics.median(values):6.1f} µs  "
              f"(rounds: {', '.join(f'{v:.1f}' for v in values)})")
    print(f"  {'sum of the medians':38s} {total:6.1f} µs")


if __name__ == "__main__":
    main()
