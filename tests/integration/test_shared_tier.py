"""VLLM_FETCH_SHARED_CACHE: a read-only store another machine filled, used by sha256, verified
before use, never written (real origin on loopback; the store filled by a real download)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import call
from tests.origin import Origin, sha256
from vllm_fetch import HTTPConnection, RetryPolicy

DATA = os.urandom(400_000)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def shared(origin: Origin, tmp_path: Path) -> Path:
    """A cache directory "another machine" filled with one download."""
    root = tmp_path / "shared"
    origin.serve_bytes("/seed.bin", DATA)
    HTTPConnection(cache=root).download_file(origin.url("/seed.bin"), tmp_path / "seed.bin")
    return root


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_blob_from_the_shared_tier_is_used_by_sha256_and_never_written(
    mode: str, origin: Origin, shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_FETCH_SHARED_CACHE", str(shared))
    url = origin.serve_bytes("/other/name.bin", b"never served")
    before = snapshot(shared)
    conn = HTTPConnection(cache=tmp_path / "local", retry=RetryPolicy.none())
    result = call(mode, conn, "fetch_file", url, tmp_path / "out.bin",
                  expected_sha256=sha256(DATA))
    assert (result.source, result.from_cache, result.sha256) == ("cache", True, sha256(DATA))
    assert (tmp_path / "out.bin").read_bytes() == DATA
    assert origin.count("/other/name.bin") == 0
    assert snapshot(shared) == before


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_damaged_shared_blob_is_never_published(
    mode: str, origin: Origin, shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = shared / "blobs" / sha256(DATA)[:2] / sha256(DATA)[2:]
    damaged = bytearray(blob.read_bytes())
    damaged[777] ^= 0x10
    blob.write_bytes(bytes(damaged))
    monkeypatch.setenv("VLLM_FETCH_SHARED_CACHE", str(shared))
    url = origin.serve_bytes("/w.bin", DATA)
    conn = HTTPConnection(cache=False, retry=RetryPolicy.none())
    result = call(mode, conn, "fetch_file", url, tmp_path / "out.bin",
                  expected_sha256=sha256(DATA))
    assert result.source == "origin" and origin.count("/w.bin") == 1
    assert (tmp_path / "out.bin").read_bytes() == DATA
    assert blob.read_bytes() == bytes(damaged)  # read-only: never repaired or removed there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "seed.bin", "shared"]


def test_without_a_sha256_the_shared_tier_is_not_asked(
    origin: Origin, shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_FETCH_SHARED_CACHE", str(shared))
    url = origin.serve_bytes("/x.bin", b"fresh")
    conn = HTTPConnection(cache=False)
    assert conn.fetch_file(url, tmp_path / "x.bin").source == "origin"
