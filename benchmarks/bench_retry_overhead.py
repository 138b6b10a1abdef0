"""What the retry machinery costs on a call that succeeds at once (issue 3).

1. The retry machinery (built per call, as every method does) around a no-op, vs the bare
   no-op; and, for reference, a tenacity ``Retrying`` run per call (what it costs when the
   first attempt is not taken outside tenacity).
2. get_bytes / async_get_bytes of a 1 KiB body from a loopback nginx, with the default
   RetryPolicy, vs the same driver call without the loop (``fetch_body`` on the prepared
   request: private names, on purpose: that is exactly the call the loop wraps).

Blocks of calls alternate between the two variants; the median µs per call is reported.

    .venv/bin/python benchmarks/bench_retry_overhead.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from loopback_nginx import loopback_nginx
from tenacity import Retrying, stop_after_attempt

from vllm_fetch import HTTPConnection, RetryPolicy
from vllm_fetch.core.deadline import Deadline
from vllm_fetch.retry_loop import async_retrying, sync_retrying

URL = "http://127.0.0.1/x"


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


async def per_call_us_async(fn: Callable[[], Awaitable[object]], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await fn()
    return (time.perf_counter() - started) / calls * 1e6


def alternate(variants: dict[str, Callable[[], float]], blocks: int) -> dict[str, float]:
    """Run each variant's block in turn, ``blocks`` times; median µs per call of each."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(blocks):
        for name, block in variants.items():
            samples[name].append(block())
    return {name: statistics.median(values) for name, values in samples.items()}


def show(title: str, medians: dict[str, float], *, relative: bool = True) -> None:
    (base_name, base), (loop_name, looped) = medians.items()
    share = f" ({(looped - base) / base:+.1%} of the call)" if relative else ""
    print(f"{title}\n  {base_name:<44} {base:9.2f} µs/call\n  {loop_name:<44} {looped:9.2f}"
          f" µs/call\n  {'retry machinery':<44} {looped - base:+9.2f} µs/call{share}")


def bench_noop(calls: int, blocks: int) -> None:
    policy = RetryPolicy()

    def noop() -> None:
        return None

    async def anoop() -> None:
        return None

    show("retry machinery around a no-op (sync)", alternate({
        "bare call": lambda: per_call_us(noop, calls),
        "sync_retrying(RetryPolicy())(call)": lambda: per_call_us(
            lambda: sync_retrying(policy, Deadline(None), "GET", URL)(noop), calls),
    }, blocks), relative=False)

    async def run_async() -> dict[str, float]:
        samples: dict[str, list[float]] = {"bare await": [], "async_retrying(...)(call)": []}
        for _ in range(blocks):
            samples["bare await"].append(await per_call_us_async(anoop, calls))
            samples["async_retrying(...)(call)"].append(await per_call_us_async(
                lambda: async_retrying(policy, Deadline(None), "GET", URL)(anoop), calls))
        return {name: statistics.median(v) for name, v in samples.items()}

    show("retry machinery around a no-op (async)", asyncio.run(run_async()), relative=False)
    show("for reference: tenacity Retrying(...)(call) per call (sync)", alternate({
        "bare call": lambda: per_call_us(noop, calls),
        "Retrying(stop=stop_after_attempt(5))(call)": lambda: per_call_us(
            lambda: Retrying(stop=stop_after_attempt(5))(noop), calls),
    }, blocks), relative=False)


def bench_http(base: str, calls: int, blocks: int) -> None:
    url = f"{base}/small.bin"
    conn = HTTPConnection(retry=RetryPolicy(), cache=False)  # every call a real request

    def plain() -> bytes:
        return conn._sync.fetch_body(conn._request(url, timeout=None, extra_headers=None)).content

    for _ in range(50):  # warm the pooled connection
        assert conn.get_bytes(url) == plain()
    show(f"get_bytes of 1 KiB from loopback nginx ({calls} calls x {blocks} blocks)", alternate({
        "driver.fetch_body, no retry loop": lambda: per_call_us(plain, calls),
        "get_bytes, RetryPolicy()": lambda: per_call_us(lambda: conn.get_bytes(url), calls),
    }, blocks))
    conn.close()

    async def run_async() -> dict[str, float]:
        async with HTTPConnection(retry=RetryPolicy(), cache=False) as aconn:
            async def aplain() -> bytes:
                req = aconn._request(url, timeout=None, extra_headers=None)
                return (await aconn._async.fetch_body(req)).content

            for _ in range(50):
                assert await aconn.async_get_bytes(url) == await aplain()
            samples: dict[str, list[float]] = {"driver.fetch_body, no retry loop": [],
                                               "async_get_bytes, RetryPolicy()": []}
            for _ in range(blocks):
                samples["driver.fetch_body, no retry loop"].append(
                    await per_call_us_async(aplain, calls))
                samples["async_get_bytes, RetryPolicy()"].append(
                    await per_call_us_async(lambda: aconn.async_get_bytes(url), calls))
            return {name: statistics.median(v) for name, v in samples.items()}

    show("async_get_bytes of 1 KiB from loopback nginx", asyncio.run(run_async()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per block")
    parser.add_argument("--blocks", type=int, default=10)
    args = parser.parse_args()
    bench_noop(args.calls * 10, args.blocks)
    with tempfile.TemporaryDirectory(prefix="vllm-fetch-bench-") as tmp:
        Path(tmp).chmod(0o755)  # nginx workers run as "nobody" when started by root
        (Path(tmp) / "small.bin").write_bytes(bytes(range(256)) * 4)
        (Path(tmp) / "small.bin").chmod(0o644)
        with loopback_nginx(Path(tmp)) as base:
            bench_http(base, args.calls, args.blocks)


if __name__ == "__main__":
    main()
