"""A fake Hugging Face Hub on 127.0.0.1 speaking the endpoints huggingface_hub uses, and a
second loopback origin as its LFS "CDN" with signed query strings.

Hub: ``GET /api/{type}s/{repo}/revision/{rev}[?blobs=true]`` (model info: ``sha``,
``siblings``), ``GET /api/{type}s/{repo}/tree/{rev}`` (recursive listing), ``HEAD``/``GET
/{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` (git blob id) and, for LFS
files, a 302 to the CDN with ``X-Linked-Etag`` (sha256) and ``X-Linked-Size``. A private repo
answers 401 without ``Authorization: Bearer <token>``. The CDN checks its signature and serves
ranges (``tests.ranged.RangeFile``, optionally rate limited per connection).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from aiohttp import web

from tests.origin import Origin, Seen
from tests.ranged import RangeFile

_SECRET = b"cdn-signing-key"


_DIGESTS: dict[bytes, str] = {}  # big bodies are hashed once (bytes cache their hash)


def sha256_of(data: bytes) -> str:
    digest = _DIGESTS.get(data)
    if digest is None:
        digest = _DIGESTS[data] = hashlib.sha256(data).hexdigest()
    return digest


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:"
            f"{sha256_of(data)}\nsize {len(data)}\n").encode()


@dataclass
class Commit:
    files: dict[str, bytes]
    lfs: set[str] = field(default_factory=set)


@dataclass
class HubRepo:
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    token: str | None = None  # private: this bearer token is required

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


class CDN(Origin):
    """Signed LFS URLs (``?expires=&sig=``), ranges, a per-connection rate cap."""

    def __init__(self, *, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.blobs: dict[str, RangeFile] = {}
        self.bad_signatures = 0

    def add(self, data: bytes) -> str:
        sha = sha256_of(data)
        if sha not in self.blobs:
            self.blobs[sha] = RangeFile(data, etag=f'"{sha}"', delay=self.delay)
            self.blobs[sha].origin = self
        return sha

    def signed(self, sha: str) -> str:
        expires = str(int(time.time()) + 3600)
        sig = hmac.new(_SECRET, f"{sha}:{expires}".encode(), "sha256").hexdigest()
        return self.url(f"/lfs/{sha}?expires={expires}&sig={sig}")

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Seen(request.method, request.path, request.raw_path,
                                  dict(request.headers)))
        sha = request.path.rsplit("/", 1)[-1]
        expires, sig = request.query.get("expires", ""), request.query.get("sig", "")
        good = hmac.new(_SECRET, f"{sha}:{expires}".encode(), "sha256").hexdigest()
        if not hmac.compare_digest(good, sig):
            self.bad_signatures += 1
            return web.Response(status=403, text="bad signature")
        blob = self.blobs.get(sha)
        if blob is None:
            return web.Response(status=404)
        return await blob.handle(request)


_API = re.compile(r"^/api/(models|datasets|spaces)/(.+?)/(revision|tree)/([^/]+)$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?(.+?)/resolve/([^/]+)/(.+)$")


class FakeHub(Origin):
    """The Hub API and ``resolve`` endpoint; LFS bodies live on :attr:`cdn`."""

    def __init__(self, cdn: CDN) -> None:
        super().__init__()
        self.cdn = cdn
        self.repos: dict[str, HubRepo] = {}
        self.corrupt: set[str] = set()  # paths served with one flipped byte
        self.api_content_type = "application/json"  # a mirror may say text/plain

    # -- content ----------------------------------------------------------------------------
    def add_commit(self, repo_id: str, commit: str, files: dict[str, bytes], *,
                   lfs: set[str] | None = None, refs: tuple[str, ...] = ("main",),
                   token: str | None = None) -> str:
        repo = self.repos.setdefault(repo_id, HubRepo())
        repo.token = token or repo.token
        repo.commits[commit] = Commit(dict(files), set(lfs or ()))
        for name in lfs or ():
            self.cdn.add(files[name])
        for ref in refs:
            repo.refs[ref] = commit
        return commit

    @staticmethod
    def _entry(path: str, data: bytes, is_lfs: bool) -> dict[str, object]:
        if is_lfs:
            pointer = lfs_pointer(data)
            return {"path": path, "size": len(data), "blob_id": git_blob_id(pointer),
                    "lfs": {"sha256": sha256_of(data), "size": len(data),
                            "pointerSize": len(pointer)}}
        return {"path": path, "size": len(data), "blob_id": git_blob_id(data), "lfs": None}

    # -- serving ----------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Seen(request.method, request.path, request.raw_path,
                                  dict(request.headers)))
        raw = request.raw_path.split("?", 1)[0]
        if m := _API.match(raw):
            return self._api(request, m.group(2), m.group(3), unquote(m.group(4)))
        if m := _RESOLVE.match(raw):
            return self._resolve(request, m.group(2), unquote(m.group(3)), unquote(m.group(4)))
        return web.Response(status=404, text="not found")

    def _repo(self, request: web.Request, repo_id: str) -> HubRepo | web.Response:
        repo = self.repos.get(repo_id)
        if repo is None:
            return web.Response(status=404, headers={"X-Error-Code": "RepoNotFound"})
        if repo.token and request.headers.get("Authorization") != f"Bearer {repo.token}":
            return web.Response(status=401, headers={"X-Error-Code": "RepoNotFound"})
        return repo

    def _api(self, request: web.Request, repo_id: str, kind: str, revision: str
             ) -> web.Response:
        repo = self._repo(request, repo_id)
        if isinstance(repo, web.Response):
            return repo
        commit = repo.resolve(revision)
        if commit is None:
            return web.Response(status=404, headers={"X-Error-Code": "RevisionNotFound"})
        files = repo.commits[commit]
        entries = [self._entry(p, d, p in files.lfs) for p, d in sorted(files.files.items())]
        if kind == "tree":
            body: object = [
                {"type": "file", "oid": e["blob_id"], "size": e["size"], "path": e["path"],
                 **({"lfs": {"oid": e["lfs"]["sha256"], "size": e["lfs"]["size"],  # type: ignore[index]
                             "pointerSize": e["lfs"]["pointerSize"]}}  # type: ignore[index]
                    if e["lfs"] else {})}
                for e in entries]
        else:
            blobs = request.query.get("blobs") in ("true", "True", "1")
            siblings = []
            for e in entries:
                item: dict[str, object] = {"rfilename": e["path"]}
                if blobs:
                    item.update(size=e["size"], blobId=e["blob_id"])
                    if e["lfs"]:
                        item["lfs"] = e["lfs"]
                siblings.append(item)
            body = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": bool(repo.token),
                    "siblings": siblings}
        return web.Response(text=json.dumps(body), content_type=self.api_content_type)

    def _resolve(self, request: web.Request, repo_id: str, revision: str, path: str
                 ) -> web.Response:
        repo = self._repo(request, repo_id)
        if isinstance(repo, web.Response):
            return repo
        commit = repo.resolve(revision)
        if commit is None:
            return web.Response(status=404, headers={"X-Error-Code": "RevisionNotFound"})
        files = repo.commits[commit]
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if path not in files.files:
            return web.Response(status=404, headers={**headers, "X-Error-Code": "EntryNotFound"})
        data = files.files[path]
        if path in files.lfs:
            sha = sha256_of(data)
            headers.update({"Location": self.cdn.signed(sha), "X-Linked-Etag": f'"{sha}"',
                            "X-Linked-Size": str(len(data)),
                            "ETag": f'"{git_blob_id(lfs_pointer(data))}"'})
            return web.Response(status=302, headers=headers)
        if path in self.corrupt:
            data = bytes([data[0] ^ 1]) + data[1:]
        headers["ETag"] = f'"{git_blob_id(files.files[path])}"'
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return web.Response(status=200, headers=headers)
        self.count_sent(len(data))
        return web.Response(body=data, headers=headers)


def resolve_path(repo_id: str, revision: str, path: str) -> str:
    return f"/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"
