"""The cache costs no disk on a download: the target and the blob share storage (issue 14).

A downloaded file is the cache's body (a sealed hard link, or a sealed reference when the target
is on another filesystem), a second download to another path is served with zero requests, and
an edited, replaced or deleted target never makes the cache serve wrong bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import call
from tests.origin import Origin, sha256
from tests.ranged import RangeFile
from vllm_fetch import CachedBodyDamagedError, FetchCache, HTTPConnection, OfflineError, RetryPolicy

MODES = ["sync", "async"]
SIZE = 16 * 1024 * 1024 + 5
BODY = os.urandom(SIZE)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[FetchCache]:
    store = FetchCache(tmp_path / "cache")
    yield store
    store.close()


@pytest.fixture
def other_fs() -> Iterator[Path]:
    """A directory on another filesystem than the cache's (tmpfs /dev/shm)."""
    shm = Path("/dev/shm")
    assert shm.is_dir() and shm.stat().st_dev != Path(tempfile.gettempdir()).stat().st_dev
    with tempfile.TemporaryDirectory(dir=shm) as directory:
        yield Path(directory)


def disk_usage(*roots: Path) -> int:
    """Bytes on disk under ``roots`` (summed st_blocks, each inode counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in roots:
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in paths:
            st = path.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def connect(cache: FetchCache) -> HTTPConnection:
    return HTTPConnection(cache=cache, retry=RetryPolicy.none())


@pytest.mark.parametrize("connections", [1, 4])
@pytest.mark.parametrize("mode", MODES)
def test_the_cache_adds_no_second_copy_and_serves_another_path_with_zero_requests(
        mode: str, connections: int, origin: Origin, cache: FetchCache, tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/model.bin")
    target = tmp_path / "out" / "model.bin"
    call(mode, connect(cache), "download_file", url, target, connections=connections)
    assert sha256(target.read_bytes()) == sha256(BODY)
    used = disk_usage(target, cache.directory)
    assert used <= 1.05 * SIZE, f"{used} bytes on disk for a {SIZE}-byte file"
    [item] = cache.entries()
    assert item.stored_as == "shared"

    requests_made = origin.count("/model.bin")
    again = tmp_path / "elsewhere" / "copy.bin"
    call(mode, connect(cache), "download_file", url, again)
    assert origin.count("/model.bin") == requests_made  # zero requests
    assert sha256(again.read_bytes()) == sha256(BODY)


@pytest.mark.parametrize("mode", MODES)
def test_same_expected_sha256_from_another_url_needs_no_request(
        mode: str, origin: Origin, cache: FetchCache, tmp_path: Path) -> None:
    first = origin.serve_bytes("/a.bin", BODY)
    second = origin.serve_bytes("/b.bin", BODY)
    call(mode, connect(cache), "download_file", first, tmp_path / "a.bin")
    call(mode, connect(cache), "download_file", second, tmp_path / "b.bin",
         expected_sha256=sha256(BODY))
    assert origin.count("/b.bin") == 0
    assert sha256((tmp_path / "b.bin").read_bytes()) == sha256(BODY)


@pytest.mark.parametrize("mode", MODES)
def test_an_edited_target_is_never_served(mode: str, origin: Origin, cache: FetchCache,
                                          tmp_path: Path) -> None:
    url = origin.serve_bytes("/m.bin", BODY, headers={"Cache-Control": "max-age=600"})
    target = tmp_path / "m.bin"
    call(mode, connect(cache), "download_file", url, target)
    st = target.stat()
    with open(target, "r+b") as f:  # edited in place, size and mtime put back
        f.seek(SIZE // 2)
        f.write(b"fine-tuned")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = tmp_path / "again.bin"
    call(mode, connect(cache), "download_file", url, again)
    assert origin.count("/m.bin") == 2  # the cache did not serve the edited bytes
    assert sha256(again.read_bytes()) == sha256(BODY)
    assert connect(cache).get_bytes(url) == BODY  # nor does a body read


@pytest.mark.parametrize("mode", MODES)
def test_a_replaced_or_deleted_target_leaves_the_cache_whole(
        mode: str, origin: Origin, cache: FetchCache, tmp_path: Path) -> None:
    url = origin.serve_bytes("/m.bin", BODY, headers={"Cache-Control": "max-age=600"})
    target = tmp_path / "m.bin"
    call(mode, connect(cache), "download_file", url, target)
    (tmp_path / "new.bin").write_bytes(b"something else")
    os.replace(tmp_path / "new.bin", target)  # replaced by another file
    call(mode, connect(cache), "download_file", url, tmp_path / "b.bin")
    target.unlink()
    call(mode, connect(cache), "download_file", url, tmp_path / "c.bin")
    assert origin.count("/m.bin") == 1
    for name in ("b.bin", "c.bin"):
        assert sha256((tmp_path / name).read_bytes()) == sha256(BODY)


@pytest.mark.parametrize("mode", MODES)
def test_a_target_on_another_filesystem_is_kept_by_reference(
        mode: str, origin: Origin, cache: FetchCache, tmp_path: Path, other_fs: Path) -> None:
    url = origin.serve_bytes("/m.bin", BODY, headers={"Cache-Control": "max-age=600"})
    target = other_fs / "m.bin"
    call(mode, connect(cache), "download_file", url, target)
    assert disk_usage(cache.directory) < 0.05 * SIZE  # no copy in the cache
    [item] = cache.entries()
    assert item.stored_as == "reference"
    info = cache.info()
    assert (info.blobs, info.references, info.bytes) == (1, 1, 0)

    call(mode, connect(cache), "download_file", url, tmp_path / "b.bin")
    assert origin.count("/m.bin") == 1  # served from the referenced file
    assert sha256((tmp_path / "b.bin").read_bytes()) == sha256(BODY)

    target.unlink()  # the referenced file is gone: a miss, fetched again
    call(mode, connect(cache), "download_file", url, tmp_path / "c.bin")
    assert origin.count("/m.bin") == 2
    assert sha256((tmp_path / "c.bin").read_bytes()) == sha256(BODY)


@pytest.mark.parametrize("method", ["download_file", "get_bytes"])
@pytest.mark.parametrize("mode", MODES)
def test_offline_a_reference_to_a_deleted_file_is_a_plain_miss(
        mode: str, method: str, origin: Origin, cache: FetchCache, tmp_path: Path,
        other_fs: Path) -> None:
    url = origin.serve_bytes("/r.bin", BODY, headers={"Cache-Control": "max-age=600"})
    call(mode, connect(cache), "download_file", url, other_fs / "r.bin")
    (other_fs / "r.bin").unlink()
    offline = HTTPConnection(cache=cache, offline=True)
    args = (tmp_path / "d.bin",) if method == "download_file" else ()
    with pytest.raises(OfflineError) as info:
        call(mode, offline, method, url, *args)
    assert not isinstance(info.value, CachedBodyDamagedError), info.value
    assert "not in the cache" in str(info.value)
    assert not (tmp_path / "d.bin").exists()


def test_cache_ls_shows_references(origin: Origin, tmp_path: Path, other_fs: Path) -> None:
    url = origin.serve_bytes("/weights.bin", b"w" * 50_000)
    env = {**os.environ, "VLLM_FETCH_CACHE_DIR": str(tmp_path / "c"),
           "VLLM_FETCH_DISABLE_PROGRESS": "1"}
    cli = [str(Path(sys.executable).parent / "vllm-fetch")]
    got = subprocess.run([*cli, "get", url, "-o", str(other_fs / "w.bin")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    listing = subprocess.run([*cli, "cache", "ls"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert " reference " in listing.stdout, listing.stdout
    info = subprocess.run([*cli, "cache", "info"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert "1 by reference" in info.stdout, info.stdout


@pytest.mark.parametrize("where", ["same", "other"])
@pytest.mark.parametrize("mode", MODES)
def test_without_share_files_the_cache_holds_its_own_copy(
        mode: str, where: str, origin: Origin, tmp_path: Path, other_fs: Path) -> None:
    """``share_files=False``: neither a link nor a reference, so deleting or editing the
    downloaded file leaves the cache whole, with zero requests for the next copy."""
    url = RangeFile(BODY).mount(origin, "/own.bin")
    store = FetchCache(tmp_path / "cache", share_files=False)
    try:
        target = (tmp_path if where == "same" else other_fs) / "own.bin"
        call(mode, connect(store), "download_file", url, target)
        [item] = store.entries()
        assert item.stored_as == "copy"
        assert os.stat(target).st_nlink == 1
        target.write_bytes(b"edited")  # the user's file is the user's
        requests_made = origin.count("/own.bin")
        again = tmp_path / "again.bin"
        call(mode, connect(store), "download_file", url, again)
        assert origin.count("/own.bin") == requests_made
        assert sha256(again.read_bytes()) == sha256(BODY)
    finally:
        store.close()


def test_without_share_files_a_reference_made_before_becomes_a_copy(
        origin: Origin, tmp_path: Path, other_fs: Path) -> None:
    """A recording made by an earlier version (or with sharing on) holds a reference: the same
    bytes stored again without sharing move into the store."""
    fresh = {"Cache-Control": "max-age=600"}
    first = origin.serve_bytes("/first.bin", BODY, headers=fresh)
    second = origin.serve_bytes("/second.bin", BODY, headers=fresh)  # the same bytes again
    sharing = FetchCache(tmp_path / "cache")
    connect(sharing).download_file(first, other_fs / "first.bin")
    assert [item.stored_as for item in sharing.entries()] == ["reference"]
    sharing.close()
    own = FetchCache(tmp_path / "cache", share_files=False)
    try:
        connect(own).download_file(second, other_fs / "second.bin")
        assert [item.stored_as for item in own.entries()] == ["copy", "copy"]
        for name in ("first.bin", "second.bin"):
            (other_fs / name).unlink()
        connect(own).download_file(first, tmp_path / "again.bin")
        assert sha256((tmp_path / "again.bin").read_bytes()) == sha256(BODY)
        assert (origin.count("/first.bin"), origin.count("/second.bin")) == (1, 1)
    finally:
        own.close()
