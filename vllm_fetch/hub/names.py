"""Hugging Face names, checked before anything is written (pure): repo ids, revisions, paths
inside a repo, the cache folder name, and ``hf://org/name[@revision][/path]`` URLs."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidURLError

REPO_TYPES = ("model", "dataset", "space")
_URL_PREFIX = {"dataset": "datasets/", "space": "spaces/"}
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


class HubNameError(InvalidURLError):
    """A repo id, revision, repo type or path that cannot be used safely (also a ValueError)."""


def check_repo_id(repo_id: str) -> str:
    """``name`` or ``org/name``: letters, digits, ``.``, ``_``, ``-``; never ``..``."""
    parts = repo_id.split("/")
    if len(parts) > 2 or not all(_PART.match(p) and ".." not in p for p in parts):
        raise HubNameError(f"invalid Hugging Face repo id {repo_id!r}")
    return repo_id


def check_repo_type(repo_type: str) -> str:
    if repo_type not in REPO_TYPES:
        raise HubNameError(f"invalid repo type {repo_type!r} (one of {', '.join(REPO_TYPES)})")
    return repo_type


def check_revision(revision: str) -> str:
    """A branch, tag or commit: no empty or ``..`` segment, no control characters."""
    segments = revision.split("/")
    if (not revision or len(revision) > 255 or any(s in ("", ".", "..") for s in segments)
            or any(ord(c) < 0x20 or c in "\\\x7f" for c in revision)):
        raise HubNameError(f"invalid revision {revision!r}")
    return revision


def check_repo_path(path: str) -> str:
    """A relative POSIX path inside a repo: no absolute path, no ``..``, ``.`` or empty part."""
    segments = path.split("/")
    if (not path or path.startswith("/") or "\\" in path or "\x00" in path
            or any(s in ("", ".", "..") for s in segments)):
        raise HubNameError(f"refusing repo path {path!r}")
    return path


def repo_folder_name(repo_id: str, repo_type: str) -> str:
    """``models--org--name``, as huggingface_hub names a repo's cache folder."""
    return "--".join([f"{repo_type}s", *repo_id.split("/")])


def url_prefix(repo_type: str) -> str:
    """The path prefix of a repo type in Hub URLs (models have none)."""
    return _URL_PREFIX.get(repo_type, "")


@dataclass(frozen=True)
class HubURL:
    """A parsed ``hf://`` URL."""

    repo_id: str
    revision: str = "main"
    path: str | None = None
    repo_type: str = "model"


def parse_hf_url(url: str) -> HubURL:
    """``hf://[datasets/|spaces/]org/name[@revision][/path]`` (a revision holding ``/`` is
    written URL-encoded as ``%2F``)."""
    if not url.startswith("hf://"):
        raise HubNameError("not an hf:// URL")
    rest = url[len("hf://"):]
    repo_type = "model"
    for kind, prefix in _URL_PREFIX.items():
        if rest.startswith(prefix):
            repo_type, rest = kind, rest[len(prefix):]
    parts = rest.split("/")
    head = "/".join(parts[:2])
    tail = parts[2:]
    if "@" in parts[0]:  # hf://name@rev/path (a repo without an org)
        head, tail = parts[0], parts[1:]
    repo_id, _, revision = head.partition("@")
    revision = revision.replace("%2F", "/").replace("%2f", "/") or "main"
    path = "/".join(tail) or None
    return HubURL(check_repo_id(repo_id), check_revision(revision),
                  check_repo_path(path) if path else None, repo_type)
