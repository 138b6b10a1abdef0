"""The pytest plugin: an example suite records its assets once, then replays them offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.helpers import flip_stored_byte
from tests.origin import Origin, sha256
from vllm_fetch import FetchCache

EXAMPLE = Path(__file__).parent.parent / "example_suite"
ASSET = os.urandom(50_000)


def run_suite(suite: Path, mode: str, url: str, *extra: str,
              download_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EXAMPLE_ASSET_URL": url, "EXAMPLE_ASSET_SHA256": sha256(ASSET),
           "EXAMPLE_CONNECT_LOG": str(suite / f"connects-{mode}.log"),
           "EXAMPLE_DOWNLOAD_DIR": str(download_dir or "")}
    env.pop("VLLM_FETCH_CACHE_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--vllm-fetch-mode={mode}", *extra],
        cwd=suite, env=env, text=True, capture_output=True, timeout=120, check=False,
    )


def test_record_then_replay_with_the_origin_stopped(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    shutil.copytree(EXAMPLE, suite)
    origin = Origin().start()
    url = origin.serve_bytes("/assets/image.png", ASSET)
    try:
        recorded = run_suite(suite, "record", url)
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
        requests_while_recording = origin.count("/assets/image.png")
        assert requests_while_recording >= 1
    finally:
        origin.stop()
    assert (suite / "recorded_assets").is_dir()
    assert (suite / "connects-record.log").read_text()  # the log does see connections

    replayed = run_suite(suite, "replay", url)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "2 passed" in replayed.stdout
    assert not (suite / "connects-replay.log").exists()  # nothing reached for the network


def test_a_recorded_download_holds_its_bytes_wherever_the_test_put_its_file(
        tmp_path: Path) -> None:
    """The recording is committed and replayed elsewhere: a file the test downloaded (here on
    another filesystem when /dev/shm is one) is copied into it, never linked or referred to,
    so deleting that file breaks nothing."""
    suite = tmp_path / "suite"
    shutil.copytree(EXAMPLE, suite)
    shm = Path("/dev/shm")
    elsewhere = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else tmp_path))
    origin = Origin().start()
    url = origin.serve_bytes("/assets/image.png", ASSET,
                             headers={"Cache-Control": "max-age=600"})
    try:
        recorded = run_suite(suite, "record", url, "-k", "global", download_dir=elsewhere)
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
        assert sha256((elsewhere / "asset.bin").read_bytes()) == sha256(ASSET)
        # while the test's file is still there: neither a link to it nor a reference
        assert os.stat(elsewhere / "asset.bin").st_nlink == 1
        recording = FetchCache(suite / "recorded_assets")
        assert [item.stored_as for item in recording.entries()] == ["copy"]
        recording.close()
    finally:
        origin.stop()
        shutil.rmtree(elsewhere)
    replayed = run_suite(suite, "replay", url, "-k", "global")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert not (suite / "connects-replay.log").exists()


def test_replay_miss_names_the_url_and_how_to_record(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    shutil.copytree(EXAMPLE, suite)
    unrecorded = "http://127.0.0.1:9/assets/never-recorded.png?sig=secret"
    result = run_suite(suite, "replay", unrecorded, "-k", "fixture")
    assert result.returncode == 1
    assert "never-recorded.png" in result.stdout
    assert "--vllm-fetch-mode=record" in result.stdout
    assert "secret" not in result.stdout
    assert not (suite / "connects-replay.log").exists()


def test_a_damaged_recording_is_never_replayed(tmp_path: Path) -> None:
    """Fault D10 in replay: one flipped byte in a recorded blob fails the tests that read it
    (with a message saying so), and never hands them wrong bytes (issue 13, item 1)."""
    suite = tmp_path / "suite"
    shutil.copytree(EXAMPLE, suite)
    origin = Origin().start()
    url = origin.serve_bytes("/assets/image.png", ASSET,
                             headers={"Cache-Control": "max-age=600"})
    try:
        recorded = run_suite(suite, "record", url)
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    finally:
        origin.stop()
    recording = FetchCache(suite / "recorded_assets")
    flip_stored_byte(recording, sha256(ASSET), 1000)  # its own file, or its segment record
    recording.close()
    replayed = run_suite(suite, "replay", url)
    assert replayed.returncode == 1
    assert "is damaged" in replayed.stdout and "--vllm-fetch-mode=record" in replayed.stdout
    assert "AssertionError" not in replayed.stdout  # no test ever saw the damaged bytes
    assert not (suite / "connects-replay.log").exists()


def test_a_recording_that_cannot_be_opened_is_not_called_unrecorded(tmp_path: Path) -> None:
    """A recording SQLite cannot open (read-only for its write-ahead log, or broken) fails
    replay with what is wrong, not "not recorded" for every URL."""
    suite = tmp_path / "suite"
    shutil.copytree(EXAMPLE, suite)
    origin = Origin().start()
    url = origin.serve_bytes("/assets/image.png", ASSET)
    try:
        assert run_suite(suite, "record", url).returncode == 0
    finally:
        origin.stop()
    index = suite / "recorded_assets" / "index"
    for name in ("cache.db", "cache.db-wal", "cache.db-shm"):
        (index / name).unlink(missing_ok=True)
    (index / "cache.db").mkdir()  # SQLite cannot open it, as with a read-only recording
    replayed = run_suite(suite, "replay", url)
    assert replayed.returncode == 1
    assert "recorded_assets cannot be opened" in replayed.stdout, replayed.stdout
    assert "was not recorded" not in replayed.stdout
    assert not (suite / "connects-replay.log").exists()


FIXTURE_TEST = '''
import hashlib
import os

import pytest

from vllm_fetch import global_http_connection


@pytest.fixture
def asset():  # type: ignore[no-untyped-def]
    return global_http_connection.get_bytes(os.environ["EXAMPLE_ASSET_URL"])


def test_asset_from_a_fixture(asset):  # type: ignore[no-untyped-def]
    assert hashlib.sha256(asset).hexdigest() == os.environ["EXAMPLE_ASSET_SHA256"]
'''


def test_a_replay_miss_in_a_fixture_names_the_url_and_how_to_record(tmp_path: Path) -> None:
    """Assets are often fetched by fixtures: a miss there (the setup phase) gets the same
    message as one in the test body, not an OfflineError traceback."""
    suite = tmp_path / "suite"
    shutil.copytree(EXAMPLE, suite)
    (suite / "test_fixture_asset.py").write_text(FIXTURE_TEST)
    unrecorded = "http://127.0.0.1:9/assets/never-recorded.png?sig=secret"
    result = run_suite(suite, "replay", unrecorded, "test_fixture_asset.py")
    assert result.returncode == 1, result.stdout
    assert "never-recorded.png?… was not recorded" in result.stdout, result.stdout
    assert ("--vllm-fetch-mode=record test_fixture_asset.py::test_asset_from_a_fixture"
            in result.stdout), result.stdout
    assert "secret" not in result.stdout
    assert not (suite / "connects-replay.log").exists()
