"""The registry of partial files and download locks, wherever on the machine they are.

A partial sits beside its target, hidden, anywhere on disk; nothing would list it. So every
partial is noted when it is first opened: one tiny file in ``<lock dir>/partials/`` holding its
absolute path. ``vllm-fetch cache info`` / ``ls --partials`` read the notes (a note whose
partial is gone — published or removed — is dropped as it is read), and ``prune`` removes
partials untouched for a week (or ``--older-than``) and lock files nobody holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from ..core.partial_names import sidecar_name
from .locking import lock_dir

logger = logging.getLogger(__name__)

#: A partial untouched this long is abandoned (``prune`` removes it); lock files too.
ABANDONED_AFTER = 7 * 86400.0


@dataclass(frozen=True)
class PartialFile:
    """One partial download: its path, apparent size, bytes on disk and last write."""

    path: Path
    size: int
    on_disk: int
    mtime: float


def _notes() -> Path:
    return lock_dir() / "partials"


def note(partial: Path) -> None:
    """Remember a partial (best effort: a registry that cannot be written costs nothing)."""
    path = os.fspath(partial.absolute())
    name = hashlib.sha256(os.fsencode(path)).hexdigest()[:32]
    try:
        directory = _notes()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        (directory / name).write_bytes(os.fsencode(path))
    except OSError as exc:
        logger.debug("cannot note partial %s: %s", partial, exc)


def _pair(partial: Path) -> list[Path]:
    return [partial, partial.with_name(sidecar_name(partial.name))]


def partials() -> Iterator[PartialFile]:
    """Every noted partial that still exists (notes of vanished ones are dropped)."""
    directory = _notes()
    if not directory.is_dir():
        return
    for item in sorted(directory.iterdir()):
        try:
            partial = Path(os.fsdecode(item.read_bytes()))
            st = os.lstat(partial)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                item.unlink()
            continue
        except OSError:
            continue
        on_disk = st.st_blocks * 512
        with contextlib.suppress(OSError):
            on_disk += os.lstat(_pair(partial)[1]).st_blocks * 512
        yield PartialFile(partial, st.st_size, on_disk, st.st_mtime)


def lock_files(*extra_dirs: Path) -> list[Path]:
    """The download lock files (and their notes) in the lock dir and ``extra_dirs``."""
    found: list[Path] = []
    for directory in (lock_dir(), *extra_dirs):
        if directory.is_dir():
            found += [p for p in directory.iterdir() if p.suffix == ".lock" and p.is_file()]
    return found


@dataclass(frozen=True)
class Cleaned:
    partials: int = 0
    partial_bytes: int = 0
    locks: int = 0


def prune(older_than: float | None, *extra_lock_dirs: Path, now: float | None = None) -> Cleaned:
    """Remove partials (with their sidecars) and unheld lock files untouched for
    ``older_than`` seconds (default a week)."""
    cutoff = (time.time() if now is None else now) - (
        ABANDONED_AFTER if older_than is None else older_than)
    removed = freed = locks = 0
    for partial in list(partials()):
        if partial.mtime < cutoff:
            for path in _pair(partial.path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed += 1
            freed += partial.on_disk
    for path in lock_files(*extra_lock_dirs):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime >= cutoff:
                continue
            lock = FileLock(path, timeout=0, thread_local=False)
            try:
                lock.acquire()
            except Timeout:
                continue  # held: in use
            try:
                path.unlink()
                path.with_suffix(".json").unlink(missing_ok=True)
                locks += 1
            finally:
                lock.release()
    return Cleaned(removed, freed, locks)
