"""Partials and locks are looked after: listed, counted and pruned (issue 14, item 3)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock

from tests.origin import Origin
from tests.ranged import RangeFile

SCRIPT = Path(sys.executable).with_name("vllm-fetch")
BODY = os.urandom(1024 * 1024)
WEEK = 7 * 86400


def test_partials_are_listed_counted_and_pruned_when_abandoned(origin: Origin,
                                                               tmp_path: Path) -> None:
    env = {**os.environ, "VLLM_FETCH_CACHE_DIR": str(tmp_path / "cache"),
           "VLLM_FETCH_LOCK_DIR": str(tmp_path / "locks"), "VLLM_FETCH_MAX_RETRIES": "0"}

    def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), *map(str, args)], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=60, check=False)

    old = RangeFile(BODY, cuts={0: 300_000}).mount(origin, "/old.bin")
    new = RangeFile(BODY, cuts={0: 200_000}).mount(origin, "/new.bin")
    for url, where in ((old, tmp_path / "a" / "old.bin"), (new, tmp_path / "b" / "new.bin")):
        assert cli("get", url, "-o", where).returncode == 1  # cut: a partial stays
    [old_partial] = [p for p in (tmp_path / "a").iterdir() if p.name.endswith(".part")]
    [new_partial] = [p for p in (tmp_path / "b").iterdir() if p.name.endswith(".part")]

    info = cli("cache", "info")
    assert "partials   2 (" in info.stdout, info.stdout
    listing = cli("cache", "ls", "--partials")
    assert str(old_partial) in listing.stdout and str(new_partial) in listing.stdout

    stale = time.time() - WEEK - 60
    os.utime(old_partial, (stale, stale))
    locks = [p for p in (tmp_path / "locks").iterdir() if p.suffix == ".lock"]
    assert locks
    for lock in locks:
        os.utime(lock, (stale, stale))
    held = FileLock(locks[0], thread_local=False)
    held.acquire()  # a lock in use stays, however old
    try:
        pruned = cli("cache", "prune")
    finally:
        held.release()
    assert pruned.returncode == 0, pruned.stderr
    assert "removed 1 abandoned partial downloads" in pruned.stdout, pruned.stdout
    assert f"and {len(locks) - 1} stale lock files" in pruned.stdout, pruned.stdout
    assert not old_partial.exists() and not Path(f"{old_partial}.json").exists()
    assert new_partial.exists()
    assert locks[0].exists() and not any(lock.exists() for lock in locks[1:])
    assert "partials   1 (" in cli("cache", "info").stdout

    assert cli("get", new, "-o", tmp_path / "b" / "new.bin").returncode == 0  # resumed
    assert "partials   0 (" in cli("cache", "info").stdout
