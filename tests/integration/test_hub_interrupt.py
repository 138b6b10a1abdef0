"""Ctrl-C during a snapshot (issue 18, item 4): ``vllm-fetch prefetch hf://`` under a real
terminal, and ``hub.snapshot`` / ``hub.async_snapshot`` in a real process, stop the running
files at once with their partials kept; run again, each file continues from its partial."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import TerminalChild, default_sigint
from tests.hub_env import COMMIT1, REPO, HubSetup, hubs
from vllm_fetch import HTTPConnection, hub

__all__ = ["hubs"]  # the fixture
SCRIPT = Path(sys.executable).with_name("vllm-fetch")
BIG = 8 << 20  # each LFS file; ~25 s per file at the slow CDN's pace
FILES = {f"model-0000{n}.safetensors": os.urandom(BIG) for n in range(1, 4)}
LFS = set(FILES)
ALL = {**FILES, "config.json": b'{"model_type": "tiny"}'}


def _slow_repo(setup: HubSetup) -> None:
    setup.hub.add_commit(REPO, COMMIT1, ALL, lfs=LFS)
    for blob in setup.cdn.blobs.values():
        blob.delay = 0.2  # a 64 KiB block every 0.2 s: ~320 KiB/s per connection


def _wait_until_all_under_way(setup: HubSetup, deadline: float, why: object = "",
                              *, connections: int = 1) -> None:
    """Every stream of every LFS file (``connections`` each) has been asked for, each file has
    a partial on disk with bytes in it, and about 1 MiB of the repo is on its way; then three
    more blocks' time (0.6 s at the slow CDN's pace), so each stream has written some of its
    bytes. (Counting requests and bytes sent alone let Ctrl-C land before a slow machine had
    created a file's partial, or written a part's first block: then nothing was there to
    resume, and the file rightly started again from 0.)"""
    while (len(setup.cdn.requests) < len(LFS) * connections
           or setup.cdn.bytes_sent < 1 << 20
           or len(partials := _partials(setup)) < len(LFS)
           or 0 in partials.values()):
        assert time.monotonic() < deadline, why
        time.sleep(0.02)
    time.sleep(0.6)


def _partials(setup: HubSetup) -> dict[str, int]:
    """The partial of each interrupted blob (named for its sha256) and its size."""
    blobs = setup.cache / "models--acme--tiny" / "blobs"
    found = {}
    for path in blobs.iterdir():
        match = re.fullmatch(r"\.([0-9a-f]{64})\.[0-9a-f]{16}\.[^/]+\.part", path.name)
        if match:
            found[match[1]] = path.stat().st_size
    return found


def _check_resumed(setup: HubSetup, path: Path, first_new: int, partials: dict[str, int],
                   *, parts: bool = False) -> None:
    """Every file has its bytes; each LFS file was continued from its partial with Range
    requests, so the CDN sent about one copy of each in all, not one and a part."""
    for name, data in ALL.items():
        assert hashlib.sha256((path / name).read_bytes()).digest() == hashlib.sha256(
            data).digest(), name
    starts: dict[str, list[int]] = {}
    for seen in setup.cdn.requests[first_new:]:
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", seen.headers.get("Range", ""))
        starts.setdefault(seen.path.rsplit("/", 1)[-1], []).append(int(ranged[1]) if ranged
                                                                   else 0)
    assert sorted(starts) == sorted(partials), (starts, partials)
    if parts:  # a preallocated partial: each part continues after the bytes it had
        assert all(0 not in asked for asked in starts.values()), starts
    else:  # one stream: continued exactly where the partial ends
        assert starts == {sha: [size] for sha, size in partials.items()}, (starts, partials)
    lfs_total = sum(map(len, FILES.values()))
    assert setup.cdn.bytes_sent < lfs_total * 1.05, (setup.cdn.bytes_sent, lfs_total)
    assert _partials(setup) == {}


def test_ctrl_c_in_prefetch_hf_stops_at_once_and_the_next_run_resumes(hubs: HubSetup,
                                                                     tmp_path: Path) -> None:
    _slow_repo(hubs)
    env = hubs.env(VLLM_FETCH_CACHE_DIR=str(tmp_path / "vf-cache"))
    with TerminalChild([str(SCRIPT), "prefetch", f"hf://{REPO}"], cwd=tmp_path,
                       env=env) as child:
        _wait_until_all_under_way(hubs, time.monotonic() + 60, child.seen)
        child.ctrl_c()
        started = time.monotonic()
        code = child.proc.wait(timeout=60)
        stopped_in = time.monotonic() - started
    text = child.text
    assert code == 130, text
    assert stopped_in < 8, stopped_in  # not after the transfers (~20 s more each) end
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith("vllm-fetch:")]
    assert len(lines) == 1 and "interrupted: 1 of 4 files complete, 3 left" in lines[0], text
    partials = _partials(hubs)
    assert sorted(partials) == sorted(hashlib.sha256(d).hexdigest() for d in FILES.values())
    assert all(0 < size < BIG for size in partials.values()), partials
    snapshot = hubs.cache / "models--acme--tiny" / "snapshots" / COMMIT1
    assert not any((snapshot / name).exists() for name in FILES)  # nothing half-published

    for blob in hubs.cdn.blobs.values():
        blob.delay = 0.0
    first_new = len(hubs.cdn.requests)
    again = subprocess.run([str(SCRIPT), "prefetch", f"hf://{REPO}"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    _check_resumed(hubs, snapshot, first_new, partials)


_PYTHON = """
import asyncio, sys
from vllm_fetch import HTTPConnection, hub
mode, repo, cache, connections = sys.argv[1:]
kwargs = dict(http=HTTPConnection(cache=cache), connections=int(connections),
              progress=lambda d, t: print(d, flush=True))
