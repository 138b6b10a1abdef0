"""``vllm-fetch warm MANIFEST``: fills the mirror and the local cache, writes no target (the real
console script in a subprocess, a mirror and an origin on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.origin import Origin, sha256

SCRIPT = Path(sys.executable).with_name("vllm-fetch")
BODY = os.urandom(300_000)


@pytest.fixture
def mirror() -> Iterator[Origin]:
    server = Origin(host="127.0.0.3").start()
    try:
        yield server
    finally:
        server.stop()


def run(*args: str | Path, cwd: Path, mirrors: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VLLM_FETCH_CACHE_DIR": str(cwd / ".cache"),
           "VLLM_FETCH_MAX_RETRIES": "0", "VLLM_FETCH_MIRRORS": mirrors}
    return subprocess.run([str(SCRIPT), *map(str, args)], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def test_warm_fills_the_mirror_and_the_cache_without_targets(
    origin: Origin, mirror: Origin, tmp_path: Path
) -> None:
    headers = {"Cache-Control": "max-age=3600", "ETag": '"w1"'}
    a = origin.serve_bytes("/w/a.bin", b"origin")
    b = origin.serve_bytes("/w/b.bin", b"origin")
    mirror.serve_bytes("/m/w/a.bin", BODY, headers=headers)
    mirror.serve_bytes("/m/w/b.bin", BODY[::-1], headers=headers)
    manifest = tmp_path / "weights.txt"
    manifest.write_text(f"{a} {sha256(BODY)}\n{b} - nested/b.bin\n")
    mirrors = f"{origin.url('')}={mirror.url('/m')}"
    before = sorted(p.name for p in tmp_path.iterdir())

    first = run("warm", manifest, "-j", "2", cwd=tmp_path, mirrors=mirrors)
    assert first.returncode == 0, first.stderr
    assert "2 fetched, 0 from cache, 0 failed" in first.stdout
    assert mirror.count("/m/w/a.bin") == 1 and mirror.count("/m/w/b.bin") == 1
    assert origin.requests == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, ".cache"])
    assert not [p for p in (tmp_path / ".cache").iterdir() if p.name.startswith(".warm-")]

    again = run("warm", manifest, cwd=tmp_path, mirrors=mirrors)
    assert "0 fetched, 2 from cache, 0 failed" in again.stdout, again.stderr
    got = run("get", b, "-o", tmp_path / "b.bin", "--offline", cwd=tmp_path, mirrors="")
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "b.bin").read_bytes() == BODY[::-1]


def test_warm_reports_failures_like_prefetch(origin: Origin, mirror: Origin,
                                             tmp_path: Path) -> None:
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"{origin.url('/absent.bin')}\n")
    result = run("warm", manifest, cwd=tmp_path, mirrors=f"{origin.url('')}={mirror.url('/m')}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "0 fetched, 0 from cache, 1 failed" in result.stdout
    assert mirror.count("/m/absent.bin") == 1 and origin.count("/absent.bin") == 1
