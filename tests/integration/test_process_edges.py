"""Processes and loops (D1, D6, D7) where the pytest process cannot stand in for the user's:
Ctrl-C in a real process, the global instance across event loops, and ResourceWarnings in the
console script and worker processes (which this suite's ``filterwarnings`` does not reach)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import default_sigint, leftovers
from tests.origin import Origin, sha256
from tests.ranged import RangeFile
from vllm_fetch import HTTPConnection, RetryPolicy, global_http_connection

MODES = ["sync", "async"]
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("vllm-fetch")
SIZE = 2 * 1024 * 1024 + 11
DATA = os.urandom(SIZE)

DOWNLOAD = """
import asyncio, sys
from vllm_fetch import HTTPConnection, RetryPolicy
mode, url, target, connections = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
conn = HTTPConnection(cache=False, retry=RetryPolicy.none())
if mode == "sync":
    conn.download_file(url, target, connections=connections, progress=False)
else:
    asyncio.run(conn.async_download_file(url, target, connections=connections, progress=False))
"""


def strict_env(tmp_path: Path) -> dict[str, str]:
    """Like the suite's own settings: every ResourceWarning is an error, dev mode on."""
    return {**os.environ, "PYTHONWARNINGS": "error::ResourceWarning", "PYTHONDEVMODE": "1",
            "VLLM_FETCH_CACHE_DIR": str(tmp_path / ".cache"), "VLLM_FETCH_MAX_RETRIES": "0",
            "PYTHONPATH": str(ROOT)}


def unclean(stderr: str) -> bool:
    return "ResourceWarning" in stderr or "Exception ignored" in stderr


