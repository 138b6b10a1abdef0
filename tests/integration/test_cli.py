"""The real ``vllm-fetch`` console script, run in subprocesses against the loopback origin."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.origin import Origin, sha256

SCRIPT = Path(sys.executable).with_name("vllm-fetch")
BODY = os.urandom(200_000)


def run(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VLLM_FETCH_CACHE_DIR": str(cwd / ".cache"),
           "VLLM_FETCH_MAX_RETRIES": "0"}
    return subprocess.run([str(SCRIPT), *map(str, args)], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vllm-fetch:")]
    assert len(errors) == 1, result.stderr


def test_get_writes_the_file(origin: Origin, tmp_path: Path) -> None:
    url = origin.serve_bytes("/files/model.bin", BODY)
    result = run("get", url, "--sha256", sha256(BODY), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sha256((tmp_path / "model.bin").read_bytes()) == sha256(BODY)
    assert "model.bin" in result.stdout


def test_get_with_output_path(origin: Origin, tmp_path: Path) -> None:
    url = origin.serve_bytes("/x", BODY)
    result = run("get", url, "-o", tmp_path / "sub" / "out.bin", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sha256((tmp_path / "sub" / "out.bin").read_bytes()) == sha256(BODY)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "not a url", "http://"])
def test_get_bad_url_is_one_line(url: str, tmp_path: Path) -> None:
    result = run("get", url, "-o", "out", cwd=tmp_path)
    assert_one_line_error(result)
    assert "Invalid HTTP URL" in result.stderr
    assert not (tmp_path / "out").exists()


def test_get_checksum_mismatch_leaves_nothing(origin: Origin, tmp_path: Path) -> None:
    url = origin.serve_bytes("/model.bin", BODY)
    result = run("get", url, "--sha256", "0" * 64, cwd=tmp_path)
    assert_one_line_error(result)
    assert "sha256" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".cache") == []


def test_get_404_is_one_line_and_hides_the_query(origin: Origin, tmp_path: Path) -> None:
    result = run("get", origin.url("/missing?X-Amz-Signature=secret"), "-o", "out",
                 cwd=tmp_path)
    assert_one_line_error(result)
    assert "404" in result.stderr and "secret" not in result.stderr


def test_prefetch_mixed_manifest(origin: Origin, tmp_path: Path) -> None:
    good = origin.serve_bytes("/good.bin", BODY)
    other = origin.serve_bytes("/other.bin", b"other body")
    bad_sum = origin.serve_bytes("/bad.bin", b"not what the manifest says")
    manifest = tmp_path / "weights.txt"
    manifest.write_text(
        "# a comment\n"
        f"{good} {sha256(BODY)}\n"
        f"{other} - nested/renamed.bin\n"
        f"{bad_sum} {'0' * 64}\n"
        f"{origin.url('/absent.bin')}\n"
    )
    result = run("prefetch", manifest, "-d", tmp_path / "out", "-j", "3", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    out = tmp_path / "out"
    assert sha256((out / "good.bin").read_bytes()) == sha256(BODY)
    assert (out / "nested" / "renamed.bin").read_bytes() == b"other body"
    assert not (out / "bad.bin").exists() and not (out / "absent.bin").exists()
    assert "2 fetched" in result.stdout and "2 failed" in result.stdout
    failures = [line for line in result.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failures) == 2 and any("404" in line for line in failures)


def test_prefetch_json_manifest_all_good(origin: Origin, tmp_path: Path) -> None:
    url = origin.serve_bytes("/a.bin", BODY)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"url": url, "sha256": sha256(BODY), "path": "a.bin"}]))
    result = run("prefetch", manifest, "-d", tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sha256((tmp_path / "a.bin").read_bytes()) == sha256(BODY)


def test_prefetch_bad_manifest_is_one_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.txt"
    manifest.write_text("http://h.test/x ../../etc/passwd\n")
    assert_one_line_error(run("prefetch", manifest, cwd=tmp_path))
    assert_one_line_error(run("prefetch", tmp_path / "missing.txt", cwd=tmp_path))


def test_demo_shows_each_behaviour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("VLLM_FETCH_LOCK_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    result = run("demo", cwd=tmp_path, timeout=120)
    assert not home.exists()  # nothing left in the user's cache (locks included)
    assert result.returncode == 0, result.stderr
    for step in ("/flaky", "/cut", "/stall"):
        assert step in result.stdout
    assert "All downloads complete and verified" in result.stdout
    assert result.stderr.count("retrying") == 3  # one retry WARNING per fault
    assert "HTTP 503" in result.stderr and "broke mid-body" in result.stderr
    assert "idle timeout" in result.stderr
    assert result.stdout.count("2 request(s)") == 3  # each step really met its fault
    assert result.stdout.count("Range: bytes=1048576-") == 2  # /cut and /stall resumed
    assert "from cache=True, 0 new request(s)" in result.stdout


def test_prefetch_twice_second_run_is_from_cache(origin: Origin, tmp_path: Path) -> None:
    url = origin.serve_bytes("/w.bin", BODY, headers={"Cache-Control": "max-age=3600"})
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"{url} {sha256(BODY)}\n")
    first = run("prefetch", manifest, "-d", tmp_path / "a", cwd=tmp_path)
    second = run("prefetch", manifest, "-d", tmp_path / "b", cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "1 fetched, 0 from cache, 0 failed" in first.stdout
    assert "0 fetched, 1 from cache, 0 failed" in second.stdout
    assert origin.count("/w.bin") == 1
    assert sha256((tmp_path / "b" / "w.bin").read_bytes()) == sha256(BODY)


def test_get_offline_and_no_cache(origin: Origin, tmp_path: Path) -> None:
    url = origin.serve_bytes("/o.bin", BODY)
    missing = run("get", url, "-o", "first", "--offline", cwd=tmp_path)
    assert_one_line_error(missing)
    assert "offline" in missing.stderr.lower() and origin.count("/o.bin") == 0

    assert run("get", url, "-o", "first", cwd=tmp_path).returncode == 0
    offline = run("get", url, "-o", "second", "--offline", cwd=tmp_path)
    assert offline.returncode == 0, offline.stderr
    assert "from cache" in offline.stdout and origin.count("/o.bin") == 1
    assert sha256((tmp_path / "second").read_bytes()) == sha256(BODY)

    assert run("get", url, "-o", "third", "--no-cache", cwd=tmp_path).returncode == 0
    assert origin.count("/o.bin") == 2


def test_get_with_connections_uses_ranges(origin: Origin, tmp_path: Path) -> None:
    from tests.ranged import RangeFile

    data = os.urandom(4 * 1024 * 1024)
    url = RangeFile(data).mount(origin, "/big.bin")
    result = run("get", url, "--connections", "4", "--no-cache", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sha256((tmp_path / "big.bin").read_bytes()) == sha256(data)
    ranges = [s.headers.get("Range") for s in origin.seen("/big.bin")]
    assert sum(1 for r in ranges if r and not r.startswith("bytes=0-")) >= 1, ranges


def test_cache_commands(origin: Origin, tmp_path: Path) -> None:
    one = origin.serve_bytes("/one.bin", BODY)
    two = origin.serve_bytes("/two.bin", b"x" * 5000) + "?token=secret"
    for url, name in ((one, "one"), (two, "two")):
        assert run("get", url, "-o", name, cwd=tmp_path).returncode == 0

    info = run("cache", "info", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "entries    2" in info.stdout and "205.0 kB" in info.stdout

    listing = run("cache", "ls", cwd=tmp_path)
    assert "one.bin" in listing.stdout and "two.bin" in listing.stdout
    assert "secret" not in listing.stdout
    # each body is the downloaded file itself (a hard link), shown as such
    assert listing.stdout.count(" shared ") == 2, listing.stdout
    (tmp_path / "two").unlink()  # the cache's name is the only one left: its own copy now
    listing = run("cache", "ls", cwd=tmp_path)
    assert listing.stdout.count(" shared ") == 1 and listing.stdout.count(" copy ") == 1, \
        listing.stdout

    blob = next(p for p in (tmp_path / ".cache" / "blobs").rglob("*")
                if p.is_file() and p.name == sha256(BODY)[2:])
    blob.chmod(0o644)
    blob.write_bytes(b"corrupted")
    verify = run("cache", "verify", cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr
    assert "1 corrupt" in verify.stdout and sha256(BODY) in verify.stdout
    assert "entries    1" in run("cache", "info", cwd=tmp_path).stdout

    pruned = run("cache", "prune", "--max-size", "0", cwd=tmp_path)
    assert pruned.returncode == 0 and "removed 1 entries" in pruned.stdout
    assert run("get", one, "-o", "again", cwd=tmp_path).returncode == 0
    cleared = run("cache", "clear", cwd=tmp_path)
    assert cleared.returncode == 0 and "cleared 1 entries" in cleared.stdout
    assert "entries    0" in run("cache", "info", cwd=tmp_path).stdout


@pytest.mark.parametrize("args", [("prune", "--older-than", "soon"),
                                  ("prune", "--max-size", "lots")])
def test_cache_bad_arguments(args: tuple[str, ...], tmp_path: Path) -> None:
    result = run("cache", *args, cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [
    ("get", "http://127.0.0.1:9/x", "--sha256", "abc"),
    ("get",),
    ("get", "http://127.0.0.1:9/x", "--connections", "0"),
    ("get", "http://127.0.0.1:9/x", "--timeout", "soon"),
    ("cache", "prune", "--max-size", "lots"),
    ("cache", "prune", "--older-than", "3x"),
    ("no-such-command",),
])
def test_a_usage_error_is_one_line(args: tuple[str, ...], tmp_path: Path) -> None:
    """As every error of the command: one ``vllm-fetch: error: …`` line, exit 2, no usage
    block."""
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("vllm-fetch: error: "), \
        result.stderr


def test_a_usage_error_quotes_no_secret_of_the_arguments(tmp_path: Path) -> None:
    result = run("get", "http://127.0.0.1:9/x", "http://alice:PASSWORD@h/y?token=SECRET",
                 cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("vllm-fetch: error: ")
    assert "PASSWORD" not in result.stderr and "SECRET" not in result.stderr, result.stderr


def test_get_sha256_is_checked_before_any_transfer(origin: Origin, tmp_path: Path) -> None:
    url = origin.serve_bytes("/m.bin", BODY)
    for bad in ("a" * 63, "sha256:" + "z" * 64, "abc"):
        result = run("get", url, "--sha256", bad, cwd=tmp_path)
        assert result.returncode == 2 and "64 hex digits" in result.stderr, result.stderr
    assert origin.count("/m.bin") == 0
    good = run("get", url, "--sha256", "sha256:" + sha256(BODY).upper(), cwd=tmp_path)
    assert good.returncode == 0, good.stderr


def test_get_into_a_directory_uses_the_url_name(origin: Origin, tmp_path: Path) -> None:
    url = origin.serve_bytes("/files/model.bin", BODY)
    (tmp_path / "existing").mkdir()
    assert run("get", url, "-o", "existing", cwd=tmp_path).returncode == 0
    assert run("get", url, "-o", "new/", cwd=tmp_path).returncode == 0
    for directory in ("existing", "new"):
        assert sha256((tmp_path / directory / "model.bin").read_bytes()) == sha256(BODY)


def test_verbose_before_or_after_the_command_and_retry_notes_only_with_it(
        origin: Origin, tmp_path: Path) -> None:
    url = origin.serve_bytes("/status/500", b"no", status=500)
    env = {**os.environ, "VLLM_FETCH_CACHE_DIR": str(tmp_path / ".cache"),
           "VLLM_FETCH_MAX_RETRIES": "2"}

    def get(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), *args], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=60, check=False)

    quiet = get("get", url, "-o", "x")
    assert_one_line_error(quiet)
    assert quiet.stderr.count("\n") == 1, quiet.stderr  # the error, and nothing else
    for verbose in (get("-v", "get", url, "-o", "x"), get("get", url, "-o", "x", "-v")):
        assert verbose.returncode == 1
        assert verbose.stderr.count("retrying") >= 1, verbose.stderr
    assert origin.count("/status/500") >= 6


def test_verbose_logs_each_cache_decision_and_quiet_logs_none(
        origin: Origin, tmp_path: Path) -> None:
    """``-v`` says what the cache decided (a miss, the store, a hit); without it, only the
    one result line."""
    url = origin.serve_bytes("/files/logged.bin", BODY,
                             headers={"Cache-Control": "max-age=600", "ETag": '"v1"'})
    env = {**os.environ, "VLLM_FETCH_CACHE_DIR": str(tmp_path / ".cache")}

    def get(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), *args], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=60, check=False)

    first = get("get", "-v", url, "-o", "a.bin")
    assert first.returncode == 0, first.stderr
    assert "cache miss: " in first.stderr and "cache stored: " in first.stderr, first.stderr
    # the lookup repeated under the transfer lock found the same: said once
    assert first.stderr.count("cache miss: ") == 1, first.stderr
    second = get("-v", "get", url, "-o", "b.bin")
    assert second.returncode == 0, second.stderr
    assert "cache hit, age " in second.stderr, second.stderr
    quiet = get("get", url, "-o", "c.bin")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert origin.count("/files/logged.bin") == 1
    assert sha256((tmp_path / "c.bin").read_bytes()) == sha256(BODY)


@pytest.mark.parametrize("command", ["info", "ls", "verify", "prune", "clear"])
def test_cache_dir_that_is_a_file_is_one_error_line(command: str, tmp_path: Path) -> None:
    where = tmp_path / "a-file"
    where.write_bytes(b"not a cache")
    result = run("cache", "--dir", where, command, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == "", result
    assert result.stderr == f"vllm-fetch: error: {where} is not a directory, so it is no cache\n"
    assert where.read_bytes() == b"not a cache"


def test_cache_info_of_a_missing_dir_does_not_create_it(tmp_path: Path) -> None:
    where = tmp_path / "nothing-here"
    result = run("cache", "--dir", where, "info", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "entries    0" in result.stdout
    assert run("cache", "--dir", where, "ls", cwd=tmp_path).returncode == 0
    assert not where.exists()


def test_cache_info_on_a_read_only_cache_is_one_clean_line(origin: Origin,
                                                           tmp_path: Path) -> None:
    url = origin.serve_bytes("/ro.bin", BODY)
    assert run("get", url, "-o", "ro.bin", cwd=tmp_path).returncode == 0
    cache_dir = tmp_path / ".cache"
    everything = [cache_dir, *cache_dir.rglob("*")]
    if os.geteuid() == 0:  # root writes through modes: make it immutable instead
        freeze = ["chattr", "+i"], ["chattr", "-i"]
        subprocess.run([*freeze[0], *map(str, everything)], check=True)
    else:
        freeze = ["chmod", "a-w"], ["chmod", "u+w"]
        subprocess.run([*freeze[0], *map(str, everything)], check=True)
    try:
        result = run("cache", "info", cwd=tmp_path)
    finally:
        subprocess.run([*freeze[1], *map(str, everything)], check=True)
    assert_one_line_error(result)
    assert result.stderr.count("\n") == 1 and "read-only" in result.stderr, result.stderr


def test_get_to_a_fifo_is_one_line_and_leaves_it_a_fifo(origin: Origin, tmp_path: Path) -> None:
    """`vllm-fetch get URL -o /dev/null` (here a FIFO, which needs no root) never replaces the
    node with a regular file: one error line, nothing fetched."""
    url = origin.serve_bytes("/model.bin", BODY)
    fifo = tmp_path / "null"
    os.mkfifo(fifo)
    result = run("get", url, "-o", fifo, cwd=tmp_path)
    assert_one_line_error(result)
    assert result.returncode == 1
    assert "not a regular file" in result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert origin.count("/model.bin") == 0
