"""Bodies the cache shares with published files instead of holding a copy.

Two ways, both sealed (``core.seal``), so an edited file is never served as the body:

- **shared** — the blob is a hard link to the downloaded file (same filesystem): no second copy.
  ``<blob>.seal`` holds the body's seal; a blob that is shared (more than one link, or writable)
  is checked against it before it is served.
- **reference** — the file is on another filesystem: ``<blob>.ref`` records its path, device,
  inode, size, mtime and seal, and the body is read from the file itself. A file that was
  deleted, replaced (another inode) or touched (size, mtime) is a miss, not an error; an edit
  that keeps size and mtime is caught by the seal.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core import seal as seals
from .seal import seal_fd

SEAL_SUFFIX = ".seal"
REF_SUFFIX = ".ref"


@dataclass(frozen=True)
class Reference:
    """A published file the cache serves a body from."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    seal: str

    def matches(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (
            self.device, self.inode, self.size, self.mtime_ns)


def seal_for(sha256: str, fd: int) -> str:
    """The seal computed while the body streamed, else read from ``fd``."""
    return seals.known(sha256) or seal_fd(fd)


def is_shared(st: os.stat_result) -> bool:
    """A blob someone else can change: linked elsewhere, or writable (a plain blob is 0444)."""
    return st.st_nlink > 1 or bool(stat.S_IMODE(st.st_mode) & 0o222)


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        temp.write_text(text, encoding="ascii")
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def write_seal(blob: Path, seal: str) -> None:
    _write_atomic(blob.with_name(blob.name + SEAL_SUFFIX), seal)


def read_seal(blob: Path) -> str | None:
    try:
        return blob.with_name(blob.name + SEAL_SUFFIX).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def write_reference(blob: Path, ref: Reference) -> None:
    _write_atomic(blob.with_name(blob.name + REF_SUFFIX), json.dumps(asdict(ref)))


def read_reference(blob: Path) -> Reference | None:
    """The reference recorded for this blob name, or None (none, or unreadable)."""
    try:
        raw = json.loads(blob.with_name(blob.name + REF_SUFFIX).read_text(encoding="utf-8"))
        return Reference(str(raw["path"]), int(raw["device"]), int(raw["inode"]),
                         int(raw["size"]), int(raw["mtime_ns"]), str(raw["seal"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_checked(blob: Path, *, read_only: bool = False) -> tuple[int, int] | None:
    """Open the body stored under ``blob`` — the blob, or the file it references — and check
    its seal when it may have changed: (fd, size), or None for a miss (the caller closes fd).
    A stale reference record is removed, unless ``read_only`` (a store this process must never
    write: the shared tier)."""
    try:
        fd = os.open(blob, os.O_RDONLY)
    except FileNotFoundError:
        return _open_reference(blob, read_only)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a directory or a node where a blob belongs: a miss
            os.close(fd)
            return None
        want = read_seal(blob) if is_shared(st) else None
        if want is not None and seal_fd(fd) != want:
            os.close(fd)
            return None
    except OSError:
        os.close(fd)
        raise
    return fd, st.st_size


def _open_reference(blob: Path, read_only: bool) -> tuple[int, int] | None:
    ref = read_reference(blob)
    if ref is None:
        return None
    try:
        fd = os.open(ref.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        if not read_only:
            drop_reference(blob)  # deleted (or now a symlink): a miss
        return None
    try:
        good = ref.matches(os.fstat(fd)) and seal_fd(fd) == ref.seal
    except OSError:
        good = False
    if not good:
        os.close(fd)
        if not read_only:
            drop_reference(blob)  # replaced or edited: a miss, and the record goes
        return None
    return fd, ref.size


def drop_reference(blob: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        blob.with_name(blob.name + REF_SUFFIX).unlink()


def drop_seal(blob: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        blob.with_name(blob.name + SEAL_SUFFIX).unlink()
