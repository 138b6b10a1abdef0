"""Disk faults (D4): a full disk or a read-only target is a DiskError, never retried, no temp left.

ENOSPC is produced two ways: by making ``os.pwrite(v)`` fail (or ``os.fstatvfs`` report a
full filesystem) in this process (portable), and, when the tests run as root, by a real 1 MiB
tmpfs.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiofiles.threadpool
import pytest

from tests.helpers import call, leftovers
from tests.origin import Origin, sha256
from tests.ranged import RangeFile
from vllm_fetch import DiskError, HTTPConnection, RetryPolicy

MODES = ["sync", "async"]
SIZE = 2 * 1024 * 1024
BODY = os.urandom(SIZE)


# These tests count the engine's requests and partial files: the session's shared cache
# (tested in test_cache*.py) would answer some downloads from disk.
pytestmark = pytest.mark.usefixtures("cache_disabled")



@pytest.fixture
def conn() -> HTTPConnection:
    return HTTPConnection(retry=RetryPolicy(max_attempts=4, backoff_base=0.01))


def _full(*args: Any) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


class _FullFile(io.FileIO):
    """A file on a full disk: opens, but every write fails (aiofiles opens through this)."""

    def __init__(self, file: Any, mode: str, buffering: int = -1, **kwargs: Any) -> None:
        super().__init__(file, mode.replace("b", ""), opener=kwargs.get("opener"))

    def write(self, data: Any) -> int:
        return _full()


@pytest.mark.parametrize("mode", MODES)
def test_enospc_while_writing(mode: str, origin: Origin, conn: HTTPConnection, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    url = RangeFile(BODY).mount(origin, "/full")
    monkeypatch.setattr(os, "pwrite", _full)
    monkeypatch.setattr(os, "pwritev", _full)
    monkeypatch.setattr(aiofiles.threadpool, "sync_open", _FullFile)  # the async side's writes
    with pytest.raises(DiskError) as info:
        call(mode, conn, "download_file", url, tmp_path / "full.bin", connections=1)
    assert info.value.errno == errno.ENOSPC
    assert origin.count("/full") == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", MODES)
def test_enospc_on_preallocation(mode: str, origin: Origin, conn: HTTPConnection,
                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = RangeFile(BODY).mount(origin, "/prealloc")
    real = os.fstatvfs

    def no_room(fd: int) -> os.statvfs_result:  # a filesystem with 64 KiB free
        space = list(real(fd))
        space[4] = 65536 // space[1]  # f_bavail, in f_frsize blocks
        return os.statvfs_result(space)

    monkeypatch.setattr(os, "fstatvfs", no_room)
    with pytest.raises(DiskError):
        call(mode, conn, "download_file", url, tmp_path / "p.bin", connections=4)
    assert origin.count("/prealloc") == 1  # the probe only: no part was requested
    assert leftovers(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("connections", [1, 4])
def test_real_full_tmpfs(mode: str, connections: int, origin: Origin, conn: HTTPConnection,
                         small_tmpfs: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/tmpfs")
    with pytest.raises(DiskError) as info:
        call(mode, conn, "download_file", url, small_tmpfs / "big.bin",
             connections=connections)
    assert info.value.errno == errno.ENOSPC
    assert origin.count("/tmpfs") == 1
    assert leftovers(small_tmpfs) == []


@pytest.mark.parametrize("mode", MODES)
def test_read_only_target_dir(mode: str, origin: Origin, conn: HTTPConnection,
                              small_tmpfs: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/ro")
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    with pytest.raises(DiskError) as info:
        call(mode, conn, "download_file", url, small_tmpfs / "x.bin")
    assert info.value.errno == errno.EROFS
    assert origin.count("/ro") <= 1
    assert leftovers(small_tmpfs) == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("connections", [1, 4])
def test_publish_order(mode: str, connections: int, origin: Origin, conn: HTTPConnection,
                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D5: fsync(file) -> os.replace -> fsync(directory)."""
    url = RangeFile(BODY).mount(origin, "/order")
    target = tmp_path / "order.bin"
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        if Path(dst) == target:
            events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    call(mode, conn, "download_file", url, target, connections=connections)
    assert events[-3:] == ["fsync file", "replace", "fsync dir"]
    assert leftovers(tmp_path) == ["order.bin"]


