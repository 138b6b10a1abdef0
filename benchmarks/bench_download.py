"""download_file / async_download_file against curl and a vLLM-style baseline (issue 2, item 8).

Starts a loopback nginx (its own temp prefix and config) serving a random file, then runs every
tool in its own subprocess, alternating the order each round, and prints median times, ratios and
each tool's peak RSS (``ru_maxrss`` of that child, from ``os.wait4``). Every downloaded file is
checked (size each round, sha256 in the first round). Not part of the test suite.

``curl_fsync`` is curl followed by an fsync of its file (``download_file`` fsyncs before its
rename; curl does not). ``disk_floor`` is the download without the network: the same number of
bytes, already in memory, written the way ``download_file`` writes them (256 KiB positional
writes, writeback started every 8 MiB on a helper thread) and fsynced: how long this disk takes
to make them durable, which a crash-safe download (fsync before the rename) cannot beat by much
however fast the network is (noisy when other work uses the disk). ``--compare
main=/path/to/.venv/bin/python`` adds every vllm_fetch row run by that interpreter (its
venv's vllm_fetch) to the same alternating rounds.

    .venv/bin/python benchmarks/bench_download.py                 # 256 MiB, 5 rounds
    .venv/bin/python benchmarks/bench_download.py --sweep         # chunk_size sweep (sync)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from loopback_nginx import ensure_tools, loopback_nginx

HERE = Path(__file__).resolve()
TOOLS = ("curl", "curl_fsync", "disk_floor", "aria2c", "download_file", "async_download_file",
         "download_file_auto",
         "download_file_cold_cache", "download_file_cache", "async_download_file_cache",
         "download_file_cache_x8", "vllm_baseline")
#: rows with the cache on (the default): a fresh cache beside the target each round
CACHED = ("download_file_cold_cache", "download_file_cache", "async_download_file_cache",
          "download_file_cache_x8")
MIB = 1024 * 1024


# -- what runs inside each child: time the download only (imports and startup excluded) --------
def run_one(tool: str, url: str, target: str, chunk_size: int | None) -> float:
    if tool == "disk_floor":
        return _disk_floor(Path(target), int(url))
    if tool == "vllm_baseline":
        import requests  # vLLM's download_file: iter_content(chunk_size=128) straight to disk

        started = time.perf_counter()
        with requests.Session() as session, session.get(url, stream=True) as response:
            response.raise_for_status()
            with open(target, "wb") as out:
                for chunk in response.iter_content(chunk_size=128):
                    out.write(chunk)
        return time.perf_counter() - started

    from vllm_fetch import HTTPConnection

    kwargs: dict[str, int] = {} if chunk_size is None else {"chunk_size": chunk_size}
    # one stream, like curl (auto splits files >= 64 MiB)
    kwargs["connections"] = {"download_file_auto": 0, "download_file_cache_x8": 8}.get(tool, 1)
    if not kwargs["connections"]:
        del kwargs["connections"]
    # The transfer alone: no cache (curl has none), except in the rows that measure the cache
    # on (the default), each into a fresh cache beside the target, removed by the parent.
    cache = Path(target).parent / "cold-cache" if tool in CACHED else False
    conn = HTTPConnection(cache=cache)
    if tool.startswith("async"):
        # imported on first async use: an import (aiohttp builds its TLS contexts then, 0.1 s
        # and more), not part of the download
        import vllm_fetch.download.async_runner  # noqa: F401
    started = time.perf_counter()
    if not tool.startswith("async"):
        conn.download_file(url, target, **kwargs)
    else:
        async def fetch() -> None:
            async with conn:
                await conn.async_download_file(url, target, **kwargs)
        asyncio.run(fetch())
    return time.perf_counter() - started


def _disk_floor(target: Path, size: int) -> float:
    """Write ``size`` bytes from memory as ``download_file`` writes a stream (one reused
    256 KiB buffer), then fsync. Not one ``size``-byte source: in this VM, first-touching
    256 MiB of fresh anonymous memory beside the page cache made the floor 2-3x slower than
    the downloads it is the floor of."""
    from vllm_fetch.download.partials import WRITEBACK_STEP
    from vllm_fetch.files import WriteBehind

    step = 256 * 1024
    block = memoryview(os.urandom(step))
    behind = WriteBehind()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        started = time.perf_counter()
        unflushed = 0
        for offset in range(0, size, step):
            unflushed += os.pwrite(fd, block[:min(step, size - offset)], offset)
            if unflushed >= WRITEBACK_STEP:
                behind.poke(fd)
                unflushed = 0
        behind.close()
        os.fsync(fd)
        return time.perf_counter() - started
    finally:
        os.close(fd)


# -- the parent: spawn, time, measure RSS, verify ------------------------------------------------
@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)
    disk: list[int] = field(default_factory=list)


def disk_usage(*roots: Path) -> int:
    """Bytes on disk under ``roots``: summed st_blocks, a hard-linked inode counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in roots:
        if not root.exists():
            continue
        for path in [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]:
            st = path.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def spawn(
    tool: str, url: str, target: Path, chunk_size: int | None, python: str = sys.executable,
    size: int = 0,
) -> tuple[float, float, int]:
    """Run one tool in a child: (seconds it reports, its peak RSS in MiB, its minor faults;
    ru_maxrss is in KiB on Linux)."""
    if tool == "aria2c":  # timed from here: its own start-up (a few ms) included
        started = time.perf_counter()
        aria = subprocess.Popen(["aria2c", "-x8", "-s8", "--allow-overwrite=true",
                                 "--console-log-level=warn", "--summary-interval=0",
                                 "-d", str(target.parent), "-o", target.name, url],
                                stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(aria.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit("aria2c failed")
        return seconds, usage.ru_maxrss / 1024, usage.ru_minflt
    if tool in ("curl", "curl_fsync"):
        argv = ["curl", "-s", "-f", "-o", str(target), "-w", "%{time_total}", url]
    else:
        source = str(size) if tool == "disk_floor" else url  # the floor has no source: a size
        argv = [python, str(HERE), "--one", tool, source, str(target)]
        if chunk_size is not None:
            argv += ["--chunk-size", str(chunk_size)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{tool} failed with exit code {proc.returncode}")
    seconds = float(out.decode().strip())
    if tool == "curl_fsync":  # curl, then the fsync a crash-safe download makes before its rename
        started = time.perf_counter()
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        seconds += time.perf_counter() - started
    return seconds, usage.ru_maxrss / 1024, usage.ru_minflt


def verify(target: Path, size: int, digest: str | None) -> None:
    if target.stat().st_size != size:
        raise SystemExit(f"{target} has {target.stat().st_size} bytes, expected {size}")
    if digest is not None:
        got = hashlib.sha256()
        with open(target, "rb") as f:
            while block := f.read(MIB):
                got.update(block)
        if got.hexdigest() != digest:
            raise SystemExit(f"{target}: sha256 mismatch")


def make_source(directory: Path, size: int) -> str:
    """A random file of ``size`` bytes; returns its sha256."""
    digest = hashlib.sha256()
    with open(directory / "blob.bin", "wb") as out:
        for _ in range(size // MIB):
            block = os.urandom(MIB)
            digest.update(block)
            out.write(block)
    (directory / "blob.bin").chmod(0o644)
    return digest.hexdigest()


Run = tuple[str, str, "int | None", str]  # label, tool, chunk_size, python


def run_rounds(
    runs: list[Run], url: str, out_dir: Path, size: int, digest: str, rounds: int,
) -> dict[str, Samples]:
    """Each round runs every (label, tool, chunk_size, python) once, the order rotated every
    round."""
    samples = {label: Samples() for label, _, _, _ in runs}
    for n in range(rounds):
        shift = n % len(runs)
        for label, tool, chunk, python in runs[shift:] + runs[:shift]:
            target = out_dir / f"{label.replace('@', '_')}.bin"
            seconds, rss, faults = spawn(tool, url, target, chunk, python, size)
            verify(target, size, digest if n == 0 and tool != "disk_floor" else None)
            disk = disk_usage(target, out_dir / "cold-cache")
            target.unlink()
            shutil.rmtree(out_dir / "cold-cache", ignore_errors=True)  # cold again next round
            os.sync()  # no tool pays for another's dirty pages
            samples[label].seconds.append(seconds)
            samples[label].rss_mib.append(rss)
            samples[label].faults.append(faults)
            samples[label].disk.append(disk)
            print(f"  round {n + 1} {label:<26} {seconds:7.3f} s  {rss:6.1f} MiB  "
                  f"{faults:6d} faults  disk {disk / size:4.2f}x", flush=True)
    return samples


def report(samples: dict[str, Samples], size: int, refs: tuple[str, ...]) -> None:
    medians = {label: statistics.median(s.seconds) for label, s in samples.items()}
    head = "".join(f"  vs {ref:<14}" for ref in refs if ref in medians)
    print(f"\n{'tool':<26} {'median s':>9} {'min s':>7} {'MiB/s':>7}{head} {'peak RSS':>9}"
          f" {'faults':>7} {'disk':>6}")
    for label, s in samples.items():
        ratios = "".join(f"  {medians[label] / medians[ref]:>6.2f}x{'':<10}"
                         for ref in refs if ref in medians)
        print(f"{label:<26} {medians[label]:>9.3f} {min(s.seconds):>7.3f} "
              f"{size / MIB / medians[label]:>7.0f}{ratios} {max(s.rss_mib):>6.1f} MiB"
              f" {statistics.median(s.faults):>7.0f} {max(s.disk) / size:>5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help=f"comma-separated subset of {','.join(TOOLS)}")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where downloads are written (default: a temp dir on $TMPDIR)")
    parser.add_argument("--sweep", action="store_true",
                        help="compare download_file chunk sizes instead (curl as reference)")
    parser.add_argument("--chunks-kib", type=lambda v: [int(k) for k in v.split(",")],
                        default=[64, 120, 256, 512, 1024, 4096],
                        help="chunk sizes for --sweep, in KiB (default: %(default)s)")
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=PYTHON",
                        help="also run every vllm_fetch row under another interpreter (e.g. "
                             "main=/path/to/main/.venv/bin/python: that venv's vllm_fetch), "
                             "as rows TOOL@LABEL in the same alternating rounds")
    parser.add_argument("--one", nargs=3, metavar=("TOOL", "URL", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--chunk-size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print(f"{run_one(*args.one, args.chunk_size):.6f}")
        return

    ensure_tools("nginx", "curl", *(["aria2c"] if "aria2c" in args.tools else []))
    size = args.size_mib * MIB
    here = sys.executable
    if args.sweep:
        runs: list[Run] = [("curl", "curl", None, here)] + [
            (f"download_file {kib} KiB", "download_file", kib * 1024, here)
            for kib in args.chunks_kib]
    else:
        runs = [(tool, tool, None, here) for tool in args.tools.split(",")]
    for spec in args.compare:
        label, _, python = spec.partition("=")
        runs += [(f"{tool}@{label}", tool, chunk, python) for name, tool, chunk, _ in list(runs)
                 if tool not in ("curl", "curl_fsync", "disk_floor", "aria2c", "vllm_baseline")
                 and "@" not in name]
    with tempfile.TemporaryDirectory(prefix="vllm-fetch-bench-") as tmp:
        source, out_dir = Path(tmp) / "srv", args.out_dir or Path(tmp) / "out"
        Path(tmp).chmod(0o755)  # nginx workers run as "nobody" when started by root
        source.mkdir()
        out_dir.mkdir(parents=True, exist_ok=True)
        digest = make_source(source, size)
        print(f"{args.size_mib} MiB file, {args.rounds} alternating rounds, downloads to {out_dir}")
        with loopback_nginx(source) as base:
            samples = run_rounds(runs, f"{base}/blob.bin", out_dir, size, digest, args.rounds)
        report(samples, size, ("curl", "disk_floor", "vllm_baseline"))


if __name__ == "__main__":
    main()
