"""One transfer per machine per URL, whatever the target paths (issue 14, item 2).

Real processes (``tests.fetch_worker``) and threads share one cache; the origin counts the
requests and the bytes it sent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.origin import Origin, sha256
from tests.ranged import RangeFile
from vllm_fetch import FetchCache, HTTPConnection, RetryPolicy

ROOT = Path(__file__).resolve().parents[2]
SIZE = 2 * 1024 * 1024 + 3
BODY = os.urandom(SIZE)


def worker(mode: str, url: str, target: Path, env: dict[str, str],
           sync_dir: Path | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.fetch_worker", mode, url, str(target)]
    if sync_dir is not None:
        args.append(str(sync_dir))
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **env})


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_four_processes_four_targets_one_url_make_one_transfer(origin: Origin,
                                                                 tmp_path: Path) -> None:
    url = RangeFile(BODY, delay=0.004).mount(origin, "/model.bin")  # ~0.15 s: all wait in time
    env = {"VLLM_FETCH_CACHE_DIR": str(tmp_path / "cache")}
    sync_dir = tmp_path / "sync"
    sync_dir.mkdir()
    targets = [tmp_path / f"job{i}" / "model.bin" for i in range(4)]
    procs = [worker(("sync", "async")[i % 2], url, target, env, sync_dir)
             for i, target in enumerate(targets)]
    try:
        wait_for(lambda: len(list(sync_dir.iterdir())) == len(procs))
        (sync_dir / "go").touch()
        outputs = [proc.communicate(timeout=90) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    assert [out.strip() for out, _ in outputs] == [sha256(BODY)] * 4
    for target in targets:
        assert sha256(target.read_bytes()) == sha256(BODY)
    assert origin.count("/model.bin") == 1
    assert origin.bytes_sent == SIZE  # one transfer, counted at the origin


def test_threads_on_separate_connections_make_one_transfer(origin: Origin,
                                                            tmp_path: Path) -> None:
    url = RangeFile(BODY, delay=0.004).mount(origin, "/t.bin")
    cache = FetchCache(tmp_path / "cache")
    errors: list[BaseException] = []

    def fetch(n: int) -> None:
        try:
            conn = HTTPConnection(cache=cache, retry=RetryPolicy.none())
            conn.download_file(url, tmp_path / f"t{n}.bin", connections=1, progress=False)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    cache.close()
    assert errors == []
    for n in range(4):
        assert sha256((tmp_path / f"t{n}.bin").read_bytes()) == sha256(BODY)
    assert origin.bytes_sent == SIZE


def test_same_expected_sha256_from_two_urls_makes_one_transfer(origin: Origin,
                                                                tmp_path: Path) -> None:
    one = RangeFile(BODY, delay=0.004).mount(origin, "/one.bin")
    two = RangeFile(BODY, delay=0.004).mount(origin, "/two.bin")
    env = {"VLLM_FETCH_CACHE_DIR": str(tmp_path / "cache")}
    code = ("import sys; from vllm_fetch import HTTPConnection; "
            "HTTPConnection().download_file(sys.argv[1], sys.argv[2], "
            f"expected_sha256={sha256(BODY)!r}, progress=False)")
    procs = [subprocess.Popen([sys.executable, "-c", code, url, str(tmp_path / name)],
                              cwd=ROOT, env={**os.environ, **env}, stderr=subprocess.PIPE,
                              text=True)
             for url, name in ((one, "a.bin"), (two, "b.bin"))]
    for proc in procs:
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
    for name in ("a.bin", "b.bin"):
        assert sha256((tmp_path / name).read_bytes()) == sha256(BODY)
    assert origin.bytes_sent == SIZE


def test_a_killed_holder_lets_a_waiter_take_over_and_resume(origin: Origin,
                                                             tmp_path: Path) -> None:
    url = RangeFile(BODY, delay=0.05).mount(origin, "/slow.bin")  # ~1.6 s
    env = {"VLLM_FETCH_CACHE_DIR": str(tmp_path / "cache")}
    holder = worker("sync", url, tmp_path / "a" / "model.bin", env)
    waiter: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: origin.bytes_sent >= SIZE // 4)
        waiter = worker("async", url, tmp_path / "b" / "model.bin", env)
        time.sleep(1.0)  # the waiter is waiting for the holder's lock, not downloading
        assert origin.count("/slow.bin") == 1
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
        sent_by_then = origin.bytes_sent
        out, err = waiter.communicate(timeout=90)
        assert waiter.returncode == 0, err
    finally:
        holder.kill()
        if waiter is not None:
            waiter.kill()
    assert out.strip() == sha256(BODY)
    assert sha256((tmp_path / "b" / "model.bin").read_bytes()) == sha256(BODY)
    seen = origin.seen("/slow.bin")
    assert len(seen) == 2  # the waiter took over the transfer ...
    resumed_from = seen[1].headers.get("Range", "")
    assert resumed_from.startswith("bytes=") and resumed_from != "bytes=0-", resumed_from
    assert origin.bytes_sent < sent_by_then + SIZE  # ... and resumed it, not from zero
    # the holder's target got its file too (it was what the holder was downloading)
    assert sha256((tmp_path / "a" / "model.bin").read_bytes()) == sha256(BODY)
    assert not [p.name for p in (tmp_path / "a").iterdir() if p.name.endswith(".part")]
