"""The machine lock's note: reuse only this URL's result, published since the wait began."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from vllm_fetch.core.results import DownloadResult
from vllm_fetch.download.locking import TargetLock

URL = "https://example.com/model.bin?sig=secret"
DATA = b"weights"
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VLLM_FETCH_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("VLLM_FETCH_DISABLE_LOCKS", raising=False)
    target = tmp_path / "model.bin"
    TargetLock(target, URL).note_path.parent.mkdir(parents=True)
    target.write_bytes(DATA)
    TargetLock(target, URL).record(DownloadResult(target, len(DATA), SHA, 200,
                                                  {"ETag": '"e"', "Set-Cookie": "x"}, URL))
    return target


def waiter(target: Path, url: str = URL) -> TargetLock:
    lock = TargetLock(target, url)
    lock.since = time.time() - 60
    return lock


def test_reuses_what_was_published_while_waiting(published: Path) -> None:
    result = waiter(published).reusable(SHA, len(DATA))
    assert result is not None
    assert (result.path, result.size, result.sha256) == (published, len(DATA), SHA)
    assert result.headers == {"ETag": '"e"'}  # no cookies kept
    assert "secret" not in result.url  # the note never stores a query string


def test_not_for_another_url(published: Path) -> None:
    assert waiter(published, URL + "&v=2").reusable(None, None) is None


def test_not_when_published_before_the_wait(published: Path) -> None:
    late = TargetLock(published, URL)
    late.since = time.time() + 1
    assert late.reusable(None, None) is None


def test_not_when_the_file_changed_since(published: Path) -> None:
    published.write_bytes(b"something else")
    assert waiter(published).reusable(None, None) is None


def test_not_when_expectations_differ(published: Path) -> None:
    assert waiter(published).reusable("0" * 64, None) is None
    assert waiter(published).reusable(None, len(DATA) + 1) is None


def test_nothing_recorded_with_locks_disabled(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_FETCH_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("VLLM_FETCH_DISABLE_LOCKS", "1")
    target = tmp_path / "t.bin"
    target.write_bytes(DATA)
    lock = TargetLock(target, URL)
    lock.record(DownloadResult(target, len(DATA), SHA, 200, {}, URL))
    assert not os.path.exists(lock.note_path)
