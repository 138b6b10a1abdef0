"""One snapshot request, its decisions and its file work, shared by the sync and async
runners (which only make the HTTP calls): what is already local, what the Hub's answer means,
and how a downloaded file is verified and published into the layout."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import ChecksumMismatchError, FetchError, OfflineError
from . import settings
from .names import (
    COMMIT,
    check_repo_id,
    check_repo_path,
    check_repo_type,
    check_revision,
    url_prefix,
)
from .plan import RepoEntry, git_blob_hasher, parse_revision_info, select
from .store import LocalDir, RepoStore

log = logging.getLogger("vllm_fetch.hub")
Progress = bool | Callable[[int, int | None], object] | None


class HubEntryNotFoundError(FetchError, FileNotFoundError):
    """The file does not exist in the repo at that commit."""


@dataclass
class Job:
    """A snapshot (or one file) of a repo at a revision, into a cache or a ``local_dir``."""

    repo_id: str
    revision: str
    repo_type: str
    allow: str | Sequence[str] | None
    ignore: str | Sequence[str] | None
    cache_dir: str | os.PathLike[str] | None
    local_dir: str | os.PathLike[str] | None
    token: str | bool | None
    endpoint: str | None
    only: str | None = None  # hub.file(): just this path
    commit: str | None = None
    entries: list[RepoEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_repo_id(self.repo_id)
        check_revision(self.revision)
        check_repo_type(self.repo_type)
        if self.only is not None:
            check_repo_path(self.only)
        self.base = settings.endpoint(self.endpoint)
        self.store = RepoStore(settings.hub_cache(self.cache_dir), self.repo_id, self.repo_type)
        self.local = LocalDir(Path(self.local_dir)) if self.local_dir is not None else None
        self.offline = settings.offline()
        tok = settings.token(self.token)
        self.headers = {"Authorization": f"Bearer {tok}"} if tok else {}

    # -- decisions ------------------------------------------------------------------------
    def _tree(self, commit: str) -> list[RepoEntry] | None:
        return (self.local or self.store).read_tree(commit)

    def _has(self, entry: RepoEntry) -> bool:
        assert self.commit is not None
        return (self.local or self.store).has(self.commit, entry)

    def selected(self) -> list[RepoEntry]:
        if self.only is not None:
            return [e for e in self.entries if e.path == self.only]
        chosen = set(select([e.path for e in self.entries], self.allow, self.ignore))
        return [e for e in self.entries if e.path in chosen]

    def result(self) -> Path:
        assert self.commit is not None
        base = self.local.root if self.local is not None else self.store.snapshot_dir(self.commit)
        return base / self.only if self.only else base

    def local_answer(self) -> Path | None:
        """The answer without a request: a complete commit (or anything offline), else None."""
        commit = self.revision if COMMIT.match(self.revision) else None
        if self.offline and commit is None:
            commit = self.store.read_ref(self.revision)
            if commit is None:
                raise OfflineError(f"HF_HUB_OFFLINE: no cached revision {self.revision!r} "
                                   f"of {self.repo_id}")
        entries = self._tree(commit) if commit else None
        if commit and entries is not None:
            self.commit, self.entries = commit, entries
            missing = [e for e in self.selected() if not self._has(e)]
            if self.only is not None and not self.selected():
                raise HubEntryNotFoundError(f"{self.only} is not in {self.repo_id}@{commit}")
            if not missing:
                return self.result()
        if self.offline and commit and entries is None and self.local is None and (
                self.store.snapshot_dir(commit).is_dir()):
            self.commit = commit  # no listing to check against: as huggingface_hub, trust it
            return self.result()
        if self.offline:
            raise OfflineError(f"HF_HUB_OFFLINE: the cached snapshot of {self.repo_id} "
                               f"({self.revision}) is missing files or unknown")
        return None

    def info_url(self) -> str:
        return (f"{self.base}/api/{self.repo_type}s/{self.repo_id}/revision/"
                f"{quote(self.revision, safe='')}?blobs=true")

    def accept_info(self, text: str) -> list[RepoEntry]:
        """Record the Hub's answer (tree, ref: its JSON text, whatever Content-Type it came
        with, parsed the same way on both sides); the files still to download."""
        try:
            info = json.loads(text)
        except ValueError:
            raise FetchError("the Hub's revision answer is not JSON") from None
        if not isinstance(info, dict):
            raise FetchError("the Hub's revision answer is not a JSON object")
        self.commit, self.entries = parse_revision_info(info)
        if self.local is not None:
            self.local.write_tree(self.commit, self.entries)
        else:
            self.store.write_tree(self.commit, self.entries)
            if self.revision != self.commit:
                self.store.write_ref(self.revision, self.commit)
        chosen = self.selected()
        if self.only is not None and not chosen:
            if self.local is None:
                self.store.mark_missing(self.commit, self.only)
            raise HubEntryNotFoundError(f"{self.only} is not in {self.repo_id}@{self.commit}")
        return [e for e in chosen if not self._has(e)]

    # -- file work ------------------------------------------------------------------------
    def file_url(self, entry: RepoEntry) -> str:
        return (f"{self.base}/{url_prefix(self.repo_type)}{self.repo_id}/resolve/"
                f"{self.commit}/{quote(entry.path)}")

    def download_target(self, entry: RepoEntry) -> Path:
        """Where the transfer writes: the final blob for LFS files (checked by sha256 while
        downloading), a hidden unverified name for git files (checked by blob id first)."""
        final = self.local.target(entry) if self.local is not None else self.store.blob(entry.etag)
        final.parent.mkdir(parents=True, exist_ok=True)
        if entry.sha256 or final.exists():
            return final
        return final.with_name(f".{final.name}.unverified")

    def transfers(self, todo: list[RepoEntry]) -> list[list[RepoEntry]]:
        """The files grouped by what is transferred: one blob serves every path with the same
        content in a cache; a ``local_dir`` gets each path written."""
        groups: dict[str, list[RepoEntry]] = {}
        for entry in todo:
            groups.setdefault(entry.path if self.local else entry.etag, []).append(entry)
        return list(groups.values())

    def publish(self, group: list[RepoEntry], downloaded: Path) -> None:
        """Verify a git file by its blob id, then link every path of the group into the
        snapshot (or record it in the ``local_dir``)."""
        assert self.commit is not None
        entry = group[0]
        final = self.local.target(entry) if self.local is not None else self.store.blob(entry.etag)
        if downloaded != final:
            hasher = git_blob_hasher(entry.size)
            with open(downloaded, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    hasher.update(chunk)
            if hasher.hexdigest() != entry.blob_id:
                downloaded.unlink(missing_ok=True)
                raise ChecksumMismatchError(
                    f"{entry.path}: git blob id mismatch (expected {entry.blob_id}, "
                    f"got {hasher.hexdigest()})")
            os.replace(downloaded, final)
        for each in group:
            if self.local is not None:
                self.local.record(self.commit, each)
            else:
                self.store.link(self.commit, each)


class Bytes:
    """One overall progress in bytes for all the files of a snapshot."""

    def __init__(self, total: int, progress: Progress) -> None:
        self.total, self.done = total, 0
        self._lock = threading.Lock()
        self._callback = progress if callable(progress) else None
        show = progress is True or (progress is None and sys.stderr.isatty()
                                    and not os.environ.get("VLLM_FETCH_DISABLE_PROGRESS"))
        self._bar: Any = None
        if show and self._callback is None:
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit="B", unit_scale=True, desc="hf snapshot")

    def for_file(self) -> Callable[[int, int | None], None]:
        seen = 0

        def update(done: int, _total: int | None) -> None:
            nonlocal seen
            with self._lock:
                delta, seen = done - seen, done
                self.done += delta
                if self._bar is not None:
                    self._bar.update(delta)
                if self._callback is not None:
                    self._callback(self.done, self.total)
        return update

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
