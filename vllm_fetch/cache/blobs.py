"""The content-addressed blob store: immutable bodies addressed by their sha256.

A body up to ``SEGMENT_BODY_MAX`` (1 MiB) stored by the cache's writer is a sealed record in a
segment file (``segments.py``; the index says where). Any other body is a file of its own:
``<root>/ab/cdef…`` holds the body whose sha256 is ``abcdef…``, written to a temp file in
``<root>/tmp``, fsynced, then linked into place with ``os.link``, which fails if the name
exists: exactly one writer creates a blob, identical bodies from any URL or process share it
(dedup for free), and a reader never sees a partial blob.

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
from typing import TYPE_CHECKING

from ..core.body import is_sha256
from ..core.segment_record import HEADER_SIZE, SEGMENT_BODY_MAX, Location, body_seal
from ..files import (
    fsync_fd,
    publish,
    publish_bytes,
    remove_quietly,
    temp_beside,
    write_all,
)
from . import references
from .seal import fd_matches, matches
from .segments import CompactReport, Damaged, SegmentStore

if TYPE_CHECKING:
    from .index import Index, Placed

logger = logging.getLogger("vllm_fetch.cache")

_COPY_CHUNK = 1 << 30
#: A file changed less than this long ago (ns) has no signature yet: filesystem timestamps
#: come from a coarse clock (a few ms on Linux), so an edit in the same tick as the last write
#: would leave mtime and ctime as they were. Whole-second timestamps (a filesystem that keeps
#: no more) need ``SETTLE_COARSE_NS``.
SETTLE_NS = 50_000_000
SETTLE_COARSE_NS = 2_500_000_000
_SECOND_NS = 1_000_000_000

Signature = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class BlobInfo:
    sha256: str
    size: int
    path: Path
    mtime: float
    #: bytes the store itself holds for it (0 for a body held by reference)
    held: int = -1
    #: where its record is, for a body held in a segment file (``path`` is the segment)
    location: Location | None = None

    def __post_init__(self) -> None:
        if self.held < 0:
            object.__setattr__(self, "held", self.size)


class BlobStore:
    """Immutable sha256-named files under ``root``. Thread- and process-safe.

    ``index``: the cache's index, which also locates the small bodies packed in segment files
    (``segments.py``); without one, bodies are files only. ``read_only``: a store this process
    only reads (the shared tier, ``cache/shared_tier.py``): ``read`` and ``copy_to`` still
    refuse damaged bodies, but nothing there is ever deleted or repaired (use no writing method
    on it)."""

    def __init__(self, root: Path, *, link_files: bool = False, index: Index | None = None,
                 read_only: bool = False, share_files: bool = True) -> None:
        self.root = root
        self.share_files = share_files  # False: put_file copies, never links nor refers
        self._root = os.fspath(root)  # plain strings on the hit path: pathlib costs µs
        self.link_files = link_files
        self.read_only = read_only
        self._holders: dict[str, str] = {}  # sha256 -> the file ``signature`` stats
        self._tmp = root / "tmp"
        self._pins: Counter[str] = Counter()
        self._pin_lock = threading.Lock()
        #: small bodies' segment files (None: every body is a file, e.g. without an index)
        self.segments = SegmentStore(root / "segments", index) if index is not None else None

    def after_fork(self) -> None:
        """In a forked child: the parent's readers pin nothing here; the lock starts free."""
        self._pins = Counter()
        self._pin_lock = threading.Lock()
        if self.segments is not None:
            self.segments.after_fork()

    def path(self, sha256: str) -> Path:
        """Where the body's own file is (a body held in a segment has none: see ``holder``)."""
        return self.root / sha256[:2] / sha256[2:]

    def signature(self, sha256: str) -> Signature | None:
        """A value that changes whenever the bytes held for this body may have changed (an
        edit in place, a replacement, a removal): the device, inode, size, mtime and ctime of
        the file holding them -- its blob file, or its segment file, whose every append counts
        as a change (conservative: a memory copy is read again). None when no such value can
        be given now: no such file (gone, compacted away, or a reference to a file elsewhere),
        or one changed too recently for its timestamps to show a later edit (``SETTLE_NS``).
        A memory copy of a body is served only while this is unchanged."""
        holder = self._holders.get(sha256)
        if holder is None:
            holder = self._holder_path(sha256)
            if len(self._holders) > 100_000:
                self._holders.clear()  # bounded; found again on the next fill
            self._holders[sha256] = holder
        try:
            st = os.stat(holder)
        except (OSError, ValueError):
            self._holders.pop(sha256, None)  # moved (compaction) or gone: look again next time
            return None
        mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
        coarse = mtime % _SECOND_NS == 0 and ctime % _SECOND_NS == 0
        if time.time_ns() - max(mtime, ctime) < (SETTLE_COARSE_NS if coarse else SETTLE_NS):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return (st.st_dev, st.st_ino, st.st_size, mtime, ctime)

    def _located(self, sha256: str) -> Location | None:
        found = self.segments.locate(sha256) if self.segments is not None else None
        return None if found is None else found[0]

    def holder(self, sha256: str) -> tuple[Path, int, int] | None:
        """The file holding the body's bytes, their offset in it and their length: the blob's
        own file (offset 0), or the segment file holding its record; None when neither."""
        located = self._located(sha256)
        if located is not None and self.segments is not None:
            return (self.segments.path(located.segment), located.offset + HEADER_SIZE,
                    located.length)
        path = self.path(sha256)
        try:
            return path, 0, path.stat().st_size
        except FileNotFoundError:
            return None

    def _holder_path(self, sha256: str) -> str:
        """The file ``read`` takes the body from: its segment record first, else its file."""
        located = self._located(sha256)
        if located is not None and self.segments is not None:
            return os.fspath(self.segments.path(located.segment))
        return f"{self._root}/{sha256[:2]}/{sha256[2:]}"

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists() or self._located(sha256) is not None

    def present(self, sha256: str) -> bool:
        """A blob, a segment record, or a reference to a published file, under this sha256."""
        path = self.path(sha256)
        return (path.exists() or self._located(sha256) is not None
                or references.read_reference(path) is not None)

    def by_reference(self, sha256: str) -> bool:
        """Whether the body is held by reference to a published file (one ``open`` to tell)."""
        return references.read_reference(self.path(sha256)) is not None

    def kind(self, sha256: str) -> str:
        """How the body is held: ``copy`` (the store's own file, or its record in a segment),
        ``shared`` (a hard link to a published file), ``reference`` (a published file on another
        filesystem) or ``missing``."""
        path = self.path(sha256)
        try:
            st = path.stat()
        except FileNotFoundError:
            if self._located(sha256) is not None:
                return "copy"
            return "reference" if references.read_reference(path) is not None else "missing"
        # shared only while another name links it: a blob whose published file was deleted
        # (or a warmed one, whose file was never kept) is the store's own copy, writable or not
        return "shared" if st.st_nlink > 1 else "copy"

    def size(self, sha256: str) -> int | None:
        """The stored body's size (a referenced file's recorded size), None when there is none."""
        path = self.path(sha256)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            located = self._located(sha256)
            if located is not None:
                return located.length
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
        """Store several bodies as one group (``put_group``) and record where the small ones
        are in the index at once (their own transaction)."""
        outcomes, placed = self.put_group([(data, sha, None) for data, sha in items])
        if placed and self.segments is not None:
            try:
                if not self.segments.index.place(placed):
                    lost = {sha for sha, *_ in placed}
                    outcomes = [OSError(errno.EIO, "the cache index is unavailable")
                                if not isinstance(o, OSError) and o[0] in lost else o
                                for o in outcomes]
                else:
                    self.segments.placed(placed)
            finally:
                self.settle(placed)
        return outcomes

    def settle(self, placed: list[Placed]) -> None:
        """After the index commit that records ``placed`` (or its failure)."""
        if self.segments is not None and placed:
            self.segments.settle([where for _, where, _, _ in placed])

    def put_group(
        self, items: list[tuple[bytes | memoryview, str | None, str | None]]
    ) -> tuple[list[tuple[str, bool] | OSError], list[Placed]]:
        """Store several bodies (data, sha256 if known, seal if known) as one group; per item
        (sha256, created) or its OSError, and the segment records written, which the caller
        must record in the index (``Index.commit_many(placed=…)`` or ``place``) and then
        ``settle``: until then nobody can read them.

        Bodies up to ``SEGMENT_BODY_MAX`` are appended to this store's segment, synced once for
        the group. Larger ones are files: written all, then fsynced all, then linked (on ext4
        and xfs the first fsync commits the journal for the whole group, so the rest are
        cheap). Failures are per item (a segment write fails its whole group's records)."""
        outcomes: list[tuple[str, bool] | OSError] = []
        staged: list[tuple[int, int, Path, str, str]] = []  # (slot, fd, temp, final, digest)
        staged_digests: set[str] = set()
        packed: list[tuple[int, str, str, bytes | memoryview]] = []  # (slot, sha, seal, data)
        root = os.fspath(self.root)  # plain strings: pathlib costs ~8 us a blob on this thread
        digests = [sha256 or hashlib.sha256(data).hexdigest() for data, sha256, _ in items]
        in_segments = self.segments.known(
            [d for d, (data, _, _) in zip(digests, items, strict=True)
             if len(data) <= SEGMENT_BODY_MAX]) if self.segments is not None else set()
        for digest, (data, _, seal) in zip(digests, items, strict=True):
            outcomes.append((digest, False))
            if digest in staged_digests or digest in in_segments:
                continue
            final = os.path.join(root, digest[:2], digest[2:])
            small = self.segments is not None and len(data) <= SEGMENT_BODY_MAX
            if os.path.exists(final):
                continue
            staged_digests.add(digest)
            if small:
                packed.append((len(outcomes) - 1, digest, seal or body_seal(data), data))
                continue
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
        return outcomes, self._pack(packed, outcomes)

    def _pack(self, packed: list[tuple[int, str, str, bytes | memoryview]],
              outcomes: list[tuple[str, bool] | OSError]) -> list[Placed]:
        if not packed or self.segments is None:
            return []
        try:
            where = self.segments.append([(sha, seal, data) for _, sha, seal, data in packed])
        except OSError as exc:
            for slot, *_ in packed:
                outcomes[slot] = exc
            return []
        now = time.time()
        for slot, sha, _, _ in packed:
            outcomes[slot] = (sha, True)
        return [(sha, loc, seal, now) for (_, sha, seal, _), loc in zip(packed, where, strict=True)]

    def put_file(self, source: Path, sha256: str, size: int) -> tuple[str, bool]:
        """Store an existing, already-hashed file (never re-read over the network or re-hashed);
        returns (sha256, whether the store now holds bytes it did not hold before).

        The blob shares the file's storage: a hard link on the same filesystem (sealed, so an
        edit of the file in place is caught), a sealed reference on another one
        (``references``). Only where neither works, or without ``share_files``, is it copied
        in the kernel (``copy_file_range``: a reflink on copy-on-write filesystems).
        """
        final = self.path(sha256)
        if not self.share_files:
            if self.by_reference(sha256):  # one made before: the bytes are wanted here now
                references.drop_reference(final)
            elif self.present(sha256):
                return sha256, False
            return self._copy_in(source, sha256, size)
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
        are checked too: a damaged blob is deleted and None returned, never its bytes. A body in
        a segment is always checked (its record's own seal, and ``seal``).
        """
        with self.pinned(sha256) as path:
            if self.segments is not None and size <= SEGMENT_BODY_MAX:
                got = self.segments.read(sha256, size, seal)
                if isinstance(got, bytes):
                    return got
                if isinstance(got, Damaged):
                    return None
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
            size = self.size(sha256) if self.segments is not None else None
            if size is not None and size <= SEGMENT_BODY_MAX and self._located(sha256):
                return self._copy_record_to(sha256, size, target, seal)
            try:
                opened = references.open_checked(path, read_only=self.read_only)  # a cheap miss
            except OSError:
                return False
            if opened is None:
                return False
            with open(opened[0], "rb") as src, temp_beside(target) as temp:
                if not (self.link_files and _replace_with_link(path, temp.path)):
                    copy_fileobj(src.fileno(), temp.fd)
                    fsync_fd(temp.fd, temp.path)
                temp.close()
                if seal is not None and not _file_matches(temp.path, sha256, seal):
                    self.discard_damaged(sha256)
                    return False
                publish(temp.path, target)
        return True

    def _copy_record_to(self, sha256: str, size: int, target: Path, seal: str | None) -> bool:
        """``copy_to`` for a body held in a segment: its record's bytes, checked against their
        seals as they are read, written to a temp file beside the target, fsynced, renamed."""
        assert self.segments is not None
        data = self.segments.read(sha256, size, seal)
        if not isinstance(data, bytes):
            return False
        publish_bytes(data, target)
        return True

    # -- housekeeping ----------------------------------------------------------------------
    def remove(self, sha256: str) -> int:
        """Delete a blob (a segment record becomes dead bytes, freed when its segment is
        compacted); the bytes freed (0 when it was already gone)."""
        path = self.path(sha256)
        references.drop_reference(path)  # a referenced file is the user's: only the record goes
        references.drop_seal(path)
        freed = 0
        located = self._located(sha256)
        if located is not None and self.segments is not None:
            self.segments.forget(sha256)
            freed = located.length
        try:
            size = path.stat().st_size
            path.unlink()
        except (FileNotFoundError, IsADirectoryError):  # gone, or never a blob (left alone)
            return freed
        return freed + size

    def check_record(self, info: BlobInfo, seal: str) -> bool | None:
        """Whether a segment-held body's record is whole and hashes to its sha256 (None: its
        segment is gone). Nothing is dropped here (``cache verify`` decides)."""
        assert self.segments is not None and info.location is not None
        return self.segments.check(info.sha256, info.location, seal)

    def compact(self, *, live_fraction: float, budget: int | None = None) -> CompactReport:
        """Compact the segment files (``SegmentStore.compact``); records being read here stay."""
        if self.segments is None:
            return CompactReport()
        return self.segments.compact(live_fraction=live_fraction, keep=self.is_pinned,
                                     budget=budget)

    def dead_bytes(self) -> int:
        """Bytes in segment files that no index record points at (freed by compaction)."""
        if self.segments is None:
            return 0
        return sum(use.dead for use in self.segments.usage(self.segments.index.locations())
                   .values())

    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Every complete blob (temp files excluded), and every body held in a segment."""
        seen: set[str] = set()
        for sub in os.scandir(self.root) if self.root.is_dir() else ():
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
                if not is_sha256(sha) or not item.is_file():  # a directory there is no blob
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = item.stat()
                    seen.add(sha)
                    yield BlobInfo(sha, st.st_size, Path(item.path), st.st_mtime)
        if self.segments is None:
            return
        for sha, (where, _, stored_at) in self.segments.index.locations().items():
            if sha not in seen:
                yield BlobInfo(sha, where.length, self.segments.path(where.segment), stored_at,
                               location=where)

    def remove_stale_temps(self, before: float) -> None:
        """Remove temp files last written before ``before`` (left by a crashed writer)."""
        for folder, suffix in ((self._tmp, ""), (self.root / "segments", ".new")):
            if not folder.is_dir():
                continue
            for item in os.scandir(folder):
                with contextlib.suppress(FileNotFoundError):
                    if item.name.endswith(suffix) and item.stat().st_mtime < before:
                        os.unlink(item.path)

    def clear(self) -> None:
        """Remove every blob, segment and temp file."""
        if self.segments is not None:
            self.segments.clear()
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
