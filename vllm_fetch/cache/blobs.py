"""The content-addressed blob store: one immutable file per body, named by its sha256.

``<root>/ab/cdef…`` holds the body whose sha256 is ``abcdef…``. A blob is written to a temp
file in ``<root>/tmp``, fsynced, then linked into place with ``os.link``, which fails if the
name exists: exactly one writer creates a blob, identical bodies from any URL or process share
it (dedup for free), and a reader never sees a partial blob.

Removing a blob that another thread or process is reading is safe on POSIX: an open file keeps
its data until closed. Readers in this process also *pin* blobs so eviction skips them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DiskError
from ..files import create_temp, disk_error, fsync_fd, publish, remove_quietly, write_all
from . import references
from .seal import fd_matches, matches

logger = logging.getLogger("vllm_fetch.cache")

_HEX = frozenset("0123456789abcdef")
_COPY_CHUNK = 1 << 30
#: A file changed less than this long ago (ns) has no signature yet: filesystem timestamps
#: come from a coarse clock (a few ms on Linux), so an edit in the same tick as the last write
#: would leave mtime and ctime as they were. Whole-second timestamps (a filesystem that keeps
#: no more) need ``SETTLE_COARSE_NS``.
SETTLE_NS = 50_000_000
SETTLE_COARSE_NS = 2_500_000_000
_SECOND_NS = 1_000_000_000

Signature = tuple[int, int, int, int, int]


def is_sha256(text: str) -> bool:
    return len(text) == 64 and set(text) <= _HEX


@dataclass(frozen=True)
class BlobInfo:
    sha256: str
    size: int
    path: Path
    mtime: float
    #: bytes the store itself holds for it (0 for a body held by reference)
    held: int = -1

    def __post_init__(self) -> None:
        if self.held < 0:
            object.__setattr__(self, "held", self.size)


class BlobStore:
    """Immutable sha256-named files under ``root``. Thread- and process-safe.

    ``read_only``: a store this process only reads (the shared tier, ``cache/shared_tier.py``):
    ``read`` and ``copy_to`` still refuse damaged bodies, but nothing there is ever deleted or
    repaired (use no writing method on it)."""

    def __init__(self, root: Path, *, link_files: bool = False, read_only: bool = False) -> None:
        self.root = root
        self._root = os.fspath(root)  # plain strings on the hit path: pathlib costs µs
        self.link_files = link_files
        self.read_only = read_only
        self._tmp = root / "tmp"
        self._pins: Counter[str] = Counter()
        self._pin_lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: the parent's readers pin nothing here; the lock starts free."""
        self._pins = Counter()
        self._pin_lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:]

    def signature(self, sha256: str) -> Signature | None:
        """A value that changes whenever the bytes held for this body may have changed (an
        edit in place, a replacement, a removal): the file's device, inode, size, mtime and
        ctime. None when no such value can be given now: no blob file (gone, or a reference
        to a file elsewhere), or one changed too recently for its timestamps to show a later
        edit (``SETTLE_NS``). A memory copy of a body is served only while this is unchanged."""
        try:
            st = os.stat(f"{self._root}/{sha256[:2]}/{sha256[2:]}")
        except (OSError, ValueError):
            return None
        mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
        coarse = mtime % _SECOND_NS == 0 and ctime % _SECOND_NS == 0
        if time.time_ns() - max(mtime, ctime) < (SETTLE_COARSE_NS if coarse else SETTLE_NS):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return (st.st_dev, st.st_ino, st.st_size, mtime, ctime)

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def present(self, sha256: str) -> bool:
        """A blob, or a reference to a published file, under this sha256."""
        path = self.path(sha256)
        return path.exists() or references.read_reference(path) is not None

    def kind(self, sha256: str) -> str:
        """How the body is held: ``copy`` (the store's own file), ``shared`` (a hard link to a
        published file), ``reference`` (a published file on another filesystem) or ``missing``."""
        path = self.path(sha256)
        try:
            st = path.stat()
        except FileNotFoundError:
            return "reference" if references.read_reference(path) is not None else "missing"
        return "shared" if references.is_shared(st) else "copy"

    def size(self, sha256: str) -> int | None:
        """The stored body's size (a referenced file's recorded size), None when there is none."""
        path = self.path(sha256)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            ref = references.read_reference(path)
            return ref.size if ref is not None else None

    # -- writing ---------------------------------------------------------------------------
    def put_bytes(self, data: bytes | memoryview, sha256: str | None = None) -> tuple[str, bool]:
        """Store ``data``; return (sha256, created). ``sha256`` is the digest computed while
        streaming, when the caller has it; otherwise it is computed here."""
        outcome = self.put_many([(data, sha256)])[0]
        if isinstance(outcome, OSError):
            raise outcome
        return outcome

    def put_many(
        self, items: list[tuple[bytes | memoryview, str | None]]
    ) -> list[tuple[str, bool] | OSError]:
        """Store several bodies as one group: write them all, then fsync them all, then link
        them. On ext4 and xfs the first fsync commits the journal for the whole group, so the
        rest are cheap: one durable commit instead of one per blob. Failures are per item."""
        outcomes: list[tuple[str, bool] | OSError] = []
        staged: list[tuple[int, int, Path, str, str]] = []  # (slot, fd, temp, final, digest)
        staged_digests: set[str] = set()
        root = os.fspath(self.root)  # plain strings: pathlib costs ~8 us a blob on this thread
        for data, sha256 in items:
            digest = sha256 or hashlib.sha256(data).hexdigest()
            outcomes.append((digest, False))
            final = os.path.join(root, digest[:2], digest[2:])
            if digest in staged_digests or os.path.exists(final):
                continue
            staged_digests.add(digest)
            try:
                fd, temp = self._temp()
            except OSError as exc:
                outcomes[-1] = exc
                continue
            staged.append((len(outcomes) - 1, fd, temp, final, digest))
            try:
                write_all(fd, data, temp)
            except OSError as exc:
                outcomes[-1] = exc
        for slot, fd, temp, final, digest in staged:
            try:
                if not isinstance(outcomes[slot], OSError):
                    os.fsync(fd)
                    os.close(fd)
                    fd = -1
                    outcomes[slot] = (digest, self._link_into_place(temp, final))
            except OSError as exc:
                outcomes[slot] = exc
            finally:
                if fd >= 0:
                    os.close(fd)
                remove_quietly(temp)
        return outcomes

    def put_file(self, source: Path, sha256: str, size: int) -> tuple[str, bool]:
        """Store an existing, already-hashed file (never re-read over the network or re-hashed);
        returns (sha256, whether the store now holds bytes it did not hold before).

        The blob shares the file's storage: a hard link on the same filesystem (sealed, so an
        edit of the file in place is caught), a sealed reference on another one
        (``references``). Only where neither works is it copied in the kernel
        (``copy_file_range``: a reflink on copy-on-write filesystems).
        """
        final = self.path(sha256)
        if self.present(sha256):
            return sha256, False
        with open(source, "rb") as src:
            st = os.fstat(src.fileno())
            if st.st_size != size:
                raise OSError(errno.EIO, f"{source} changed before it was cached")
            seal = references.seal_for(sha256, src.fileno())
        # the seal first: a reader never finds a shared blob it cannot check
        references.write_seal(final, seal)
        try:
            return sha256, self._link_into_place(source, final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                return self._copy_in(source, sha256, size)
        references.drop_seal(final)
        references.write_reference(final, references.Reference(
            os.fspath(Path(source).absolute()), st.st_dev, st.st_ino, st.st_size,
            st.st_mtime_ns, seal))
        return sha256, False  # held by reference: no bytes in the store

    def _copy_in(self, source: Path, sha256: str, size: int) -> tuple[str, bool]:
        final = self.path(sha256)
        fd, temp = self._temp()
        try:
            try:
                with open(source, "rb") as src:
                    copy_fileobj(src.fileno(), fd)
                os.fsync(fd)
                copied = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if copied != size:
                raise OSError(errno.EIO, f"{source} changed while it was being cached")
            return sha256, self._link_into_place(temp, final)
        finally:
            remove_quietly(temp)

    def _temp(self) -> tuple[int, Path]:
        """A new read-only-to-others temp file (the fd can write it) in ``root/tmp``."""
        for _ in range(100):
            temp = self._tmp / f"{secrets.token_hex(8)}.part"
            try:
                return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444), temp
            except FileNotFoundError:
                self._tmp.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no unique temp name", str(self._tmp))

    @staticmethod
    def _link_into_place(source: Path, final: Path | str) -> bool:
        """Give the complete file its sha256 name; False when another writer did first.

        The directory is not fsynced: a link lost in a crash is only a cache miss (the entry
        whose blob is missing is dropped and fetched again), never a wrong body.
        """
        try:
            os.link(source, final)
        except FileNotFoundError:
            if not source.exists():
                raise
            Path(final).parent.mkdir(parents=True, exist_ok=True)
            return BlobStore._link_into_place(source, final)
        except FileExistsError:
            return False  # same name, same content: nothing to do
        return True

    # -- reading ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def pinned(self, sha256: str) -> Iterator[Path]:
        """Mark a blob as being read by this process, so eviction leaves it alone."""
        with self._pin_lock:
            self._pins[sha256] += 1
        try:
            yield self.path(sha256)
        finally:
            with self._pin_lock:
                self._pins[sha256] -= 1
                if self._pins[sha256] <= 0:
                    del self._pins[sha256]

    def is_pinned(self, sha256: str) -> bool:
        with self._pin_lock:
            return self._pins[sha256] > 0

    def read(self, sha256: str, size: int, seal: str | None = None) -> bytes | None:
        """The body's bytes, or None when it is gone, unreadable, not ``size`` bytes long, or a
        shared file that no longer matches its seal.

        With ``seal`` (the index's; "" when none was kept, then the sha256 is checked) the bytes
        are checked too: a damaged blob is deleted and None returned, never its bytes.
        """
        with self.pinned(sha256) as path:
            try:
                opened = references.open_checked(path, read_only=self.read_only)
                if opened is None:
                    return None
                with open(opened[0], "rb", buffering=0) as f:
                    data = f.read(size + 1)
            except OSError as exc:
                if not isinstance(exc, FileNotFoundError):
                    logger.warning("cannot read cache blob %s: %s", path, exc)
                return None
        if len(data) != size or (seal is not None and not matches(data, sha256, seal)):
            self.discard_damaged(sha256)
            return None
        return data

    def discard_damaged(self, sha256: str) -> None:
        """Forget a body whose bytes are not what was stored (so a refetch can store it again):
        the blob (a hard link to a published file loses only this name), or the reference.
        In a read-only store it is only reported."""
        if self.read_only:
            logger.warning("shared cache blob %s is damaged; not used", self.path(sha256))
            return
        logger.warning("cache blob %s is damaged; deleting it", sha256)
        path = self.path(sha256)
        references.drop_reference(path)  # a referenced file is the user's: only the record goes
        references.drop_seal(path)
        with contextlib.suppress(OSError):
            path.unlink()

    def copy_to(self, sha256: str, target: Path, seal: str | None = None) -> bool:
        """Publish a copy (or hardlink, with ``link_files``) of the body at ``target``.

        Crash-safe like a download: temp file beside the target, fsync, rename, fsync dir.
        With ``seal`` (see ``read``) the copy is checked before it is published. False when
        the body is gone, unreadable, damaged or fails its seal (the caller falls back to the
        network); a failure to write the target (disk full) is a ``DiskError``, and leaves no
        temp file.
        """
        with self.pinned(sha256) as path:
            try:
                opened = references.open_checked(path, read_only=self.read_only)  # a cheap miss
            except OSError:
                return False
            if opened is None:
                return False
            with open(opened[0], "rb") as src:
                fd, temp = create_temp(target)
                try:
                    if not (self.link_files and _replace_with_link(path, temp)):
                        copy_fileobj(src.fileno(), fd)
                        fsync_fd(fd, temp)
                    os.close(fd)
                    fd = -1
                    if seal is not None and not _file_matches(temp, sha256, seal):
                        self.discard_damaged(sha256)
                        return False
                    publish(temp, target)
                except DiskError:
                    raise
                except OSError as exc:
                    raise disk_error(exc, target) from exc
                finally:
                    if fd >= 0:
                        os.close(fd)
                    remove_quietly(temp)
        return True

    # -- housekeeping ----------------------------------------------------------------------
    def remove(self, sha256: str) -> int:
        """Delete a blob; the bytes freed (0 when it was already gone)."""
        path = self.path(sha256)
        references.drop_reference(path)  # a referenced file is the user's: only the record goes
        references.drop_seal(path)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Every complete blob (temp files excluded)."""
        if not self.root.is_dir():
            return
        for sub in os.scandir(self.root):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for item in os.scandir(sub.path):
                sha = sub.name + item.name
                if sha.endswith(references.REF_SUFFIX):
                    sha = sha.removesuffix(references.REF_SUFFIX)
                    ref = references.read_reference(self.path(sha))
                    if is_sha256(sha) and ref is not None:
                        with contextlib.suppress(FileNotFoundError):
                            yield BlobInfo(sha, ref.size, Path(ref.path), item.stat().st_mtime,
                                           held=0)
                    continue
                if not is_sha256(sha):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = item.stat()
                    yield BlobInfo(sha, st.st_size, Path(item.path), st.st_mtime)

    def remove_stale_temps(self, before: float) -> None:
        """Remove temp files last written before ``before`` (left by a crashed writer)."""
        if not self._tmp.is_dir():
            return
        for item in os.scandir(self._tmp):
            with contextlib.suppress(FileNotFoundError):
                if item.stat().st_mtime < before:
                    os.unlink(item.path)

    def clear(self) -> None:
        """Remove every blob and temp file."""
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)


def copy_fileobj(src_fd: int, dst_fd: int) -> None:
    """Copy a whole file in the kernel when possible (reflink on btrfs/xfs), else by reads."""
    try:
        while os.copy_file_range(src_fd, dst_fd, _COPY_CHUNK):
            pass
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    except AttributeError:  # pragma: no cover - no copy_file_range on this platform
        pass
    with open(src_fd, "rb", closefd=False) as src, open(dst_fd, "wb", closefd=False) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _file_matches(path: Path, sha256: str, seal: str) -> bool:
    """Whether the file at ``path`` holds the body stored with this sha256 and seal."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return fd_matches(fd, sha256, seal)
    finally:
        os.close(fd)


def _replace_with_link(blob: Path, temp: Path) -> bool:
    """Make ``temp`` (an empty file we own) a hardlink to ``blob``; False if links fail."""
    link = temp.with_name(temp.name + ".lnk")
    try:
        os.link(blob, link)
    except OSError:
        return False
    os.replace(link, temp)
    return True
