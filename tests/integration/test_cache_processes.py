"""The cache across real processes: one fetches, another is served from disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cache_origin import Resource, serve_resource
from tests.origin import Origin, sha256
from vllm_fetch import FetchCache

BODY = os.urandom(40_000)

# Fetch every URL on argv[2:] with the mode in argv[1]; print one JSON line per result.
FETCHER = textwrap.dedent("""
    import asyncio, hashlib, json, sys
    from pathlib import Path
    from vllm_fetch import HTTPConnection, OfflineError, RetryPolicy

    mode, out_dir, urls = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    conn = HTTPConnection(retry=RetryPolicy.none())

    async def afetch(url, target):
        data = await conn.async_get_bytes(url)
        await conn.async_download_file(url, target)
        return data

    for i, url in enumerate(urls):
        target = out_dir / f"file{i}"
        try:
            if mode == "sync":
                data = conn.get_bytes(url)
                conn.download_file(url, target)
            else:
                data = asyncio.run(afetch(url, target))
            result = {"sha256": hashlib.sha256(data).hexdigest(),
                      "file": hashlib.sha256(target.read_bytes()).hexdigest()}
        except OfflineError as exc:
            result = {"offline_error": str(exc)}
        print(json.dumps(result), flush=True)
""")

# Refuses (and counts) every attempt to resolve a name or open an IP socket in this process,
# from the moment vllm_fetch is imported (urllib3's import probes IPv6 with a socket on ::1).
NO_SOCKETS = textwrap.dedent("""
    import socket, sys
    import vllm_fetch
    attempts = []
    def deny(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname") or (
            event == "socket.__new__" and args[1] in (socket.AF_INET, socket.AF_INET6)
        ):
            attempts.append(event)
            raise RuntimeError(f"offline test: {event} attempted")
    sys.addaudithook(deny)
    import atexit
    atexit.register(lambda: print(f"SOCKET ATTEMPTS {len(attempts)}", flush=True))
""")


def run(script: str, cache_dir: Path, out_dir: Path, mode: str, urls: list[str],
        **env: str) -> list[str]:
    out_dir.mkdir(exist_ok=True)
    environ = {**os.environ, "VLLM_FETCH_CACHE_DIR": str(cache_dir), **env}
    done = subprocess.run(
        [sys.executable, "-c", script, mode, str(out_dir), *urls],
        env=environ, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_second_process_is_served_from_the_cache(mode: str, origin: Origin,
                                                 tmp_path: Path) -> None:
    url = serve_resource(origin, "/shared", Resource(BODY, cache_control="max-age=600"))
    first = run(FETCHER, tmp_path / "cache", tmp_path / "one", mode, [url])
    assert origin.count("/shared") == 1
    second = run(FETCHER, tmp_path / "cache", tmp_path / "two", mode, [url])
    assert origin.count("/shared") == 1  # zero requests from the second process
    expected = {"sha256": sha256(BODY), "file": sha256(BODY)}
    assert [json.loads(line) for line in first + second] == [expected, expected]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_offline_env_opens_no_socket(mode: str, origin: Origin, tmp_path: Path) -> None:
    url = serve_resource(origin, "/known", Resource(BODY, cache_control="max-age=0"))
    run(FETCHER, tmp_path / "cache", tmp_path / "warm", "sync", [url])
    origin.requests.clear()
    unknown = origin.url("/unknown?sig=s3cr3t")
    lines = run(NO_SOCKETS + FETCHER, tmp_path / "cache", tmp_path / "off", mode,
                [url, unknown], VLLM_FETCH_OFFLINE="1")
    assert json.loads(lines[0]) == {"sha256": sha256(BODY), "file": sha256(BODY)}
    error = json.loads(lines[1])["offline_error"]
    assert "/unknown" in error and "s3cr3t" not in error
    assert lines[2] == "SOCKET ATTEMPTS 0"
    assert origin.requests == []


def test_no_socket_guard_really_blocks(origin: Origin, tmp_path: Path) -> None:
    """The guard above is not vacuous: without offline mode the same process is stopped."""
    url = origin.serve_bytes("/x", b"x")
    environ = {**os.environ, "VLLM_FETCH_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", NO_SOCKETS + FETCHER, "sync", str(tmp_path), url],
        env=environ, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode != 0 and "offline test: socket" in done.stderr
    assert origin.requests == []


def test_processes_storing_at_once_share_one_consistent_cache(origin: Origin,
                                                              tmp_path: Path) -> None:
    bodies = [os.urandom(30_000) for _ in range(4)]
    urls = [serve_resource(origin, f"/p{i}", Resource(b, cache_control="max-age=600"))
            for i, b in enumerate(bodies)]
    shared = serve_resource(origin, "/same", Resource(BODY, cache_control="max-age=600"))
    environ = {**os.environ, "VLLM_FETCH_CACHE_DIR": str(tmp_path / "cache")}
    workers = []
    for i, url in enumerate(urls):
        out = tmp_path / f"w{i}"
        out.mkdir()
        workers.append(subprocess.Popen(
            [sys.executable, "-c", FETCHER, "sync" if i % 2 else "async", str(out), url, shared],
            env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [w.communicate(timeout=60) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err for _, err in outputs]
    for i, (stdout, _) in enumerate(outputs):
        first, second = (json.loads(line) for line in stdout.splitlines())
        assert first == {"sha256": sha256(bodies[i]), "file": sha256(bodies[i])}
        assert second == {"sha256": sha256(BODY), "file": sha256(BODY)}
    again = run(FETCHER, tmp_path / "cache", tmp_path / "again", "sync", [*urls, shared])
    assert [json.loads(line)["sha256"] for line in again] == [sha256(b) for b in
                                                               [*bodies, BODY]]
    assert all(origin.count(f"/p{i}") == 1 for i in range(4))
    cache = FetchCache(tmp_path / "cache")
    held = [b.sha256 for b in cache.blobs.iter_blobs()]  # files and segment records
    cache.close()
    assert sorted(held) == sorted(sha256(b) for b in [*bodies, BODY])  # one per distinct body,
    # however many processes stored it
