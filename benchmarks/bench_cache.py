"""Cache benchmarks (not run by the tests). Usage: ``python benchmarks/bench_cache.py``.

1. A fresh hit of a 100 KB object, in-process: median microseconds per ``get_bytes`` (target
   < 25 µs), next to requests-cache's and hishel's (RFC 9111 mode, sqlite storage) hits in the
   same run when they are installed (``pip install -e '.[bench]'``; never dependencies of
   vllm_fetch itself). ``--hit-only`` stops after this part.
2. 1000 distinct 100 KB objects fetched with ``async_get_bytes`` at concurrency 64 into a cold
   cache, against raw aiohttp, and vllm_fetch with the cache off, in alternating rounds: wall
   time, and CPU time per fetch of the client process (all threads, ``time.process_time()``;
   for the cold cache, until ``flush()`` returned, so its queued writes are included, split
   into the event loop's thread and the others, the writer's). One more
   row, raw aiohttp keeping every body it fetched, shows what holding 100 MB of new bodies in
   memory costs by itself (first-touch page faults, and garbage collection over the survivors):
   a write-behind cache holds them until they are written.
   ``--miss-only``: only raw aiohttp and cache off.
3. ``--calls``: only Python function calls per fetch (cProfile) of raw aiohttp and cache off.
4. With ``--sync``: ``--sync-count`` distinct 100 KB objects fetched one after another with
   ``get_bytes`` (cache off) against a plain ``requests.Session`` (both honour the environment).

The origin runs in a separate process (aiohttp.web on 127.0.0.1) so it does not share the
client's GIL. Each timed section is repeated ``--rounds`` times; the median is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from vllm_fetch import FetchCache, HTTPConnection, RetryPolicy

SIZE = 100 * 1024


def serve(delay: float = 0.0) -> None:
    """The origin: ``/obj/N`` is a distinct, cacheable 100 KB body, sent after ``delay``
    seconds (a stand-in for a remote origin's round trip; 0 on loopback)."""
    from aiohttp import web

    base = os.urandom(SIZE)

    async def obj(request: web.Request) -> web.Response:
        n = request.match_info["n"]
        if delay:
            await asyncio.sleep(delay)
        body = n.encode().ljust(16, b"-") + base[16:]
        return web.Response(body=body, headers={"Cache-Control": "max-age=600",
                                                "ETag": f'"{n}"'})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/obj/{n}", obj)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[attr-defined]
        await asyncio.Event().wait()

    asyncio.run(main())


def bench_hit(base: str, samples: int, rounds: int) -> None:
    url = f"{base}/obj/hit"
    with tempfile.TemporaryDirectory() as tmp:
        cache = FetchCache(tmp)
        conn = HTTPConnection(cache=cache, retry=RetryPolicy.none())
        conn.get_bytes(url)
        cache.flush()  # measure a hit from disk, not from the write-behind queue
        ours = [_median_us(lambda: conn.get_bytes(url), samples) for _ in range(rounds)]
        print(f"vllm_fetch hit, 100 KB:     median {statistics.median(ours):7.1f} µs "
              f"(rounds: {', '.join(f'{x:.1f}' for x in ours)})")
        ahits = [asyncio.run(_async_hit_us(conn, url, samples)) for _ in range(rounds)]
        print(f"vllm_fetch async hit:       median {statistics.median(ahits):7.1f} µs "
              f"(rounds: {', '.join(f'{x:.1f}' for x in ahits)})")
        conn.close()
        cache.close()
    try:
        import requests_cache
    except ImportError:
        print("requests-cache not installed: no comparison")
        return
    with tempfile.TemporaryDirectory() as tmp:
        session = requests_cache.CachedSession(str(Path(tmp) / "rc"), backend="sqlite")
        session.get(url)
        assert session.get(url).from_cache

        def hit() -> bytes:
            return session.get(url).content

        theirs = [_median_us(hit, samples) for _ in range(rounds)]
        print(f"requests-cache hit, 100 KB: median {statistics.median(theirs):7.1f} µs "
              f"(rounds: {', '.join(f'{x:.1f}' for x in theirs)})")
        session.close()
    _bench_hishel(url, samples, rounds)


def _bench_hishel(url: str, samples: int, rounds: int) -> None:
    try:
        import requests
        from hishel import SqliteStorage
        from hishel.requests import CacheAdapter
    except ImportError:
        print("hishel not installed: no comparison")
        return
    with tempfile.TemporaryDirectory() as tmp:
        session = requests.Session()
        storage = SqliteStorage(database_path=str(Path(tmp) / "hishel.db"))
        session.mount("http://", CacheAdapter(storage=storage, rfc=True))
        assert session.get(url).content
        assert session.get(url).headers.get("X-Hishel-From-Cache") == "true"

        def hit() -> bytes:
            return session.get(url).content

        theirs = [_median_us(hit, samples) for _ in range(rounds)]
        print(f"hishel hit, 100 KB:         median {statistics.median(theirs):7.1f} µs "
              f"(rounds: {', '.join(f'{x:.1f}' for x in theirs)})")
        session.close()


async def _async_hit_us(conn: HTTPConnection, url: str, samples: int) -> float:
    times = []
    for _ in range(samples):
        start = time.perf_counter_ns()
        await conn.async_get_bytes(url)
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1000


def _median_us(fn: object, samples: int) -> float:
    assert callable(fn)
    times = []
    for _ in range(samples):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1000


async def _gather(
    fetch: object, urls: list[str], concurrency: int, kept: list[bytes] | None = None
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process, all threads) for fetching ``urls``."""
    assert callable(fetch)
    gate = asyncio.Semaphore(concurrency)

    async def one(url: str) -> None:
        async with gate:
            data = await fetch(url)
            assert len(data) == SIZE
            if kept is not None:
                kept.append(data)

    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(one(u) for u in urls))
    return time.perf_counter() - start, time.process_time() - cpu


async def _raw(urls: list[str], concurrency: int, *, keep: bool = False) -> tuple[float, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        async def fetch(url: str) -> bytes:
            async with session.get(url) as response:
                response.raise_for_status()
                return await response.read()

        return await _gather(fetch, urls, concurrency, [] if keep else None)


async def _ours(urls: list[str], concurrency: int, cache: FetchCache | bool) -> tuple[float, float]:
    async with HTTPConnection(cache=cache, retry=RetryPolicy.none()) as conn:
        return await _gather(conn.async_get_bytes, urls, concurrency)


def _cold(urls: list[str], concurrency: int) -> tuple[float, float, float, float]:
    """(seconds until every call returned, seconds until every body was also on disk, CPU
    seconds of the process until then: the writer thread's queued writes included, and of
    that the CPU seconds of this thread, the event loop's)."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = FetchCache(tmp)
        cpu, loop_cpu = time.process_time(), time.thread_time()
        start = time.perf_counter()
        returned, _ = asyncio.run(_ours(urls, concurrency, cache))
        cache.flush()
        stored = time.perf_counter() - start
        used, on_loop = time.process_time() - cpu, time.thread_time() - loop_cpu
        assert cache.info().entries == len(urls)
        cache.close()
    return returned, stored, used, on_loop


def bench_cold(base: str, count: int, concurrency: int, rounds: int,
               miss_only: bool = False) -> None:
    """Every variant once per round, in turn (alternating rounds); wall time and CPU time per
    fetch (``time.process_time()``: the client process, all threads). ``miss_only``: only raw
    aiohttp and cache off."""
    names = ["raw aiohttp", "vllm_fetch, cache off", "vllm_fetch, cold cache",
             "  ... until all on disk", "raw aiohttp, bodies kept"]
    if miss_only:
        names = names[:2]
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    on_loop: list[float] = []  # the cold cache's CPU on the event loop's thread
    for r in range(rounds):
        urls = [f"{base}/obj/{r}-{i}" for i in range(count)]
        # which of the two goes first alternates: the one that follows pays for the garbage
        # the other left (a collection that falls into its run), and for its closed sockets
        pair = [(names[0], functools.partial(_raw, urls, concurrency)),
                (names[1], functools.partial(_ours, urls, concurrency, False))]
        for name, run in pair if r % 2 == 0 else pair[::-1]:
            w, c = asyncio.run(run())
            wall[name].append(w)
            cpu[name].append(c)
        if miss_only:
            continue
        returned, stored, used, loop_used = _cold(urls, concurrency)
        wall[names[2]].append(returned)
        wall[names[3]].append(stored)
        cpu[names[2]].append(used)
        on_loop.append(loop_used)
        w, c = asyncio.run(_raw(urls, concurrency, keep=True))
        wall[names[4]].append(w)
        cpu[names[4]].append(c)
    raw, raw_cpu = statistics.median(wall[names[0]]), statistics.median(cpu[names[0]])
    off = statistics.median(wall[names[1]])
    print(f"{count} x 100 KB, async, concurrency {concurrency} (median of {rounds} rounds; "
          f"CPU: the client process, all threads; the cold cache's CPU includes its writes):")
    for name in names:
        median = statistics.median(wall[name])
        line = (f"  {name:25s}: {median:6.3f} s  {median / raw:5.2f}x raw  "
                f"{median / off:5.2f}x cache-off")
        if cpu[name]:
            cpu_median = statistics.median(cpu[name])
            line += (f"  | CPU {cpu_median / count * 1e6:6.1f} µs/fetch "
                     f"{cpu_median / raw_cpu:5.2f}x raw")
        print(line)
        print(f"      wall rounds: {', '.join(f'{t:.3f}' for t in wall[name])}"
              + (f"; CPU µs/fetch rounds: "
                 f"{', '.join(f'{t / count * 1e6:.0f}' for t in cpu[name])}"
                 if cpu[name] else ""))
        if on_loop and name == names[2]:  # (--miss-only has no cold-cache row)
            loop_us = [t / count * 1e6 for t in on_loop]
            rest_us = [(c - t) / count * 1e6 for c, t in zip(cpu[name], on_loop, strict=True)]
            split = ", ".join(f"{a:.0f}+{b:.0f}"
                              for a, b in zip(loop_us, rest_us, strict=True))
            print(f"      of which the event loop's thread {statistics.median(loop_us):.0f} "
                  f"µs/fetch, the other threads (the writer) {statistics.median(rest_us):.0f} "
                  f"(rounds: {split})")


def bench_calls(base: str, count: int, concurrency: int) -> None:
    """Python function calls per fetch (cProfile), raw aiohttp against cache off: the count
    does not depend on the machine's load, unlike the times."""
    import cProfile
    import pstats

    warm = [f"{base}/obj/warm-{i}" for i in range(64)]
    asyncio.run(_raw(warm, concurrency))
    asyncio.run(_ours(warm, concurrency, False))
    for name in ("raw aiohttp", "vllm_fetch, cache off"):
        urls = [f"{base}/obj/calls-{name[:3]}-{i}" for i in range(count)]
        run = _raw(urls, concurrency) if name == "raw aiohttp" else _ours(urls, concurrency, False)
        profile = cProfile.Profile()
        profile.enable()
        asyncio.run(run)
        profile.disable()
        calls = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
        print(f"  {name:25s}: {calls / count:6.1f} Python calls per fetch (cProfile, "
              f"{count} fetches, concurrency {concurrency})")


def bench_sync(base: str, count: int, rounds: int) -> None:
    import requests

    def plain(urls: list[str]) -> float:
        with requests.Session() as session:
            start = time.perf_counter()
            for url in urls:
                response = session.get(url)
                response.raise_for_status()
                assert len(response.content) == SIZE
            return time.perf_counter() - start

    def ours(urls: list[str]) -> float:
        with HTTPConnection(cache=False, retry=RetryPolicy.none()) as conn:
            start = time.perf_counter()
            for url in urls:
                assert len(conn.get_bytes(url)) == SIZE
            return time.perf_counter() - start

    results: dict[str, list[float]] = {"requests": [], "vllm_fetch get_bytes, cache off": []}
    for r in range(rounds):
        for n, (name, fn) in enumerate(zip(results, (plain, ours), strict=True)):
            results[name].append(fn([f"{base}/obj/s{n}{r}-{i}" for i in range(count)]) / count)
    raw = statistics.median(results["requests"])
    print(f"{count} x 100 KB, sync, one after another (median of {rounds} rounds):")
    for name, times in results.items():
        median = statistics.median(times)
        print(f"  {name:32s}: {median * 1e6:6.1f} µs/fetch  {median / raw:5.2f}x requests  "
              f"(rounds: {', '.join(f'{t * 1e6:.0f}' for t in times)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sync", action="store_true", help="also compare the sync side")
    parser.add_argument("--hit-only", action="store_true", help="only the cache-hit comparison")
    parser.add_argument("--miss-only", action="store_true",
                        help="only raw aiohttp and cache off (no hit, no cold cache)")
    parser.add_argument("--calls", action="store_true",
                        help="only the Python calls per fetch, raw aiohttp vs cache off")
    parser.add_argument("--sync-count", type=int, default=500)
    parser.add_argument("--origin-delay-ms", type=float, default=0.0,
                        help="the origin waits this long before each response (a remote "
                             "origin's round trip; the target is defined on loopback: 0)")
    args = parser.parse_args()
    if args.serve:
        serve(args.origin_delay_ms / 1000)
        return
    origin = subprocess.Popen([sys.executable, __file__, "--serve", "--origin-delay-ms",
                               str(args.origin_delay_ms)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert origin.stdout is not None
        base = f"http://127.0.0.1:{int(origin.stdout.readline())}"
        if args.calls:
            bench_calls(base, args.count, args.concurrency)
            return
        if args.miss_only:
            bench_cold(base, args.count, args.concurrency, args.rounds, miss_only=True)
            return
        bench_hit(base, args.samples, args.rounds)
        if args.hit_only:
            return
        bench_cold(base, args.count, args.concurrency, args.rounds)
        if args.sync:
            bench_sync(base, args.sync_count, args.rounds)
    finally:
        origin.terminate()
        origin.wait(10)


if __name__ == "__main__":
    main()
