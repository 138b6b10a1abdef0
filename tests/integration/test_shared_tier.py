"""VLLM_FETCH_SHARED_CACHE: a read-only cache another machine filled, looked up by the cache key
(or by sha256), fresh by its stored headers, verified by seal before use, recorded locally,
never written (a real loopback origin; the store filled by a real subprocess)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import call
from tests.origin import Origin, sha256
from vllm_fetch import HTTPConnection, OfflineError, RetryPolicy
from vllm_fetch.core.segment_record import HEADER_SIZE

ROOT = Path(__file__).resolve().parents[2]
MODES = ["sync", "async"]
IMAGE = os.urandom(300_000)
WEIGHTS = os.urandom(3_000_000)
FRESH = {"Cache-Control": "max-age=3600", "ETag": '"v1"'}
STALE = {"Cache-Control": "max-age=0", "ETag": '"v1"'}

#: One node filling its cache: get_bytes for each body URL, download_file for each file URL.
FILL = """
import json, sys
from vllm_fetch import HTTPConnection
plan = json.loads(sys.argv[1])
conn = HTTPConnection(cache=plan["cache"])
for url in plan["bodies"]:
    conn.get_bytes(url)
for url, path in plan["files"]:
    conn.download_file(url, path)
"""

#: A second node: check that it may not write the store, answer both calls, print what it saw.
USE = """
import hashlib, json, sys
from pathlib import Path
from vllm_fetch import HTTPConnection
plan = json.loads(sys.argv[1])
try:
    (Path(plan["shared"]) / "index" / "probe").touch()
except PermissionError:
    pass
else:
    sys.exit("the shared store is writable: this test would prove nothing")
conn = HTTPConnection(cache=plan["cache"])
body = conn.fetch_bytes(plan["body"])
result = conn.fetch_file(plan["file"], plan["target"])
print(json.dumps([body.source, hashlib.sha256(body.content).hexdigest(), result.source,
                  hashlib.sha256(open(plan["target"], "rb").read()).hexdigest()]))
