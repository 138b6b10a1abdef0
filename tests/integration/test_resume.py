"""Validated resume against a real loopback origin, sync and async (faults F4, F7, F8, F9, F6)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

import pytest

from tests.helpers import call, leftovers
from tests.origin import Origin, sha256
from tests.ranged import RangeFile, ranges_asked
from vllm_fetch import ChecksumMismatchError, HTTPConnection, RetryPolicy, TruncatedBodyError
from vllm_fetch.core.partial_names import Owner, owned_partial_name, safe_host
from vllm_fetch.core.resume import PartialState

MODES = ["sync", "async"]
SIZE = 2 * 1024 * 1024 + 123
BODY = os.urandom(SIZE)
FAST_RETRY = RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_max=0.05)


# These tests count the engine's requests and partial files: the session's shared cache
# (tested in test_cache*.py) would answer some downloads from disk.
pytestmark = pytest.mark.usefixtures("cache_disabled")



@pytest.fixture
def conn() -> HTTPConnection:
    return HTTPConnection(retry=FAST_RETRY)



@pytest.mark.parametrize("mode", MODES)
def test_reset_at_60_percent_resumes(mode: str, origin: Origin, conn: HTTPConnection,
                                     tmp_path: Path) -> None:
    cut = int(SIZE * 0.6)
    url = RangeFile(BODY, cuts={0: cut}).mount(origin, "/w.bin")
    target = tmp_path / "w.bin"
    assert call(mode, conn, "download_file", url, target, connections=1,
                expected_sha256=sha256(BODY)) == target
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert leftovers(tmp_path) == ["w.bin"]
    second = origin.seen("/w.bin")[1].headers
    assert second["Range"].startswith("bytes=") and int(second["Range"][6:-1]) > 0
    assert second["If-Range"] == '"v1"'
    assert origin.bytes_sent < 1.5 * SIZE


@pytest.mark.parametrize("mode", MODES)
def test_origin_ignoring_range_on_retry_restarts(mode: str, origin: Origin,
                                                 conn: HTTPConnection, tmp_path: Path) -> None:
    served = RangeFile(BODY, cuts={0: SIZE // 2})
    served.before = lambda n: setattr(served, "ranges", n == 0)  # no Range support after
    url = served.mount(origin, "/f7")
    target = tmp_path / "f7.bin"
    call(mode, conn, "download_file", url, target, connections=1)
    assert target.stat().st_size == SIZE
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert leftovers(tmp_path) == ["f7.bin"]
    assert ranges_asked(origin, "/f7")[1] is not None  # it asked to resume, got a 200


@pytest.mark.parametrize("mode", MODES)
def test_etag_change_between_attempts_restarts(mode: str, origin: Origin,
                                               conn: HTTPConnection, tmp_path: Path) -> None:
    new = os.urandom(SIZE // 4)  # shorter than the partial: a stale tail would show
    served = RangeFile(BODY, cuts={0: SIZE // 2}, last_modified=None)

    def new_version(number: int) -> None:
        if number == 1:
            served.data, served.etag = new, '"v2"'

    served.before = new_version
    url = served.mount(origin, "/f8")
    target = tmp_path / "f8.bin"
    call(mode, conn, "download_file", url, target, connections=1)
    assert target.stat().st_size == len(new)
    assert sha256(target.read_bytes()) == sha256(new)
    assert origin.seen("/f8")[1].headers["If-Range"] == '"v1"'
    assert leftovers(tmp_path) == ["f8.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_wrong_sha256_publishes_nothing(mode: str, origin: Origin, conn: HTTPConnection,
                                        tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/f6")
    target = tmp_path / "f6.bin"
    with pytest.raises(ChecksumMismatchError):
        call(mode, conn, "download_file", url, target, expected_sha256="0" * 64)
    assert leftovers(tmp_path) == []
    assert origin.count("/f6") == 1  # a checksum mismatch is not retried


@pytest.mark.parametrize("mode", MODES)
def test_wrong_sha256_after_resume_publishes_nothing(mode: str, origin: Origin,
                                                     conn: HTTPConnection,
                                                     tmp_path: Path) -> None:
    url = RangeFile(BODY, cuts={0: SIZE // 3}).mount(origin, "/f6r")
    with pytest.raises(ChecksumMismatchError):
        call(mode, conn, "download_file", url, tmp_path / "x.bin", expected_sha256="ab" * 32)
    assert leftovers(tmp_path) == []
    assert ranges_asked(origin, "/f6r")[1] is not None


@pytest.mark.parametrize("mode", MODES)
def test_failed_call_keeps_partial_and_next_call_resumes(mode: str, origin: Origin,
                                                         tmp_path: Path) -> None:
    served = RangeFile(BODY, cuts={0: SIZE // 4})
    url = served.mount(origin, "/again")
    target = tmp_path / "again.bin"
    once = HTTPConnection(retry=RetryPolicy.none())
    with pytest.raises(TruncatedBodyError):
        call(mode, once, "download_file", url, target)
    kept = leftovers(tmp_path)
    assert len(kept) == 2 and all(name.startswith(".again.bin.") for name in kept)
    assert not target.exists()
    call(mode, once, "download_file", url, target, expected_sha256=sha256(BODY))
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert origin.seen("/again")[1].headers["Range"] == f"bytes={SIZE // 4}-"
    assert leftovers(tmp_path) == ["again.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_resume_false_keeps_nothing(mode: str, origin: Origin, tmp_path: Path) -> None:
    url = RangeFile(BODY, cuts={0: SIZE // 4}).mount(origin, "/nr")
    once = HTTPConnection(retry=RetryPolicy.none())
    with pytest.raises(TruncatedBodyError):
        call(mode, once, "download_file", url, tmp_path / "nr.bin", resume=False)
    assert leftovers(tmp_path) == []


def _plant_partial(tmp_path: Path, name: str, url: str, data: bytes, *,
                   total: int, etag: str = '"v1"', age: float = 0.0) -> Path:
    """A partial as an earlier writer of this process would have left it."""
    owner = Owner(safe_host(socket.gethostname()), os.getpid(), "0badf00d")
    partial = tmp_path / owned_partial_name(name, url, owner)
    partial.write_bytes(data)
    state = PartialState(len(data), etag, None, total, url)
    sidecar = partial.with_name(partial.name + ".json")
    sidecar.write_text(json.dumps(state.to_dict()))
    if age:
        old = time.time() - age
        for path in (partial, sidecar):
            os.utime(path, (old, old))
    return partial


@pytest.mark.parametrize("mode", MODES)
def test_416_with_complete_partial_publishes_it(mode: str, origin: Origin,
                                                conn: HTTPConnection, tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/f9")
    _plant_partial(tmp_path, "f9.bin", url, BODY, total=SIZE)
    target = tmp_path / "f9.bin"
    call(mode, conn, "download_file", url, target, expected_sha256=sha256(BODY))
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert ranges_asked(origin, "/f9") == [f"bytes={SIZE}-"]
    assert origin.bytes_sent == 0
    assert leftovers(tmp_path) == ["f9.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_416_with_corrupt_partial_restarts(mode: str, origin: Origin, conn: HTTPConnection,
                                           tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/f9b")
    _plant_partial(tmp_path, "f9b.bin", url, bytes(SIZE), total=SIZE)
    target = tmp_path / "f9b.bin"
    call(mode, conn, "download_file", url, target, expected_sha256=sha256(BODY))
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert ranges_asked(origin, "/f9b")[0] == f"bytes={SIZE}-"
    assert ranges_asked(origin, "/f9b")[1] in (None, "bytes=0-")
    assert leftovers(tmp_path) == ["f9b.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_planted_partial_is_resumed_and_hash_covers_it(mode: str, origin: Origin,
                                                       conn: HTTPConnection,
                                                       tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/plant")
    _plant_partial(tmp_path, "p.bin", url, BODY[:1000], total=SIZE)
    target = tmp_path / "p.bin"
    call(mode, conn, "download_file", url, target, expected_sha256=sha256(BODY),
         connections=1)
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert ranges_asked(origin, "/plant") == ["bytes=1000-"]
    assert origin.bytes_sent == SIZE - 1000


@pytest.mark.parametrize("mode", MODES)
def test_stale_partials_are_removed(mode: str, origin: Origin, conn: HTTPConnection,
                                    tmp_path: Path) -> None:
    url = RangeFile(BODY).mount(origin, "/stale")
    _plant_partial(tmp_path, "s.bin", url, BODY[:1000], total=SIZE, age=8 * 24 * 3600)
    target = tmp_path / "s.bin"
    call(mode, conn, "download_file", url, target, connections=1)
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert ranges_asked(origin, "/stale") == [None]  # not resumed: cleaned by age
    assert leftovers(tmp_path) == ["s.bin"]


@pytest.mark.parametrize("mode", MODES)
def test_partial_without_validator_is_not_resumed(mode: str, origin: Origin,
                                                  conn: HTTPConnection, tmp_path: Path) -> None:
    url = RangeFile(BODY, etag=None, last_modified=None, cuts={0: SIZE // 2}).mount(
        origin, "/nov")
    target = tmp_path / "nov.bin"
    call(mode, conn, "download_file", url, target, connections=1)
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert ranges_asked(origin, "/nov") == [None, None]  # no If-Range possible: restart


def test_cancelled_async_download_is_resumed_later(origin: Origin, tmp_path: Path) -> None:
    stall_at = SIZE // 2
    url = RangeFile(BODY, stalls={0: stall_at}, stall_seconds=2.0).mount(origin, "/cancel")
    target = tmp_path / "c.bin"

    async def cancel_mid_body() -> None:
        conn = HTTPConnection(retry=RetryPolicy.none())
        task = asyncio.create_task(conn.async_download_file(url, target, connections=1))
        while origin.bytes_sent < stall_at:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await conn.aclose()

    asyncio.run(cancel_mid_body())
    assert not target.exists()
    kept = [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert len(kept) == 1 and 0 < kept[0].stat().st_size <= stall_at
    resumed_from = kept[0].stat().st_size
    HTTPConnection(retry=RetryPolicy.none()).download_file(url, target, connections=1,
                                                           expected_sha256=sha256(BODY))
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert ranges_asked(origin, "/cancel")[1] == f"bytes={resumed_from}-"


@pytest.mark.parametrize("mode", MODES)
def test_a_torn_checkpoint_of_a_dead_writer_is_removed_when_its_partial_is_taken_over(
    mode: str, origin: Origin, conn: HTTPConnection, tmp_path: Path
) -> None:
    """A writer killed while it replaced its sidecar leaves ``….part.json.tmp``: whoever takes
    its partial over resumes from the sidecar and removes that torn checkpoint too."""
    url = RangeFile(BODY).mount(origin, "/torn")
    half = SIZE // 2
    partial = _plant_partial(tmp_path, "torn.bin", url, BODY[:half], total=SIZE)
    partial.with_name(partial.name + ".json.tmp").write_text('{"offset": 12')  # torn
    target = tmp_path / "torn.bin"
    call(mode, conn, "download_file", url, target, expected_sha256=sha256(BODY))
    assert sha256(target.read_bytes()) == sha256(BODY)
    assert ranges_asked(origin, "/torn") == [f"bytes={half}-"]
    assert leftovers(tmp_path) == ["torn.bin"]


#: Valid names NAME_MAX (255 bytes) allows: partial and temp names beside them must fit too.
LONG_NAMES = ["a" * 250, "模" * 80]  # 250 bytes; 80 characters of 3 bytes each


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", LONG_NAMES, ids=["ascii250", "cjk240"])
def test_a_long_target_name_downloads_resumes_and_copies_from_the_cache(
        mode: str, name: str, origin: Origin, tmp_path: Path) -> None:
    """A partial's or temp file's name adds up to 73 bytes to the target's: it is clipped in
    bytes (NAME_MAX counts bytes, not characters), so no valid target fails with
    ENAMETOOLONG, or with an untyped OSError, and a cut download still resumes."""
    served = RangeFile(BODY, cuts={0: SIZE // 4})
    url = served.mount(origin, "/long")
    once = HTTPConnection(retry=RetryPolicy.none(), cache=False)
    with pytest.raises(TruncatedBodyError):
        call(mode, once, "download_file", url, tmp_path / name)
    assert len(leftovers(tmp_path)) == 2  # the partial and its sidecar
    call(mode, once, "download_file", url, tmp_path / name, expected_sha256=sha256(BODY))
    assert origin.seen("/long")[1].headers["Range"] == f"bytes={SIZE // 4}-"
    assert sha256((tmp_path / name).read_bytes()) == sha256(BODY)
    cached = HTTPConnection(retry=RetryPolicy.none(), cache=tmp_path / "cache")
    other = name[:-1] + "b"
    for target in (tmp_path / other, tmp_path / "copy" / name):  # fetched, then from the cache
        call(mode, cached, "download_file", url, target, expected_sha256=sha256(BODY))
        assert sha256(target.read_bytes()) == sha256(BODY)
    assert leftovers(tmp_path) == sorted([name, other, "cache", "copy"])
    assert leftovers(tmp_path / "copy") == [name]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bad", ["xyz", "sha256:" + sha256(BODY), sha256(BODY)[:-1],
                                 sha256(BODY) + "0", "g" * 64, " " + sha256(BODY)[1:]],
                         ids=["short", "prefixed", "63", "65", "not-hex", "space"])
def test_a_malformed_expected_sha256_is_a_value_error_before_any_request(
        mode: str, bad: str, origin: Origin, conn: HTTPConnection, tmp_path: Path) -> None:
    """No body can ever match a value that is not a sha256: it is a ValueError up front (as a
    negative expected_size is), not a ChecksumMismatchError after the whole file arrived."""
    url = RangeFile(BODY).mount(origin, "/badsha")
    with pytest.raises(ValueError, match="expected_sha256 must be exactly 64 hex digits"):
        call(mode, conn, "download_file", url, tmp_path / "x.bin", expected_sha256=bad)
    assert origin.count("/badsha") == 0
    assert leftovers(tmp_path) == []
    upper = call(mode, conn, "download_file", url, tmp_path / "x.bin",
                 expected_sha256=sha256(BODY).upper())
    assert sha256(upper.read_bytes()) == sha256(BODY)
    unset = call(mode, conn, "download_file", url, tmp_path / "y.bin", expected_sha256="")
    assert sha256(unset.read_bytes()) == sha256(BODY)  # "": no digest, as None
