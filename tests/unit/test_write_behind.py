"""Writeback started while a download streams: ``files.start_writeback`` and the helper
thread that calls it (``files.WriteBehind``)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from vllm_fetch import files
from vllm_fetch.files import start_writeback


def test_start_writeback_is_harmless_on_any_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, os.urandom(1 << 20))
        start_writeback(fd)  # starts writing, returns at once
        start_writeback(fd, 4096, 8192)
        os.fsync(fd)
    finally:
        os.close(fd)
    start_writeback(fd)  # a closed descriptor: nothing happens, nothing raised
    assert path.stat().st_size == 1 << 20


def test_write_behind_runs_on_its_own_descriptor_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    monkeypatch.setattr(files, "start_writeback", lambda fd, *a: seen.append(fd))
    before = len(os.listdir("/proc/self/fd"))
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    behind = files.WriteBehind()
    try:
        os.write(fd, b"x" * 4096)
        behind.poke(fd)
        deadline = time.monotonic() + 10
        while not seen:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert seen[0] != fd  # a duplicate: closing ``fd`` meanwhile cannot hit another file
    finally:
        behind.close()
        os.close(fd)
    behind.poke(fd)  # after close: ignored (and ``fd`` is closed: nothing may touch it)
    assert len(os.listdir("/proc/self/fd")) == before
    assert not [t for t in threading.enumerate() if t.name == "vllm_fetch-writeback"]
