"""The remembered environment answers: kept while nothing changes, dropped when it does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vllm_fetch.drivers import environment
from vllm_fetch.drivers.environment import EnvironmentMemo, home_netrc


def test_answers_kept_until_the_environment_changes(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    memo = EnvironmentMemo(home_netrc((".netrc",)))
    first = memo.current()
    first["k"] = 1
    assert memo.current() is first
    monkeypatch.setenv("http_proxy", "http://proxy.test:3128")
    assert memo.current() == {}
    again = memo.current()
    again["k"] = 2
    monkeypatch.setenv("http_proxy", "http://proxy.test:3128")  # same value: nothing changed
    assert memo.current() is again
    monkeypatch.delenv("http_proxy")
    assert memo.current() == {}


def test_a_netrc_file_appearing_or_changing_drops_the_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    memo = EnvironmentMemo(home_netrc((".netrc",)))
    memo.current()["k"] = 1
    netrc.write_text("machine a login b password c\n")
    assert memo.current() == {}
    memo.current()["k"] = 2
    assert memo.current() == {"k": 2}
    os.utime(netrc, ns=(1, 1))
    assert memo.current() == {}
    memo.current()["k"] = 3
    netrc.unlink()
    assert memo.current() == {}


def test_netrc_files_follow_home_and_netrc(monkeypatch: pytest.MonkeyPatch) -> None:
    files = home_netrc((".netrc", "_netrc"))
    assert files({"NETRC": "/x/y"}) == ("/x/y",)
    monkeypatch.setenv("HOME", "/home/someone")
    assert files({}) == ("/home/someone/.netrc", "/home/someone/_netrc")


def test_answers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    memo = EnvironmentMemo(home_netrc((".netrc",)))
    known = memo.current()
    known.update((i, i) for i in range(environment.MAX_ENTRIES + 1))
    assert memo.current() == {}
