"""Parallel ranged downloads vs aria2, and peak memory, against a loopback nginx.

Needs nginx and aria2c (``apt-get install -y nginx-light aria2``; installed when run as root).
Starts its own nginx on 127.0.0.1 (``loopback_nginx``: temp prefix and config; ``limit_rate 20m``
per connection under ``/capped/``, no cap elsewhere), then:

1. ``connections=8`` (sync and async) vs ``aria2c -x8 -s8`` on a 256 MiB file under ``/capped/``,
   in alternating rounds. vllm_fetch is timed inside its own process around the call (imports
   excluded), and once more as a whole process (interpreter start-up and imports included, as
   aria2c is timed: its own start-up is a few ms).
2. Peak RSS of a process downloading 1 GiB with ``connections=8`` , uncapped (``ru_maxrss``
   after the call; the target is < 80 MiB).

Run: ``.venv/bin/python benchmarks/bench_parallel.py [--rounds 3] [--size-mib 256]
[--rss-mib 1024]``. Not run by the tests.

Measured 2026-11-25 on the 2-core dev VM (nginx 1.22.1, aria2 from Debian 12), 3 rounds, median:

    aria2c -x8 -s8             1.74 s  147.2 MiB/s
    whole process, sync c=8    1.80 s  142.2 MiB/s   (interpreter start-up + imports included)
    vllm_fetch sync c=8        1.59 s  161.3 MiB/s   (the call alone)
    vllm_fetch async c=8       1.59 s  160.7 MiB/s
    sync c=8 +sha256           1.65 s  155.0 MiB/s   (expected_sha256: hashed during the transfer)
    async c=8 +sha256          1.67 s  153.8 MiB/s
    peak RSS, 1 GiB, c=8: sync 53.1 MiB, async 64.6 MiB (44 MiB of it is the interpreter+imports)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from loopback_nginx import ensure_tools, loopback_nginx

CHILD = textwrap.dedent("""
    import asyncio, json, resource, sys, time
    from vllm_fetch import HTTPConnection
    mode, url, target, connections = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    sha = sys.argv[5] if len(sys.argv) > 5 else None
    conn = HTTPConnection(cache=False)  # the transfer alone, as aria2c does it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "sync":
        conn.download_file(url, target, connections=connections, progress=False,
                           expected_sha256=sha)
    else:
        asyncio.run(conn.async_download_file(url, target, connections=connections,
                                             progress=False, expected_sha256=sha))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "rss_before_kib": before, "rss_peak_kib": peak}))
""")


def make_file(path: Path, mib: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as out:
        for index in range(mib):
            out.write(block[:-8] + index.to_bytes(8, "big"))



def run_vllm_fetch(mode: str, url: str, target: Path, connections: int,
                   sha256: str | None = None) -> dict[str, float]:
    target.unlink(missing_ok=True)
    args = [sys.executable, "-c", CHILD, mode, url, str(target), str(connections)]
    start = time.perf_counter()
    out = subprocess.run(args + ([sha256] if sha256 else []),
                         check=True, capture_output=True, text=True).stdout
    result = dict(json.loads(out.strip().splitlines()[-1]))
    result["process_seconds"] = time.perf_counter() - start
    return result


def run_aria2(url: str, target: Path) -> float:
    target.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(["aria2c", "-x8", "-s8", "--allow-overwrite=true",
                    "--console-log-level=warn", "--summary-interval=0",
                    "-d", str(target.parent), "-o", target.name, url],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rss-mib", type=int, default=1024)
    parser.add_argument("--rss-only", action="store_true", help="skip the timed rounds")
    args = parser.parse_args()
    ensure_tools("nginx", "aria2c")
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # nginx's workers (user nobody) must reach www/
        (root / "www").mkdir()
        make_file(root / "www" / "capped.bin", args.size_mib)
        args.capped_sha256 = file_sha256(root / "www" / "capped.bin")
        make_file(root / "www" / "big.bin", args.rss_mib)
        out = root / "out"
        out.mkdir()
        with loopback_nginx(root / "www", workers=2) as base:
            bench(base, out, args)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def bench(base: str, out: Path, args: argparse.Namespace) -> None:
    capped = f"{base}/capped/capped.bin"
    sha = args.capped_sha256
    runners = {
        "aria2c -x8 -s8": lambda: run_aria2(capped, out / "a.bin"),
        "whole process, sync c=8": lambda: run_vllm_fetch("sync", capped, out / "s.bin",
                                                          8)["process_seconds"],
        "vllm_fetch sync c=8": lambda: run_vllm_fetch("sync", capped, out / "s.bin", 8)["seconds"],
        "vllm_fetch async c=8": lambda: run_vllm_fetch("async", capped, out / "s.bin",
                                                       8)["seconds"],
        "sync c=8 +sha256": lambda: run_vllm_fetch("sync", capped, out / "s.bin", 8,
                                                   sha)["seconds"],
        "async c=8 +sha256": lambda: run_vllm_fetch("async", capped, out / "s.bin", 8,
                                                    sha)["seconds"],
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for round_number in range(0 if args.rss_only else args.rounds):
        order = names if round_number % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(runners[name]())
        print(f"round {round_number + 1}: " + ", ".join(
            f"{name} {times[name][-1]:.2f}s" for name in names), flush=True)
    if not args.rss_only:
        print(f"\n{args.size_mib} MiB, limit_rate 20m per connection, {args.rounds} rounds "
              "(median):")
    for name in names if not args.rss_only else []:
        median = statistics.median(times[name])
        print(f"  {name:22s} {median:6.2f} s  {args.size_mib / median:7.1f} MiB/s")
    for mode in ("sync", "async"):
        result = run_vllm_fetch(mode, f"{base}/big.bin", out / "big.bin", 8)
        print(f"peak RSS {mode}, {args.rss_mib} MiB with connections=8 (uncapped): "
              f"{result['rss_peak_kib'] / 1024:.1f} MiB (after imports: "
              f"{result['rss_before_kib'] / 1024:.1f} MiB), {result['seconds']:.2f} s")


if __name__ == "__main__":
    main()