"""


def fill(cache: Path, bodies: list[str], files: list[tuple[str, Path]]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VLLM_FETCH_SHARED_CACHE"}
    plan = {"cache": str(cache), "bodies": bodies, "files": [(u, str(p)) for u, p in files]}
    subprocess.run([sys.executable, "-c", FILL, json.dumps(plan)], cwd=ROOT, env=env,
                   check=True, timeout=120)


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under ``root``: its mode, size, mtime and content digest."""
    seen = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = sha256(p.read_bytes()) if p.is_file() else ""
        seen[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return seen


def held_at(root: Path, data: bytes) -> tuple[Path, int]:
    """The file of ``root``'s cache holding ``data`` and the offset of its first byte there:
    its blob file, or its record in a segment file (found read-only in the index)."""
    path = blob(root, data)
    if path.exists():
        return path, 0
    uri = (root / "index" / "cache.db").as_uri() + "?mode=ro&immutable=1"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as con:
        row = con.execute("SELECT segment, offset FROM Segments WHERE sha256 = ?",
                          (sha256(data),)).fetchone()
    assert row is not None, "the store holds no such body"
    return root / "blobs" / "segments" / row[0], row[1] + HEADER_SIZE


def blob(root: Path, data: bytes) -> Path:
    digest = sha256(data)
    return root / "blobs" / digest[:2] / digest[2:]


class Store:
    """A shared store filled by one node: fresh and stale bodies and files."""

    def __init__(self, origin: Origin, root: Path) -> None:
        self.origin, self.root = origin, root / "shared"
        self.image = origin.serve_bytes("/img.png", IMAGE, headers=FRESH)
        self.weights = origin.serve_bytes("/w.bin", WEIGHTS, headers=FRESH)
        self.stale_image = origin.serve_bytes("/stale.png", IMAGE[::-1], headers=STALE)
        self.stale_weights = origin.serve_bytes("/stale.bin", WEIGHTS[::-1], headers=STALE)
        fill(self.root, [self.image, self.stale_image],
             [(self.weights, root / "filler-w.bin"), (self.stale_weights, root / "filler-s.bin")])
        assert self.counts() == [1, 1, 1, 1]

    def node(self, monkeypatch: pytest.MonkeyPatch, local: Path) -> HTTPConnection:
        """Another machine's connection, with this store as its shared tier."""
        monkeypatch.setenv("VLLM_FETCH_SHARED_CACHE", str(self.root))
        return HTTPConnection(cache=local, retry=RetryPolicy.none())

    def counts(self) -> list[int]:
        return [self.origin.count(p) for p in ("/img.png", "/w.bin", "/stale.png", "/stale.bin")]


@pytest.fixture
def store(origin: Origin, tmp_path: Path) -> Store:
    return Store(origin, tmp_path)


@pytest.mark.parametrize("mode", MODES)
def test_a_fresh_shared_entry_answers_by_url_with_no_request_and_is_then_local(
    mode: str, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(store.root)
    local = tmp_path / "local"
    node = store.node(monkeypatch, local)
    body = call(mode, node, "fetch_bytes", store.image)
    assert (sha256(body.content), body.source, body.from_cache) == (sha256(IMAGE), "cache", True)
    assert body.headers["ETag"] == '"v1"' and "Age" in body.headers
    assert call(mode, node, "get_bytes", store.image) == IMAGE
    target = call(mode, node, "download_file", store.weights, tmp_path / "w.bin")
    assert sha256(Path(target).read_bytes()) == sha256(WEIGHTS)
    result = call(mode, node, "fetch_file", store.weights, tmp_path / "w2.bin")
    assert (result.source, result.sha256) == ("cache", sha256(WEIGHTS))
    assert store.counts() == [1, 1, 1, 1]  # the origin saw only the filler
    assert snapshot(store.root) == before
    assert node.cache is not None
    node.cache.flush()

    # recorded in the local cache: a node without the tier is answered from it
    monkeypatch.delenv("VLLM_FETCH_SHARED_CACHE")
    shutil.rmtree(store.root)
    alone = HTTPConnection(cache=local, retry=RetryPolicy.none())
    assert call(mode, alone, "get_bytes", store.image) == IMAGE
    again = call(mode, alone, "fetch_file", store.weights, tmp_path / "w3.bin")
    assert (again.source, again.sha256) == ("cache", sha256(WEIGHTS))
    assert store.counts() == [1, 1, 1, 1]


@pytest.mark.parametrize("mode", MODES)
def test_a_stale_shared_entry_is_not_served_the_origin_answers(
    mode: str, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(store.root)
    node = store.node(monkeypatch, tmp_path / "local")
    body = call(mode, node, "fetch_bytes", store.stale_image)
    assert (body.content, body.source) == (IMAGE[::-1], "origin")
    result = call(mode, node, "fetch_file", store.stale_weights, tmp_path / "s.bin")
    assert (result.source, result.sha256) == ("origin", sha256(WEIGHTS[::-1]))
    assert store.counts() == [1, 1, 2, 2]
    assert snapshot(store.root) == before


@pytest.mark.parametrize("mode", MODES)
def test_a_damaged_shared_blob_is_never_served_and_never_repaired(
    mode: str, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for data in (IMAGE, WEIGHTS):  # one byte flipped, same size, wherever the body is held
        path, offset = held_at(store.root, data)
        permissions = path.stat().st_mode
        path.chmod(0o644)
        with open(path, "r+b") as f:
            f.seek(offset + len(data) // 2)
            byte = f.read(1)
            f.seek(offset + len(data) // 2)
            f.write(bytes([byte[0] ^ 0x10]))
        path.chmod(permissions & 0o777)
    before = snapshot(store.root)
    node = store.node(monkeypatch, tmp_path / "local")
    with caplog.at_level(logging.WARNING, logger="vllm_fetch"):
        body = call(mode, node, "fetch_bytes", store.image)
        assert (sha256(body.content), body.source) == (sha256(IMAGE), "origin")
        assert sum("shared cache tier" in r.getMessage() for r in caplog.records) == 1
        result = call(mode, node, "fetch_file", store.weights, tmp_path / "w.bin")
        told = [r.getMessage() for r in caplog.records if "shared cache tier" in r.getMessage()]
        assert len(told) == 2, told  # one per damaged body, though a download looks twice
    assert (result.source, result.sha256) == ("origin", sha256(WEIGHTS))
    assert (tmp_path / "w.bin").read_bytes() == WEIGHTS
    assert store.counts() == [2, 2, 1, 1]
    assert snapshot(store.root) == before  # still damaged: reported, not removed or repaired


@pytest.mark.parametrize("mode", MODES)
def test_a_blob_from_the_shared_tier_is_used_by_sha256_from_any_url(
    mode: str, origin: Origin, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = snapshot(store.root)
    url = origin.serve_bytes("/other/name.bin", b"never served")
    node = store.node(monkeypatch, tmp_path / "local")
    with caplog.at_level(logging.INFO, logger="vllm_fetch"):
        result = call(mode, node, "fetch_file", url, tmp_path / "out.bin",
                      expected_sha256=sha256(WEIGHTS))
    assert any("from the shared cache tier" in r.getMessage() for r in caplog.records)
    assert (result.source, result.from_cache, result.sha256) == ("cache", True, sha256(WEIGHTS))
    assert (tmp_path / "out.bin").read_bytes() == WEIGHTS
    assert origin.count("/other/name.bin") == 0
    assert snapshot(store.root) == before


def test_credentials_offline_and_a_cache_that_is_off_never_ask_the_shared_tier(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(store.root)
    node = store.node(monkeypatch, tmp_path / "local")
    body = node.fetch_bytes(store.image, extra_headers={"Authorization": "Bearer t"})
    assert body.source == "origin"  # keyed by another machine's secret: never shared
    with pytest.raises(OfflineError):
        HTTPConnection(cache=tmp_path / "other", offline=True).get_bytes(store.image)
    assert HTTPConnection(cache=False).fetch_bytes(store.image).source == "origin"
    assert store.counts() == [3, 1, 1, 1]
    assert snapshot(store.root) == before


#: prctl(2) PR_CAPBSET_DROP, and the capabilities that let root write whatever the modes say:
#: CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER.
_PR_CAPBSET_DROP = 24
_OVERRIDES = (1, 2, 3)
_LIBC = ctypes.CDLL(None, use_errno=True)


def _obey_file_modes() -> None:
    """In the child before exec: root then obeys file modes like any other user (a non-root
    user always does). The libc is loaded before the fork: nothing here takes a lock."""
    if os.geteuid() == 0:
        for cap in _OVERRIDES:
            if _LIBC.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                os._exit(97)


def test_a_shared_store_no_one_may_write_serves_a_node(origin: Origin, tmp_path: Path) -> None:
    """The store's files and directories allow no write, and the node may not override that
    (it checks: creating a file there fails): nothing needs to be made there, not even
    SQLite's -wal/-shm files."""
    image = origin.serve_bytes("/img.png", IMAGE, headers=FRESH)
    weights = origin.serve_bytes("/w.bin", WEIGHTS, headers=FRESH)
    shared, node_dir = tmp_path / "shared", tmp_path / "node"
    fill(shared, [image], [(weights, tmp_path / "filler-w.bin")])
    for p in [shared, *shared.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else stat.S_IMODE(p.stat().st_mode) & 0o444)
    before = snapshot(shared)
    plan = {"cache": str(node_dir / "cache"), "body": image, "file": weights,
            "target": str(node_dir / "w.bin"), "shared": str(shared)}
    env = {**os.environ, "VLLM_FETCH_SHARED_CACHE": str(shared)}
    try:
        done = subprocess.run([sys.executable, "-c", USE, json.dumps(plan)], cwd=ROOT, env=env,
                              preexec_fn=_obey_file_modes, capture_output=True, text=True,
                              timeout=120)
        after = snapshot(shared)
    finally:
        for p in [shared, *shared.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)  # so that tmp_path can be removed
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["cache", sha256(IMAGE), "cache", sha256(WEIGHTS)]
    assert "readonly" not in done.stderr and "cannot be read" not in done.stderr
    assert (origin.count("/img.png"), origin.count("/w.bin")) == (1, 1)
    assert after == before