try:
    if mode == "sync":
        hub.snapshot(repo, **kwargs)
    else:
        asyncio.run(hub.async_snapshot(repo, **kwargs))
except KeyboardInterrupt as stop:
    print("INTERRUPTED", type(stop).__name__, stop, flush=True)
    sys.exit(130)
print("FINISHED", flush=True)
"""


@pytest.mark.parametrize(("mode", "connections"),
                         [("sync", 1), ("async", 1), ("sync", 2), ("async", 2)])
def test_ctrl_c_in_snapshot_stops_at_once_and_the_next_call_resumes(
        hubs: HubSetup, tmp_path: Path, mode: str, connections: int) -> None:
    _slow_repo(hubs)
    child = subprocess.Popen([sys.executable, "-c", _PYTHON, mode, REPO, str(tmp_path / "vf"),
                              str(connections)],
                             env=hubs.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, preexec_fn=default_sigint)
    try:
        _wait_until_all_under_way(hubs, time.monotonic() + 60, connections=connections)
        child.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, err = child.communicate(timeout=60)
        stopped_in = time.monotonic() - started
    finally:
        child.kill()
        child.wait()
    last = out.strip().splitlines()[-1]
    assert child.returncode == 130, (out[-500:], err[-3000:])
    assert stopped_in < 8, stopped_in  # the running files were stopped, not waited for
    if mode == "sync":
        assert last == "INTERRUPTED SnapshotInterrupted 1 of 4 files complete, 3 left", last
    else:  # asyncio.run cancels the snapshot's task, then raises KeyboardInterrupt
        assert last.startswith("INTERRUPTED KeyboardInterrupt"), last
    assert "Traceback" not in err, err[-3000:]
    partials = _partials(hubs)
    assert sorted(partials) == sorted(hashlib.sha256(d).hexdigest() for d in FILES.values())
    assert all(0 < size <= BIG for size in partials.values()), partials  # parts: preallocated

    for blob in hubs.cdn.blobs.values():
        blob.delay = 0.0
    first_new = len(hubs.cdn.requests)
    http = HTTPConnection(cache=tmp_path / "vf")
    path = (hub.snapshot(REPO, http=http, connections=connections, progress=False)
            if mode == "sync" else
            asyncio.run(hub.async_snapshot(REPO, http=http, connections=connections,
                                           progress=False)))
    _check_resumed(hubs, path, first_new, partials, parts=connections > 1)
