"""Shared filesystems: the statfs magic numbers, the real statfs call, one WARNING per directory."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from vllm_fetch import filesystems
from vllm_fetch.cache.fetch_cache import FetchCache
from vllm_fetch.core.filesystems import shared_filesystem, shared_warning
from vllm_fetch.download.locking import lock_dir

NFS, LUSTRE, GPFS, CIFS, FUSE, EXT4, TMPFS, PROC = (
    0x6969, 0x0BD00BD0, 0x47504653, 0xFF534D42, 0x65735546, 0xEF53, 0x01021994, 0x9FA0)


@pytest.mark.parametrize(("f_type", "name"), [
    (NFS, "NFS"), (LUSTRE, "Lustre"), (GPFS, "GPFS"), (CIFS, "CIFS"), (FUSE, "FUSE"),
    (CIFS - (1 << 32), "CIFS"),  # a signed 32-bit f_type reads as negative
    (EXT4, None), (TMPFS, None), (None, None),
])
def test_shared_filesystems(f_type: int | None, name: str | None) -> None:
    assert shared_filesystem(f_type) == name


def test_the_warning_says_what_holds_and_what_does_not() -> None:
    text = shared_warning("lock", "/nfs/locks", "NFS")
    assert "/nfs/locks" in text and "NFS" in text and "one transfer per machine" in text
    assert "VLLM_FETCH_SHARED_CACHE" in shared_warning("cache", "/nfs/c", "NFS")


def test_statfs_is_really_asked() -> None:
    assert filesystems.fs_type("/proc") == PROC
    assert filesystems.fs_type("/no/such/dir") is None


def test_one_warning_per_directory_on_a_shared_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    asked: list[str] = []

    def on_nfs(path: str) -> int:
        asked.append(path)
        return NFS

    monkeypatch.setattr(filesystems, "fs_type", on_nfs)
    monkeypatch.setenv("VLLM_FETCH_LOCK_DIR", str(tmp_path / "locks" / "not-yet"))
    with caplog.at_level(logging.WARNING, logger="vllm_fetch"):
        for _ in range(2):
            FetchCache(tmp_path / "cache").close()
            lock_dir()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "cache directory" in warnings[0] and "lock directory" in warnings[1]
    assert asked == [str(tmp_path / "cache"), str(tmp_path)]  # a missing dir: its parent


def test_a_local_directory_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vllm_fetch"):
        assert filesystems.warn_if_shared(tmp_path, "cache") is None
    assert caplog.records == []
