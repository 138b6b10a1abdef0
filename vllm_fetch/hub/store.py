"""huggingface_hub's cache layout on disk: ``blobs/<etag>``, ``snapshots/<commit>/<path>`` as
relative symlinks into ``blobs/``, ``refs/<revision>``, ``trees/<commit>.json`` and
``.no_exist/<commit>/<path>``; and ``local_dir`` trees of plain files."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .names import HubNameError, check_repo_path, repo_folder_name
from .plan import RepoEntry, entries_from_tree, tree_json


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def inside(base: Path, path: str) -> Path:
    """``base/path`` after checking that no existing component (a planted symlink) leads out."""
    target = base.joinpath(*check_repo_path(path).split("/"))
    real_base = os.path.realpath(base)
    if os.path.commonpath([real_base, os.path.realpath(target.parent)]) != real_base:
        raise HubNameError(f"refusing {path!r}: a symlink leads out of {base}")
    return target


def _read_tree(folder: Path, commit: str) -> list[RepoEntry] | None:
    try:
        doc: Any = json.loads((folder / "trees" / f"{commit}.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return entries_from_tree(doc) if isinstance(doc, dict) else None


class RepoStore:
    """One repo's folder in a Hub cache (``<cache>/models--org--name``)."""

    def __init__(self, cache: Path, repo_id: str, repo_type: str) -> None:
        self.root = cache / repo_folder_name(repo_id, repo_type)

    def blob(self, etag: str) -> Path:
        return self.root / "blobs" / etag

    def snapshot_dir(self, commit: str) -> Path:
        return self.root / "snapshots" / commit

    def read_ref(self, revision: str) -> str | None:
        try:
            return (self.root / "refs" / revision).read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def write_ref(self, revision: str, commit: str) -> None:
        if self.read_ref(revision) != commit:
            _write_atomic(inside(self.root / "refs", revision), commit)

    def read_tree(self, commit: str) -> list[RepoEntry] | None:
        return _read_tree(self.root, commit)

    def write_tree(self, commit: str, entries: list[RepoEntry]) -> None:
        _write_atomic(self.root / "trees" / f"{commit}.json",
                      json.dumps(tree_json(entries), indent=2, sort_keys=True))

    def mark_missing(self, commit: str, path: str) -> None:
        """What huggingface_hub writes for a file that does not exist at a commit."""
        marker = inside(self.root / ".no_exist" / commit, path)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def has(self, commit: str, entry: RepoEntry) -> bool:
        """The snapshot holds the file: a link to a blob of the right size."""
        try:
            return inside(self.snapshot_dir(commit), entry.path).stat().st_size == entry.size
        except OSError:
            return False

    def link(self, commit: str, entry: RepoEntry) -> Path:
        """``snapshots/<commit>/<path>`` -> ``../../blobs/<etag>`` (relative, as hf does)."""
        dst = inside(self.snapshot_dir(commit), entry.path)
        dst.parent.mkdir(parents=True, exist_ok=True)
        relative = os.path.relpath(self.blob(entry.etag), dst.parent)
        if os.path.islink(dst) and os.readlink(dst) == relative:
            return dst
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
        os.symlink(relative, tmp)
        os.replace(tmp, dst)
        return dst


class LocalDir:
    """A ``local_dir`` download: plain files, huggingface_hub's metadata under
    ``.cache/huggingface/`` (``download/<path>.metadata`` and ``trees/<commit>.json``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta = root / ".cache" / "huggingface"

    def target(self, entry: RepoEntry) -> Path:
        return inside(self.root, entry.path)

    def read_tree(self, commit: str) -> list[RepoEntry] | None:
        return _read_tree(self.meta, commit)

    def write_tree(self, commit: str, entries: list[RepoEntry]) -> None:
        _write_atomic(self.meta / "trees" / f"{commit}.json",
                      json.dumps(tree_json(entries), indent=2, sort_keys=True))

    def has(self, commit: str, entry: RepoEntry) -> bool:
        try:
            meta = inside(self.meta / "download", entry.path + ".metadata").read_text("utf-8")
            return (meta.split("\n")[:2] == [commit, entry.etag]
                    and self.target(entry).stat().st_size == entry.size)
        except OSError:
            return False

    def record(self, commit: str, entry: RepoEntry) -> None:
        _write_atomic(inside(self.meta / "download", entry.path + ".metadata"),
                      f"{commit}\n{entry.etag}\n{time.time()}\n")