class _ShortFile(io.FileIO):
    """A file whose every third write takes only half its bytes (as a raw write may, when a
    signal arrives or the disk fills up), and says so."""

    writes = 0

    def __init__(self, file: Any, mode: str, buffering: int = -1, **kwargs: Any) -> None:
        super().__init__(file, mode.replace("b", ""), opener=kwargs.get("opener"))

    def write(self, data: Any) -> int:
        type(self).writes += 1
        view = memoryview(data)
        if type(self).writes % 3 == 0 and len(view) > 1:
            view = view[: len(view) // 2]
        return super().write(view)


def test_short_writes_of_the_async_side_are_written_again(
        origin: Origin, conn: HTTPConnection, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A short raw write inside a batch must not shift the bytes after it (the stream's sha256
    would still match: only the bytes on disk tell): the published file is whole."""
    body = os.urandom(9 * 1024 * 1024 + 12345)  # several batches, the last one partial
    url = RangeFile(body).mount(origin, "/short")
    _ShortFile.writes = 0
    monkeypatch.setattr(aiofiles.threadpool, "sync_open", _ShortFile)
    call("async", conn, "download_file", url, tmp_path / "short.bin", connections=1,
         expected_sha256=hashlib.sha256(body).hexdigest())
    assert _ShortFile.writes > 6  # short writes happened
    assert (tmp_path / "short.bin").read_bytes() == body
    assert origin.count("/short") == 1
    assert leftovers(tmp_path) == ["short.bin"]


def _connection(mode: str, url: str, tmp_path: Path, cached: bool) -> HTTPConnection:
    """A connection; with ``cached``, one whose cache already holds ``url`` (downloaded once
    to ``first.bin``), so a refusal must come before the cache copy too."""
    conn = HTTPConnection(cache=tmp_path / "cache" if cached else False)
    if cached:
        call(mode, conn, "download_file", url, tmp_path / "first.bin")
    return conn


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cached", [False, True])
def test_a_directory_target_is_refused_before_any_request(
        mode: str, cached: bool, origin: Origin, tmp_path: Path) -> None:
    """A rename cannot replace a directory: the call fails before the transfer, not after it
    (a 5 GB file fetched, then thrown away), with the directory as it was."""
    url = RangeFile(BODY).mount(origin, "/dir")
    conn = _connection(mode, url, tmp_path, cached)
    before = origin.count("/dir")
    target = tmp_path / "target"
    target.mkdir()
    (target / "kept").write_bytes(b"mine")
    with pytest.raises(DiskError) as info:
        call(mode, conn, "download_file", url, target)
    assert info.value.errno == errno.EISDIR
    assert origin.count("/dir") == before
    assert target.is_dir() and (target / "kept").read_bytes() == b"mine"
    assert leftovers(tmp_path) == sorted(["target", *(["cache", "first.bin"] if cached else [])])


@pytest.mark.parametrize("mode", MODES)
def test_a_target_ending_in_a_slash_names_a_directory_and_is_refused(
        mode: str, origin: Origin, tmp_path: Path) -> None:
    """``download_file(url, "models/")`` must not write a file named ``models``."""
    url = RangeFile(BODY).mount(origin, "/slash")
    conn = HTTPConnection(cache=False)
    for given in (f"{tmp_path}/models/", f"{tmp_path}/models/.", f"{tmp_path}/a/.."):
        with pytest.raises(DiskError) as info:
            call(mode, conn, "download_file", url, given)
        assert info.value.errno == errno.EISDIR
    assert origin.count("/slash") == 0
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", MODES)
def test_a_symlink_to_a_device_is_never_replaced(mode: str, origin: Origin,
                                                 tmp_path: Path) -> None:
    """`-o /dev/stdout` is a symlink (to /proc/self/fd/1): what it names decides, so the link
    is not swapped for a regular file either. A link to a regular file is replaced as before."""
    url = RangeFile(BODY).mount(origin, "/linked")
    conn = HTTPConnection(cache=False)
    link = tmp_path / "out"
    link.symlink_to("/dev/null")
    with pytest.raises(DiskError) as info:
        call(mode, conn, "download_file", url, link)
    assert info.value.errno == errno.EEXIST
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    assert origin.count("/linked") == 0
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"old")
    to_plain = tmp_path / "to-plain"
    to_plain.symlink_to(plain)
    call(mode, conn, "download_file", url, to_plain)
    assert sha256(to_plain.read_bytes()) == sha256(BODY)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cached", [False, True])
def test_a_fifo_or_device_target_is_never_replaced(
        mode: str, cached: bool, origin: Origin, tmp_path: Path) -> None:
    """`-o /dev/null` must not swap the device node for a regular file (a rename would): a
    target that is a FIFO, device or socket is refused, before any request, and left as it is."""
    url = RangeFile(BODY).mount(origin, "/node")
    conn = _connection(mode, url, tmp_path, cached)
    before = origin.count("/node")
    fifo = tmp_path / "null"
    os.mkfifo(fifo)
    with pytest.raises(DiskError) as info:
        call(mode, conn, "download_file", url, fifo)
    assert info.value.errno == errno.EEXIST
    assert "not a regular file" in str(info.value)
    assert origin.count("/node") == before
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert leftovers(tmp_path) == sorted(["null", *(["cache", "first.bin"] if cached else [])])
