"""Crashes and concurrency across real processes (D2, D3), threads and tasks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from filelock import FileLock

from tests.helpers import leftovers
from tests.origin import Origin, sha256
from tests.ranged import RangeFile
from vllm_fetch import FetchTimeoutError, HTTPConnection, RetryPolicy
from vllm_fetch.download.locking import TargetLock

ROOT = Path(__file__).resolve().parents[2]
MODES = ["sync", "async"]
SIZE = 8 * 1024 * 1024
BODY = os.urandom(SIZE)


# These tests count the engine's requests and partial files: the session's shared cache
# (tested in test_cache*.py) would answer some downloads from disk.
pytestmark = pytest.mark.usefixtures("cache_disabled")



def worker(mode: str, url: str, target: Path, sync_dir: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.fetch_worker", mode, url, str(target)]
    if sync_dir is not None:
        args.append(str(sync_dir))
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def partial_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.name.endswith(".part"))


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_mid_download_then_resume(mode: str, origin: Origin, tmp_path: Path) -> None:
    stall_at = SIZE * 2 // 5
    url = RangeFile(BODY, stalls={0: stall_at}, stall_seconds=1.0).mount(origin, "/killed")
    target = tmp_path / "killed.bin"
    proc = worker(mode, url, target)
    try:
        wait_for(lambda: origin.bytes_sent >= stall_at and partial_bytes(tmp_path) > 0)
        time.sleep(0.3)  # let the bytes that arrived reach the partial
        on_disk = partial_bytes(tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert not target.exists()
    assert 0 < on_disk <= stall_at
    conn = HTTPConnection(retry=RetryPolicy.none())
    call_mode = conn.download_file if mode == "sync" else None
    if call_mode is not None:
        call_mode(url, target, expected_sha256=sha256(BODY), connections=1)
    else:
        asyncio.run(conn.async_download_file(url, target, expected_sha256=sha256(BODY),
                                             connections=1))
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert origin.seen("/killed")[1].headers.get("Range") == f"bytes={on_disk}-"
    assert leftovers(tmp_path) == ["killed.bin"]


PROCESSES = 8  # fault matrix D3


def run_many(origin: Origin, tmp_path: Path, path: str, env: dict[str, str]) -> list[str]:
    url = RangeFile(BODY, delay=0.008).mount(origin, path)  # ~1 s: all of them wait in time
    target = tmp_path / "shared.bin"
    sync_dir = tmp_path / "sync"
    sync_dir.mkdir()
    procs = [worker(MODES[i % 2], url, target, sync_dir, env) for i in range(PROCESSES)]
    try:
        # generous: eight interpreters importing the library on two loaded cores
        wait_for(lambda: len(list(sync_dir.iterdir())) == PROCESSES, timeout=90.0)
        (sync_dir / "go").touch()
        outputs = [proc.communicate(timeout=90) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()  # reap it and close its pipes, also when a wait above failed
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert sorted(leftovers(tmp_path)) == ["shared.bin", "sync"]
    return [out.strip() for out, _ in outputs]


def test_many_processes_one_transfer(origin: Origin, tmp_path: Path) -> None:
    seen = run_many(origin, tmp_path, "/many", {})
    assert seen == [sha256(BODY)] * PROCESSES
    assert origin.count("/many") == 1
    assert origin.bytes_sent == SIZE


def test_many_processes_without_locks_each_correct(origin: Origin, tmp_path: Path) -> None:
    seen = run_many(origin, tmp_path, "/nolock", {"VLLM_FETCH_DISABLE_LOCKS": "1"})
    assert seen == [sha256(BODY)] * PROCESSES
    assert origin.count("/nolock") >= 2  # the lock really was a no-op: several transfers


def test_threads_share_one_transfer(origin: Origin, tmp_path: Path) -> None:
    url = RangeFile(BODY, delay=0.002).mount(origin, "/threads")
    target = tmp_path / "t.bin"
    conn = HTTPConnection()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: conn.download_file(url, target, connections=1),
                                range(4)))
    assert results == [target] * 4
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert origin.count("/threads") == 1
    assert leftovers(tmp_path) == ["t.bin"]


def test_tasks_share_one_transfer(origin: Origin, tmp_path: Path) -> None:
    url = RangeFile(BODY, delay=0.002).mount(origin, "/tasks")
    target = tmp_path / "t.bin"
    ticks = 0

    async def main() -> list[Path]:
        nonlocal ticks
        conn = HTTPConnection()

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick = asyncio.create_task(ticker())
        try:
            return list(await asyncio.gather(*(
                conn.async_download_file(url, target, connections=1) for _ in range(4))))
        finally:
            tick.cancel()
            await conn.aclose()

    assert asyncio.run(main()) == [target] * 4
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert origin.count("/tasks") == 1
    assert ticks > 5  # the event loop kept running while the tasks waited for the lock


@pytest.mark.parametrize("mode", MODES)
def test_waiting_for_the_lock_respects_the_deadline(mode: str, origin: Origin,
                                                    tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/held")
    target = tmp_path / "held.bin"
    conn = HTTPConnection(retry=RetryPolicy.none())
    held = TargetLock(target, url).lock_path
    held.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(held), pytest.raises(FetchTimeoutError):
        if mode == "sync":
            conn.download_file(url, target, timeout=0.3)
        else:
            asyncio.run(conn.async_download_file(url, target, timeout=0.3))
    assert origin.count("/held") == 0
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_mid_parallel_download_then_resume_parts(mode: str, origin: Origin,
                                                         tmp_path: Path) -> None:
    served = RangeFile(BODY, stall_total=SIZE // 2, stall_seconds=1.0)
    url = served.mount(origin, "/pkilled")
    target = tmp_path / "pk.bin"
    proc = worker(mode, url, target, env={"FETCH_WORKER_CONNECTIONS": "4"})

    def checkpointed() -> bool:
        sidecars = [p for p in tmp_path.iterdir() if p.name.endswith(".part.json")]
        try:
            parts = json.loads(sidecars[0].read_text()).get("parts") if sidecars else None
        except ValueError:  # caught mid-replace
            return False
        return bool(parts) and sum(part[2] for part in parts) >= SIZE // 4

    try:
        wait_for(checkpointed)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert not target.exists()
    served.stall_total = None
    first_call = origin.count("/pkilled")
    sent_before = origin.bytes_sent
    conn = HTTPConnection(retry=RetryPolicy.none())
    if mode == "sync":
        conn.download_file(url, target, connections=4, expected_sha256=sha256(BODY))
    else:
        asyncio.run(conn.async_download_file(url, target, connections=4,
                                             expected_sha256=sha256(BODY)))
    assert sha256(target.read_bytes()) == sha256(BODY)
    resumed = [seen.headers.get("Range") for seen in origin.seen("/pkilled")[first_call:]]
    assert resumed and all(r is not None and not r.endswith("-") for r in resumed)  # no probe
    assert origin.bytes_sent - sent_before <= SIZE * 3 // 4  # only what was missing
    assert leftovers(tmp_path) == ["pk.bin"]
