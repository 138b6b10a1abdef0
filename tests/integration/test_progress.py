"""Progress: a callback with monotonic counts, a tqdm bar on request, off by default off a TTY."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import call
from tests.origin import Origin, sha256
from tests.ranged import RangeFile
from vllm_fetch import HTTPConnection, RetryPolicy
from vllm_fetch.download.progress import bar_wanted

MODES = ["sync", "async"]
SIZE = 3 * 1024 * 1024 + 5
BODY = os.urandom(SIZE)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("connections", [1, 4])
def test_callback_counts_up_to_the_size(mode: str, connections: int, origin: Origin,
                                        tmp_path: Path) -> None:
    url = RangeFile(BODY, cuts={0: SIZE // 2} if connections == 1 else {}).mount(origin, "/p")
    seen: list[tuple[int, int | None]] = []
    conn = HTTPConnection(retry=RetryPolicy(max_attempts=3, backoff_base=0.01))
    call(mode, conn, "download_file", url, tmp_path / "p.bin", connections=connections,
         progress=lambda done, total: seen.append((done, total)))
    assert sha256((tmp_path / "p.bin").read_bytes()) == sha256(BODY)
    done = [d for d, _ in seen]
    assert done == sorted(done)  # monotonic, across the resume too
    assert {t for _, t in seen} == {SIZE}
    assert seen[-1] == (SIZE, SIZE)
    assert len(seen) > 2


@pytest.mark.parametrize("mode", MODES)
def test_bar_on_request(mode: str, origin: Origin, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    url = RangeFile(BODY).mount(origin, "/bar")
    call(mode, HTTPConnection(), "download_file", url, tmp_path / "bar.bin", progress=True)
    err = capsys.readouterr().err
    assert "bar.bin" in err and "100%" in err


@pytest.mark.parametrize("mode", MODES)
def test_no_bar_off_a_tty_or_when_disabled(mode: str, origin: Origin, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    url = RangeFile(BODY).mount(origin, "/quiet")
    call(mode, HTTPConnection(), "download_file", url, tmp_path / "q.bin")
    call(mode, HTTPConnection(), "download_file", url, tmp_path / "q2.bin", progress=False)
    assert "q.bin" not in capsys.readouterr().err


def test_bar_wanted(monkeypatch: pytest.MonkeyPatch) -> None:
    class TTY:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", TTY())
    monkeypatch.delenv("VLLM_FETCH_DISABLE_PROGRESS", raising=False)
    assert bar_wanted(None) and bar_wanted(True) and not bar_wanted(False)
    monkeypatch.setenv("VLLM_FETCH_DISABLE_PROGRESS", "1")
    assert not bar_wanted(None) and bar_wanted(True)
