"""Fault D11: the cache index survives a full disk and file locks that do nothing or fail, in
real processes under an ``LD_PRELOAD`` shim (issue 13, item 5). Only a proven corruption (SQLite's
integrity check fails) may move the index aside; anything else leaves it as it is, and the
fetch goes on without caching, with one WARNING."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cache_origin import Resource, serve_resource
from tests.origin import Origin, sha256
from tests.preload_shim import build_shim
from vllm_fetch import FetchCache, HTTPConnection, RetryPolicy

BODIES = [os.urandom(30_000 + i) for i in range(10)]

# argv: cache dir, sync dir ("-" for none), target, URLs...; fetches each URL with get_bytes
# and downloads the first to the target, then prints the sha256s as JSON.
WORKER = textwrap.dedent("""
    import hashlib, json, os, sys, time
    from pathlib import Path
    from vllm_fetch import HTTPConnection, RetryPolicy
    cache_dir, sync_dir, target, urls = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
    if sync_dir != "-":
        Path(sync_dir, str(os.getpid())).touch()
        while not Path(sync_dir, "go").exists():
            time.sleep(0.01)
    conn = HTTPConnection(cache=cache_dir, retry=RetryPolicy(max_attempts=3, backoff_base=0.01))
    bodies = [hashlib.sha256(conn.get_bytes(url)).hexdigest() for url in urls]
    conn.download_file(urls[0], target, progress=False)
    conn.close()
    print(json.dumps({"bodies": bodies,
                      "file": hashlib.sha256(target.read_bytes()).hexdigest()}), flush=True)
""")


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("shim"))


@pytest.fixture
def urls(origin: Origin) -> list[str]:
    return [serve_resource(origin, f"/b{i}", Resource(body, cache_control="max-age=600"))
            for i, body in enumerate(BODIES)]


def seed(cache_dir: Path, urls: list[str]) -> None:
    """Earlier entries, stored normally (no shim)."""
    cache = FetchCache(cache_dir)
    with HTTPConnection(cache=cache, retry=RetryPolicy.none()) as conn:
        for url in urls:
            conn.get_bytes(url)
    cache.close()


def start(shim: Path, cache_dir: Path, sync_dir: str, target: Path, urls: list[str],
          **env: str) -> subprocess.Popen[str]:
    environ = {**os.environ, "LD_PRELOAD": str(shim), "VLLM_FETCH_LOCK_DIR":
               str(cache_dir.parent / "locks"), **env}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(cache_dir), sync_dir,
                             str(target), *urls], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[dict[str, object], str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.splitlines()[-1]), err


def index_entries(cache_dir: Path) -> set[str]:
    """The URLs the index holds, read by a fresh cache with working locks and disk."""
    cache = FetchCache(cache_dir)
    found = {item.url for item in cache.entries()}
    cache.close()
    return found


def moved_aside(cache_dir: Path) -> list[str]:
    return [p.name for p in (cache_dir / "index").iterdir() if ".corrupt-" in p.name]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "cache"


def test_a_full_disk_leaves_the_index_alone(shim: Path, urls: list[str], origin: Origin,
                                            cache_dir: Path, tmp_path: Path) -> None:
    seed(cache_dir, urls[:3])
    assert origin.count("/b0") == 1
    proc = start(shim, cache_dir, "-", tmp_path / "f.bin", [urls[0], urls[5]],
                 SHIM_FULL_DIR=str(cache_dir / "index"))
    result, err = finish(proc)
    assert result == {"bodies": [sha256(BODIES[0]), sha256(BODIES[5])], "file": sha256(BODIES[0])}
    warnings = [line for line in err.splitlines() if "cache index" in line]
    assert len(warnings) <= 1, err
    assert "rebuild" not in err and "corrupt" not in err
    assert moved_aside(cache_dir) == []
    # space is back: every earlier entry is still there and served with no request
    assert {u.rsplit("/", 1)[1] for u in index_entries(cache_dir)} >= {"b0", "b1", "b2"}
    before = origin.count("/b1")
    with HTTPConnection(cache=cache_dir, retry=RetryPolicy.none()) as conn:
        assert sha256(conn.get_bytes(urls[1])) == sha256(BODIES[1])
    assert origin.count("/b1") == before


@pytest.mark.parametrize("locks", ["noop", "enosys"])
def test_eight_processes_without_working_locks_keep_the_index(
    locks: str, shim: Path, urls: list[str], cache_dir: Path, tmp_path: Path
) -> None:
    seed(cache_dir, urls[:2])
    sync_dir = tmp_path / "sync"
    sync_dir.mkdir()
    procs = [start(shim, cache_dir, str(sync_dir), tmp_path / f"out{i}.bin",
                   [urls[2], urls[3 + i % 7], urls[0]], SHIM_LOCKS=locks)
             for i in range(8)]
    deadline = time.monotonic() + 60
    while len(list(sync_dir.iterdir())) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    (sync_dir / "go").touch()
    for i, proc in enumerate(procs):
        result, err = finish(proc)
        assert result["file"] == sha256(BODIES[2]), err
        assert result["bodies"] == [sha256(BODIES[2]), sha256(BODIES[3 + i % 7]),
                                    sha256(BODIES[0])]
        assert "rebuild" not in err, err
    for i in range(8):
        assert sha256((tmp_path / f"out{i}.bin").read_bytes()) == sha256(BODIES[2])
    assert moved_aside(cache_dir) == []
    assert {u.rsplit("/", 1)[1] for u in index_entries(cache_dir)} >= {"b0", "b1"}
