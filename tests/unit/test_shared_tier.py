"""The read-only shared tier without a network: which calls ask it and which entries serve
(``core.shared_tier``), and how its index is read (``cache.shared_tier``): read-only, never a
pickle, records in the row or in a file beside the database."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sqlite3
from email.utils import formatdate
from pathlib import Path
from typing import Any

import diskcache
import pytest

from vllm_fetch.cache.fetch_cache import FetchCache
from vllm_fetch.cache.shared_tier import SharedTier
from vllm_fetch.core.cache_policy import CacheEntry, LookupAction, LookupDecision, cache_key
from vllm_fetch.core.shared_tier import asks_shared_tier, shared_hit

NOW = 1_700_000_000.0
URL = "https://example.com/img.png"
BODY = b"the body" * 1000
SHA = hashlib.sha256(BODY).hexdigest()


def entry(cache_control: str = "max-age=3600", age: float = 100, **fields: Any) -> CacheEntry:
    received = NOW - age
    headers = {"Date": formatdate(received, usegmt=True), "ETag": '"v1"',
               "Cache-Control": cache_control, **fields.pop("headers", {})}
    fields.setdefault("sha256", SHA)
    fields.setdefault("size", len(BODY))
    return CacheEntry(url=URL, headers=headers, stored_at=received, request_time=received,
                      response_time=received, **fields)


MISS = LookupDecision(LookupAction.MISS)


@pytest.mark.parametrize(("url", "headers", "local", "offline", "asks"), [
    (URL, {}, MISS, False, True),
    (URL, {"Accept": "image/*"}, LookupDecision(LookupAction.REVALIDATE), False, True),
    (URL, {}, MISS, True, False),  # offline: the local cache alone
    (URL, {"Range": "bytes=0-9"}, LookupDecision(LookupAction.BYPASS), False, False),
    (URL, {"Authorization": "Bearer t"}, MISS, False, False),  # another machine's secret
    (URL, {"cookie": "s=1"}, MISS, False, False),
    (URL, {"X-Api-Key": "k"}, MISS, False, False),
    ("https://user:pw@example.com/img.png", {}, MISS, False, False),
])
def test_which_calls_ask_the_shared_tier(url: str, headers: dict[str, str],
                                         local: LookupDecision, offline: bool,
                                         asks: bool) -> None:
    assert asks_shared_tier(url, headers, local, offline=offline) is asks


def test_a_fresh_shared_entry_serves_with_its_age() -> None:
    decision = shared_hit(entry(age=100), {}, NOW)
    assert decision is not None and decision.action is LookupAction.HIT
    assert 99 <= decision.age <= 101


@pytest.mark.parametrize(("stored", "request_headers"), [
    (None, {}),
    (entry(age=7200), {}),  # stale, though it has validators: the origin is asked
    (entry("max-age=60, stale-while-revalidate=3600", age=120), {}),  # not served stale
    (entry(private=True), {}),
    (entry(), {"Cache-Control": "no-cache"}),
    (entry(), {"Cache-Control": "max-age=10"}),
    (entry(headers={"Vary": "Accept"}, vary={"accept": "image/png"}), {"Accept": "text/html"}),
    (entry(), {"Range": "bytes=0-9"}),
    (entry(sha256="", size=-1), {}),  # a template without a body
])
def test_what_the_shared_tier_does_not_serve(stored: CacheEntry | None,
                                             request_headers: dict[str, str]) -> None:
    assert shared_hit(stored, request_headers, NOW) is None


def listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def filled(root: Path, stored: CacheEntry) -> str:
    cache = FetchCache(root)
    key = cache_key(URL)
    cache.store_bytes(key, stored, BODY, SHA)
    cache.close()
    return key


def test_entries_and_seals_are_read_by_key_and_nothing_is_written(tmp_path: Path) -> None:
    key = filled(tmp_path, entry())
    before = listing(tmp_path)
    tier = SharedTier(tmp_path)
    found = tier.entry(key)
    assert found is not None and (found.sha256, found.size) == (SHA, len(BODY))
    assert found.seal and tier.seal_of(SHA) == found.seal
    assert tier.read(found) == BODY and tier.blob_size(SHA) == len(BODY)
    assert tier.entry(cache_key(URL + "?other")) is None
    assert tier.seal_of("cd" * 32) == ""
    assert listing(tmp_path) == before  # no -wal, -shm or lock file; no touch of the entry


def test_an_entry_kept_in_a_file_beside_the_database_is_read(tmp_path: Path) -> None:
    big = entry(headers={"X-Long": "x" * 40_000})  # past diskcache's 32 KiB: a .val file
    key = filled(tmp_path, big)
    assert any(p.suffix == ".val" for p in (tmp_path / "index").rglob("*"))
    found = SharedTier(tmp_path).entry(key)
    assert found is not None and found.headers["x-long"] == "x" * 40_000


class Planted:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (PLANTED,))


PLANTED = ""


def test_a_pickled_record_is_never_unpickled(tmp_path: Path) -> None:
    global PLANTED
    key = filled(tmp_path, entry())
    PLANTED = str(tmp_path / "planted")
    with sqlite3.connect(tmp_path / "index" / "cache.db") as con:
        changed = con.execute("UPDATE Cache SET mode = ?, value = ? WHERE key = ?",
                              (diskcache.core.MODE_PICKLE, pickle.dumps(Planted()),
                               json.dumps(key).encode())).rowcount
    con.close()
    assert changed == 1
    assert SharedTier(tmp_path).entry(key) is None
    assert not Path(PLANTED).exists()


def test_a_store_without_an_index_is_a_miss_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tier = SharedTier(tmp_path / "blobs-only")
    assert tier.entry(cache_key(URL)) is None and tier.entry(cache_key(URL)) is None
    assert [r.levelname for r in caplog.records].count("WARNING") == 1
    assert not (tmp_path / "blobs-only").exists()


def test_a_store_filled_again_is_read_again(tmp_path: Path) -> None:
    """The read-only connection is kept per thread (immutable: SQLite would not notice a
    change), and opened again once the database file changed."""
    tier = SharedTier(tmp_path)
    filled(tmp_path, entry())
    assert tier.entry(cache_key(URL)) is not None
    other = cache_key(URL + "?v=2")
    assert tier.entry(other) is None
    cache = FetchCache(tmp_path)
    cache.store_bytes(other, entry(), BODY, SHA)
    cache.close()
    assert tier.entry(other) is not None
