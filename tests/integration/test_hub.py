"""vllm_fetch.hub against a fake Hub + CDN on loopback, checked with the real huggingface_hub."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.hub_env import COMMIT1, COMMIT2, LFS, REPO, HubSetup, hubs, repo_files, run_hf
from vllm_fetch import HTTPConnection, hub
from vllm_fetch.errors import ChecksumMismatchError, HTTPStatusError, OfflineError

__all__ = ["hubs"]  # the fixture


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def conn(tmp_path: Path) -> HTTPConnection:
    return HTTPConnection(cache=tmp_path / "vf-cache")


def snap(mode: str, *args: Any, **kwargs: Any) -> Path:
    if mode == "sync":
        return hub.snapshot(*args, **kwargs)
    return asyncio.run(hub.async_snapshot(*args, **kwargs))


def api_calls(setup: HubSetup) -> int:
    return sum(1 for s in setup.hub.requests if s.path.startswith("/api/"))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_snapshot_layout_read_by_real_huggingface_hub(hubs: HubSetup, tmp_path: Path,
                                                      mode: str) -> None:
    files = repo_files()
    hubs.hub.add_commit(REPO, COMMIT1, files, lfs=LFS)
    path = snap(mode, REPO, http=conn(tmp_path), connections=2, progress=False)

    root = hubs.cache / "models--acme--tiny"
    assert path == root / "snapshots" / COMMIT1
    assert (root / "refs" / "main").read_text() == COMMIT1
    for name, data in files.items():
        link = path / name
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert os.readlink(link).startswith("../")
        assert link.read_bytes() == data
    lfs_name = "model-00001-of-00002.safetensors"
    assert (path / lfs_name).resolve() == root / "blobs" / sha(files[lfs_name])
    # the real huggingface_hub, offline two ways, finds every file with the right bytes
    for env, local in (({}, True), ({"HF_HUB_OFFLINE": "1"}, False)):
        seen = len(hubs.hub.requests)
        got = run_hf(hubs, {"op": "files", "repo": REPO, "files": sorted(files),
                            "local": local}, **env)
        assert got == {name: sha(data) for name, data in files.items()}
        snap_path = run_hf(hubs, {"op": "snapshot", "repo": REPO, "local": local}, **env)
        assert Path(snap_path["path"]) == path
        assert len(hubs.hub.requests) == seen


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_revision_answer_labelled_text_plain_is_read_alike_on_both_sides(
        hubs: HubSetup, tmp_path: Path, mode: str) -> None:
    """The Hub's JSON is parsed by the hub client, not by aiohttp's strict ``json()``: a
    mirror that labels it ``text/plain`` works on both sides."""
    files = repo_files()
    hubs.hub.add_commit(REPO, COMMIT1, files, lfs=LFS)
    hubs.hub.api_content_type = "text/plain"
    path = snap(mode, REPO, http=conn(tmp_path), progress=False)
    for name, data in files.items():
        assert (path / name).read_bytes() == data


def test_completed_snapshot_costs_one_metadata_request_none_by_commit_or_offline(
        hubs: HubSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hubs.hub.add_commit(REPO, COMMIT1, repo_files(), lfs=LFS)
    http = conn(tmp_path)
    first = hub.snapshot(REPO, http=http, progress=False)
    hub_before, cdn_before = len(hubs.hub.requests), len(hubs.cdn.requests)
    assert hub.snapshot(REPO, http=http, progress=False) == first
    assert len(hubs.hub.requests) == hub_before + 1 and api_calls(hubs) == 2
    assert len(hubs.cdn.requests) == cdn_before
    assert hub.snapshot(REPO, revision=COMMIT1, http=http, progress=False) == first
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.snapshot(REPO, http=http, progress=False) == first
    assert len(hubs.hub.requests) == hub_before + 1


def test_snapshot_downloaded_by_huggingface_hub_is_recognised(hubs: HubSetup,
                                                              tmp_path: Path) -> None:
    files = repo_files()
    hubs.hub.add_commit(REPO, COMMIT1, files, lfs=LFS)
    got = run_hf(hubs, {"op": "snapshot", "repo": REPO})
    hub_before, cdn_before = len(hubs.hub.requests), len(hubs.cdn.requests)
    assert hubs.cdn.requests  # huggingface_hub did fetch the LFS files from the CDN
    path = hub.snapshot(REPO, http=conn(tmp_path), progress=False)
    assert path == Path(got["path"])
    assert len(hubs.hub.requests) == hub_before + 1  # the revision, no file
    assert len(hubs.cdn.requests) == cdn_before


def test_offline_without_a_cached_revision_is_a_typed_error(
        hubs: HubSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError):
        hub.snapshot(REPO, http=conn(tmp_path), progress=False)
    assert hubs.hub.requests == [] and not hubs.cache.exists()


@pytest.mark.parametrize("how", ["env", "file", "argument"])
def test_token_goes_to_the_hub_never_to_the_cdn(hubs: HubSetup, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                how: str) -> None:
    hubs.hub.add_commit(REPO, COMMIT1, repo_files(), lfs=LFS, token="hf_secret")
    token: str | None = None
    if how == "env":
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
    elif how == "file":
        hubs.home.mkdir(parents=True, exist_ok=True)
        (hubs.home / "token").write_text("hf_secret\n")
    else:
        token = "hf_secret"
    path = hub.snapshot(REPO, token=token, http=conn(tmp_path), connections=2, progress=False)
    assert (path / "config.json").read_bytes() == repo_files()["config.json"]
    assert all(s.headers.get("Authorization") == "Bearer hf_secret" for s in hubs.hub.requests)
    assert hubs.cdn.requests and hubs.cdn.bad_signatures == 0
    assert not any("Authorization" in s.headers for s in hubs.cdn.requests)


def test_private_repo_without_token_fails_and_writes_nothing(hubs: HubSetup,
                                                             tmp_path: Path) -> None:
    hubs.hub.add_commit(REPO, COMMIT1, repo_files(), lfs=LFS, token="hf_secret")
    with pytest.raises(HTTPStatusError) as info:
        hub.snapshot(REPO, http=conn(tmp_path), progress=False)
    assert info.value.status == 401
    assert not hubs.cache.exists()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_git_file_with_wrong_blob_id_is_never_published(hubs: HubSetup, tmp_path: Path,
                                                        mode: str) -> None:
    hubs.hub.add_commit(REPO, COMMIT1, repo_files(), lfs=LFS)
    hubs.hub.corrupt.add("config.json")
    with pytest.raises(ChecksumMismatchError):
        snap(mode, REPO, http=conn(tmp_path), progress=False)
    root = hubs.cache / "models--acme--tiny"
    assert not (root / "snapshots" / COMMIT1 / "config.json").exists()
    blob_names = [p.name for p in (root / "blobs").iterdir()]
    assert not any(n.startswith(".") and "config" in n for n in blob_names)
    assert all(len(n) in (40, 64) for n in blob_names if not n.startswith("."))


def test_lfs_file_with_wrong_sha256_is_never_published(hubs: HubSetup, tmp_path: Path) -> None:
    files = repo_files()
    hubs.hub.add_commit(REPO, COMMIT1, files, lfs=LFS)
    name = "model-00002-of-00002.safetensors"
    blob = hubs.cdn.blobs[sha(files[name])]
    blob.data = b"\x08" + blob.data[1:]
    with pytest.raises(ChecksumMismatchError):
        hub.snapshot(REPO, http=conn(tmp_path), progress=False)
    root = hubs.cache / "models--acme--tiny"
    assert not (root / "blobs" / sha(files[name])).exists()
    assert not (root / "snapshots" / COMMIT1 / name).exists()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_patterns_and_revisions(hubs: HubSetup, tmp_path: Path, mode: str) -> None:
    hubs.hub.add_commit(REPO, COMMIT1, repo_files(1), lfs=LFS, refs=("v1.0",))
    hubs.hub.add_commit(REPO, COMMIT2, repo_files(2), lfs=LFS, refs=("main", "dev"))
    http = conn(tmp_path)
    path = snap(mode, REPO, revision="v1.0", allow_patterns=["*.json", "sub/"],
                ignore_patterns="config.*", http=http, progress=False)
    assert path.name == COMMIT1
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_symlink()) == [
        "sub/tokenizer.json"]
    assert not hubs.cdn.requests
    dev = snap(mode, REPO, revision="dev", allow_patterns="*.json", http=http, progress=False)
    assert dev.name == COMMIT2 and (dev / "config.json").read_bytes() == repo_files(2)[
        "config.json"]
    by_commit = snap(mode, REPO, revision=COMMIT1, http=http, progress=False)
    assert (by_commit / "config.json").read_bytes() == repo_files(1)["config.json"]
    refs = hubs.cache / "models--acme--tiny" / "refs"
    assert {p.name: p.read_text() for p in refs.iterdir()} == {"v1.0": COMMIT1, "dev": COMMIT2}


def test_local_dir_gets_plain_files(hubs: HubSetup, tmp_path: Path) -> None:
    files = repo_files()
    hubs.hub.add_commit(REPO, COMMIT1, files, lfs=LFS)
    target = tmp_path / "model"
    http = conn(tmp_path)
    assert hub.snapshot(REPO, local_dir=target, http=http, progress=False) == target
    for name, data in files.items():
        assert not (target / name).is_symlink() and (target / name).read_bytes() == data
    meta = (target / ".cache/huggingface/download/config.json.metadata").read_text()
    assert meta.splitlines()[0] == COMMIT1
    before = len(hubs.cdn.requests)
    hub.snapshot(REPO, local_dir=target, http=http, progress=False)
    assert len(hubs.cdn.requests) == before


def test_file_and_missing_file(hubs: HubSetup, tmp_path: Path) -> None:
    files = repo_files()
    hubs.hub.add_commit(REPO, COMMIT1, files, lfs=LFS)
    http = conn(tmp_path)
    got = hub.file(REPO, "sub/tokenizer.json", http=http, progress=False)
    assert got.read_bytes() == files["sub/tokenizer.json"] and got.is_symlink()
    with pytest.raises(hub.HubEntryNotFoundError):
        hub.file(REPO, "nope.bin", http=http, progress=False)
    assert (hubs.cache / "models--acme--tiny" / ".no_exist" / COMMIT1 / "nope.bin").is_file()
    assert asyncio.run(hub.async_file(REPO, "config.json", revision=COMMIT1, http=http,
                                      progress=False)).read_bytes() == files["config.json"]


@pytest.mark.parametrize("bad", ["../etc", "/abs", "a/b/c", "a/..", ""])
def test_bad_repo_ids_are_refused_before_any_request(hubs: HubSetup, tmp_path: Path,
                                                     bad: str) -> None:
    with pytest.raises(hub.HubNameError):
        hub.snapshot(bad, http=conn(tmp_path), progress=False)
    with pytest.raises(ValueError):
        hub.snapshot(REPO, revision="../../x", http=conn(tmp_path), progress=False)
    assert hubs.hub.requests == []


@pytest.mark.parametrize("path", ["../escape.txt", "/etc/passwd", "a/../../b", "a//b"])
def test_hub_paths_that_escape_are_refused_before_anything_is_written(
        hubs: HubSetup, tmp_path: Path, path: str) -> None:
    hubs.hub.add_commit(REPO, COMMIT1, {path: b"x", "ok.txt": b"fine"})
    with pytest.raises(hub.HubNameError):
        hub.snapshot(REPO, http=conn(tmp_path), progress=False)
    assert not hubs.cache.exists()
    assert not (tmp_path / "escape.txt").exists()


def test_planted_symlink_in_a_snapshot_is_not_followed(hubs: HubSetup, tmp_path: Path) -> None:
    hubs.hub.add_commit(REPO, COMMIT1, {"sub/tokenizer.json": b"{}"})
    outside = tmp_path / "outside"
    outside.mkdir()
    snapdir = hubs.cache / "models--acme--tiny" / "snapshots" / COMMIT1
    snapdir.mkdir(parents=True)
    (snapdir / "sub").symlink_to(outside)
    with pytest.raises(hub.HubNameError):
        hub.snapshot(REPO, http=conn(tmp_path), progress=False)
    assert list(outside.iterdir()) == []


def test_parse_hf_url() -> None:
    assert hub.parse_hf_url("hf://acme/tiny") == hub.HubURL("acme/tiny")
    assert hub.parse_hf_url("hf://acme/tiny@v1.0/sub/a.json") == hub.HubURL(
        "acme/tiny", "v1.0", "sub/a.json")
    assert hub.parse_hf_url("hf://datasets/acme/d@refs%2Fpr%2F1") == hub.HubURL(
        "acme/d", "refs/pr/1", None, "dataset")
    assert hub.parse_hf_url("hf://gpt2@main/config.json") == hub.HubURL(
        "gpt2", "main", "config.json")
    for bad in ("hf://acme/tiny/../x", "hf://../x", "https://acme/tiny", "hf://a/b@.."):
        with pytest.raises(ValueError):
            hub.parse_hf_url(bad)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_same_content_at_two_paths_is_one_transfer_and_one_blob(hubs: HubSetup, tmp_path: Path,
                                                                mode: str) -> None:
    data = b'{"same": true}'
    hubs.hub.add_commit(REPO, COMMIT1, {"a/config.json": data, "b/config.json": data})
    path = snap(mode, REPO, http=conn(tmp_path), progress=False)
    assert (path / "a/config.json").read_bytes() == data == (path / "b/config.json").read_bytes()
    assert (path / "a/config.json").resolve() == (path / "b/config.json").resolve()
    gets = [s for s in hubs.hub.requests if "/resolve/" in s.path]
    assert len(gets) == 1


def test_offline_snapshot_without_a_tree_listing_is_returned_as_huggingface_hub_does(
        hubs: HubSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hubs.hub.add_commit(REPO, COMMIT1, repo_files(), lfs=LFS)
    path = hub.snapshot(REPO, http=conn(tmp_path), progress=False)
    (hubs.cache / "models--acme--tiny" / "trees" / f"{COMMIT1}.json").unlink()
    (path / "README.md").unlink()
    seen = len(hubs.hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.snapshot(REPO, http=conn(tmp_path), progress=False) == path
    assert Path(run_hf(hubs, {"op": "snapshot", "repo": REPO, "local": True},
                       HF_HUB_OFFLINE="1")["path"]) == path
    with pytest.raises(OfflineError):
        hub.snapshot(REPO, revision="v9", http=conn(tmp_path), progress=False)
    assert len(hubs.hub.requests) == seen


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_one_progress_in_bytes_for_the_whole_snapshot(hubs: HubSetup, tmp_path: Path,
                                                      mode: str) -> None:
    files = repo_files()
    hubs.hub.add_commit(REPO, COMMIT1, files, lfs=LFS)
    calls: list[tuple[int, int | None]] = []
    snap(mode, REPO, http=conn(tmp_path), connections=2, max_workers=3,
         progress=lambda done, total: calls.append((done, total)))
    total = sum(map(len, files.values()))
    assert calls and all(t == total for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == total



def test_a_mirror_of_the_hub_gets_no_token_unless_configured(
        hubs: HubSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fake_hub import FakeHub

    files = repo_files()
    hubs.hub.add_commit(REPO, COMMIT1, files, lfs=LFS)
    mirror = FakeHub(hubs.cdn).start()
    try:
        mirror.repos = hubs.hub.repos
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        http = HTTPConnection(cache=tmp_path / "vf", mirrors={hubs.hub.url("/"): mirror.url("/")})
        path = hub.snapshot(REPO, http=http, progress=False)
        assert all((path / n).read_bytes() == d for n, d in files.items())
        assert mirror.requests and hubs.hub.requests == []
        assert not any("Authorization" in s.headers for s in mirror.requests + hubs.cdn.requests)
    finally:
        mirror.stop()


def _blocks(root: Path, seen: set[tuple[int, int]]) -> int:
    """Bytes on disk under ``root``, an inode linked twice counted once."""
    total = 0
    for path in root.rglob("*"):
        st = path.lstat()
        if path.is_symlink() or (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
    return total


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_snapshot_blobs_share_storage_with_the_cache(hubs: HubSetup, tmp_path: Path,
                                                     mode: str) -> None:
    files = repo_files()
    hubs.hub.add_commit(REPO, COMMIT1, files, lfs=LFS)
    http = conn(tmp_path)
    snap(mode, REPO, http=http, progress=False)
    assert http.cache is not None
    http.cache.flush()
    blobs = hubs.cache / "models--acme--tiny" / "blobs"
    lfs_name = "model-00001-of-00002.safetensors"
    assert (blobs / sha(files[lfs_name])).stat().st_nlink == 2  # the Hub's blob is the cache's
    seen: set[tuple[int, int]] = set()
    used = _blocks(hubs.cache, seen) + _blocks(tmp_path / "vf-cache", seen)
    body_bytes = sum(len(data) for data in files.values())
    # no second copy: the index (with its segment table), the 8 KiB generation file, seal
    # sidecars and the Hub's small files aside -- a second copy of either weight file (196 or
    # 300 KB) would still exceed this
    assert used <= 1.05 * body_bytes + 320 * 1024
    # and a later download of the same bytes elsewhere is served from the cache, no transfer
    cdn_before = len(hubs.cdn.requests)
    out = tmp_path / "elsewhere.safetensors"
    http.download_file("http://127.0.0.1:9/never", out, expected_sha256=sha(files[lfs_name]))
    assert out.read_bytes() == files[lfs_name] and len(hubs.cdn.requests) == cdn_before