# --- D1: KeyboardInterrupt mid-body in a real process ------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("connections", [1, 4])
def test_d1_ctrl_c_mid_body_leaves_no_target_and_the_next_run_completes(
    mode: str, connections: int, origin: Origin, tmp_path: Path
) -> None:
    served = (RangeFile(DATA, stalls={0: SIZE // 2}, stall_seconds=20) if connections == 1
              else RangeFile(DATA, delay=0.05))  # four slow parts, each well under way
    url = served.mount(origin, "/m.bin")
    out = tmp_path / "out"
    out.mkdir()
    target = out / "m.bin"
    child = subprocess.Popen([sys.executable, "-c", DOWNLOAD, mode, url, str(target),
                              str(connections)],
                             env=strict_env(tmp_path), stderr=subprocess.PIPE, text=True,
                             preexec_fn=default_sigint)
    try:
        give_up = time.monotonic() + 20
        while origin.bytes_sent < SIZE // 2 and time.monotonic() < give_up:
            time.sleep(0.02)
        time.sleep(0.1)  # the first half is on disk under the temp name; the origin stalls
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=20)
    finally:
        child.kill()
        child.wait()
    assert child.returncode != 0 and "KeyboardInterrupt" in stderr
    assert not unclean(stderr), stderr
    assert not target.exists()
    assert all(name.startswith(".") for name in leftovers(out)), leftovers(out)  # temp names
    served.delay = 0.0
    conn = HTTPConnection(cache=False, retry=RetryPolicy.none())
    assert conn.download_file(url, target, connections=connections, progress=False) == target
    assert sha256(target.read_bytes()) == sha256(DATA)
    assert leftovers(out) == ["m.bin"]


def test_d1_ctrl_c_in_the_console_script_is_one_line(origin: Origin, tmp_path: Path) -> None:
    url = RangeFile(DATA, stalls={0: SIZE // 2}, stall_seconds=20).mount(origin, "/cli.bin")
    child = subprocess.Popen([str(SCRIPT), "get", url, "-o", "cli.bin"], cwd=tmp_path,
                             env=strict_env(tmp_path), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        give_up = time.monotonic() + 20
        while origin.bytes_sent < SIZE // 2 and time.monotonic() < give_up:
            time.sleep(0.02)
        time.sleep(0.1)
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=20)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 130
    assert stderr.strip() == "vllm-fetch: interrupted", stderr
    assert not (tmp_path / "cli.bin").exists()
    assert all(name.startswith(".") for name in leftovers(tmp_path)), leftovers(tmp_path)


# --- D6: the global instance across event loops, the sync side from 16 threads -------------------


def test_d6_global_instance_in_two_successive_asyncio_runs_uses_the_network_twice(
    origin: Origin, tmp_path: Path
) -> None:
    """use_cache=False: both runs must really open a connection on their own loop's session."""
    url = origin.serve_bytes("/g", b"global")

    async def both() -> tuple[bytes, Path]:
        body = await global_http_connection.async_get_bytes(url, use_cache=False)
        path = await global_http_connection.async_download_file(
            url, tmp_path / f"g{len(origin.requests)}", use_cache=False)
        return body, path

    for _ in range(2):
        body, path = asyncio.run(both())
        assert body == b"global" and path.read_bytes() == b"global"
    assert origin.count("/g") == 4


def test_d6_sync_downloads_from_16_threads(origin: Origin, tmp_path: Path) -> None:
    url = RangeFile(DATA[:256 * 1024]).mount(origin, "/t.bin")
    conn = HTTPConnection(cache=False, retry=RetryPolicy.none())
    with ThreadPoolExecutor(16) as pool:
        paths = list(pool.map(lambda i: conn.download_file(url, tmp_path / f"{i}.bin",
                                                           progress=False), range(16)))
    conn.close()
    assert {sha256(p.read_bytes()) for p in paths} == {sha256(DATA[:256 * 1024])}
    assert len(leftovers(tmp_path)) == 16


def test_d6_threads_that_come_and_go_leave_no_sessions_or_sockets(origin: Origin) -> None:
    """A server running each request on a fresh thread: each thread's session and its
    keep-alive socket must go with the thread, not pile up in the connection."""
    url = origin.serve_bytes("/churn", b"x")
    conn = HTTPConnection(cache=False, retry=RetryPolicy.none())
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(40):
        thread = threading.Thread(target=conn.get_bytes, args=(url,))
        thread.start()
        thread.join()
    gc.collect()
    assert origin.count("/churn") == 40
    assert len(os.listdir("/proc/self/fd")) - fds < 10  # was +2 per thread
    assert len(list(conn._sync._sessions)) <= 1


# --- D7: -W error::ResourceWarning in the processes users run ----------------------------------


def test_d7_control_a_leak_is_seen_in_a_child(tmp_path: Path) -> None:
    """The check below means something: a leaked socket does show up in a child's stderr."""
    result = subprocess.run([sys.executable, "-c", "import socket; s = socket.socket(); del s"],
                            env=strict_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert unclean(result.stderr)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("connections", ["1", "4"])
def test_d7_worker_processes_leave_nothing_unclosed(mode: str, connections: str, origin: Origin,
                                                    tmp_path: Path) -> None:
    url = RangeFile(DATA).mount(origin, "/w.bin")
    env = {**strict_env(tmp_path), "FETCH_WORKER_CONNECTIONS": connections}
    result = subprocess.run([sys.executable, "-m", "tests.fetch_worker", mode, url,
                             str(tmp_path / "w.bin")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == sha256(DATA)
    assert not unclean(result.stderr), result.stderr


def test_d7_console_script_leaves_nothing_unclosed(origin: Origin, tmp_path: Path) -> None:
    url = origin.serve_bytes("/c.bin", DATA)
    for args in (["get", url, "-o", "a.bin"], ["get", url, "-o", "b.bin"],  # a miss, then a hit
                 ["get", origin.url("/missing?token=secret"), "-o", "c.bin"],
                 ["cache", "info"], ["cache", "ls"], ["cache", "verify"], ["cache", "prune"]):
        result = subprocess.run([str(SCRIPT), *args], cwd=tmp_path, env=strict_env(tmp_path),
                                capture_output=True, text=True, timeout=60)
        assert not unclean(result.stderr), result.stderr
        assert "Traceback" not in result.stderr and "secret" not in result.stderr
    assert (tmp_path / "b.bin").read_bytes() == DATA
