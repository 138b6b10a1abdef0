"""What a snapshot needs (pure): the Hub's file list, patterns, the tree listing
huggingface_hub caches per commit, and git blob ids."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from .names import COMMIT, HubNameError, check_repo_path

TREE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RepoEntry:
    """One file of a commit: its size and how it is verified and named in ``blobs/``."""

    path: str
    size: int
    blob_id: str
    sha256: str | None = None  # LFS files only

    @property
    def etag(self) -> str:
        """The blob name huggingface_hub uses: the LFS sha256, else the git blob id."""
        return self.sha256 or self.blob_id


def _hexdigest(value: object, length: int) -> str:
    if not isinstance(value, str) or len(value) != length or any(
            c not in "0123456789abcdef" for c in value):
        raise HubNameError("the Hub sent a malformed hash")
    return value


def parse_revision_info(info: Mapping[str, Any]) -> tuple[str, list[RepoEntry]]:
    """The commit and files of ``/api/{type}s/{repo}/revision/{rev}?blobs=true``."""
    commit = info.get("sha")
    if not isinstance(commit, str) or not COMMIT.match(commit):
        raise HubNameError("the Hub sent no valid commit hash")
    entries = []
    for sibling in info.get("siblings") or []:
        lfs = sibling.get("lfs") or None
        size = lfs.get("size") if lfs else sibling.get("size")
        if not isinstance(size, int) or size < 0:
            raise HubNameError("the Hub sent a file without a valid size")
        entries.append(RepoEntry(
            path=check_repo_path(str(sibling.get("rfilename", ""))),
            size=size,
            blob_id=_hexdigest(sibling.get("blobId"), 40),
            sha256=_hexdigest(lfs.get("sha256"), 64) if lfs else None,
        ))
    return commit, entries


def _patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    return [p + "*" if p.endswith("/") else p for p in (p.replace("\\", "/") for p in items)]


def select(paths: Iterable[str], allow: str | Sequence[str] | None,
           ignore: str | Sequence[str] | None) -> list[str]:
    """Paths matching any allow pattern and no ignore pattern (fnmatch, case-sensitive; a
    pattern ending in ``/`` means everything below it), as huggingface_hub filters."""
    allowed, ignored = _patterns(allow), _patterns(ignore)
    return [p for p in paths
            if (allowed is None or any(fnmatchcase(p, a) for a in allowed))
            and not (ignored and any(fnmatchcase(p, i) for i in ignored))]


def tree_json(entries: Iterable[RepoEntry]) -> dict[str, Any]:
    """The ``trees/<commit>.json`` document huggingface_hub reads for completeness checks."""
    files: dict[str, Any] = {}
    for e in entries:
        info: dict[str, Any] = {"size": e.size, "blob_id": e.blob_id}
        if e.sha256:
            info.update(lfs_sha256=e.sha256, lfs_size=e.size)
        files[e.path] = info
    return {"format_version": TREE_FORMAT_VERSION, "files": files}


def entries_from_tree(doc: Mapping[str, Any]) -> list[RepoEntry] | None:
    """Entries of a ``trees/<commit>.json`` document, or None when it is not one we can use."""
    if doc.get("format_version") != TREE_FORMAT_VERSION or not isinstance(doc.get("files"), dict):
        return None
    try:
        return [RepoEntry(check_repo_path(path), int(info["size"]),
                          _hexdigest(info["blob_id"], 40),
                          _hexdigest(info["lfs_sha256"], 64) if info.get("lfs_sha256") else None)
                for path, info in doc["files"].items()]
    except (KeyError, TypeError, ValueError):
        return None


def git_blob_hasher(size: int) -> Any:
    """A sha1 primed with git's blob header: feed the content, ``hexdigest()`` is the blob id."""
    return hashlib.sha1(b"blob %d\x00" % size, usedforsecurity=False)
