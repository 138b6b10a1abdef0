"""Segment files: small bodies packed into append-only files, one being written per writer.

One file per small body costs a create, a link, an unlink and an fsync of its own (~1.5 ms of
CPU per 100 KB body on the reference machine's ext4, mostly the journal); appending the bodies
of a group to one file and syncing it once costs a few per cent of that. So bodies up to
``SEGMENT_BODY_MAX`` are records (``core.segment_record``) in ``blobs/segments/<pid>-<random>.seg``:

- **Writing** (the cache's writer thread): a group's records are written at the end of this
  store's own segment, the file is synced once (``fdatasync``), then the index records where
  each one is, in the transaction that commits the group's entries. Where the filesystem
  allows it the segment is written with direct I/O (``O_DIRECT``): the records are copied
  into one aligned staging buffer and written from there straight to the device, which costs
  a fraction of the CPU of a write into the page cache and its write-back (~0.2 ms per
  100 KB body on the reference VM); each group then ends on an ``ALIGN`` boundary with a
  filler (``core.segment_record``). Elsewhere (tmpfs, some FUSE or network filesystems), or
  once a direct write is refused, the records are written through the page cache as they
  are. Readers read either way through the page cache. A record the index does
  not point at is never read, so a torn append (a crash, a full disk) is dead bytes at worst.
  A writer holds an exclusive ``flock`` on the segment it appends to, until it starts the next
  one (at ``SEGMENT_ROTATE`` bytes), so no compaction touches a segment still being written.
- **Reading** (any process): the index says segment, offset and length; the header and body
  are read there and checked (``segment_record.accepts``). A missing segment (compacted away
  meanwhile) is looked up once more; a damaged record is reported so it is dropped.
- **Compaction** (under the cache's housekeeping lock): a segment no writer holds whose live
  records are at most half of it is rewritten into a new segment, the index is pointed at the
  copies (only where it still points at the originals), then the old file is unlinked; one
  with no live record is just unlinked. A reader that opened the old file still reads it; one
  that looks the record up afterwards finds the copy.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.segment_record import (
    ALIGN,
    HEADER_SIZE,
    SEGMENT_ROTATE,
    Location,
    RecordHeader,
    SegmentUse,
    accepts,
    compaction_plan,
    encode_filler,
    encode_header,
    filler_size,
    iter_records,
    parse_header,
    record_size,
)
from .costs import blob_cost

if TYPE_CHECKING:
    from .index import Index, Placed

logger = logging.getLogger("vllm_fetch.cache")

SUFFIX = ".seg"
_MAX_IOV = 512
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
#: The aligned buffer a direct-I/O append copies its records into (a multiple of ALIGN).
STAGE_BYTES = 2 << 20


class Damaged:
    """What ``SegmentStore.read`` returns for a record that is there but not the body."""


DAMAGED = Damaged()


@dataclass
class _Active:
    """The segment this store appends to."""

    name: str
    fd: int
    end: int
    pid: int
    #: groups appended whose index commit has not been settled yet: the segment is not
    #: retired (unlocked, so compactable) while records in it may still be committed
    inflight: int = 0
    #: written with direct I/O (every group starts and ends on an ALIGN boundary)
    direct: bool = False


@dataclass(frozen=True)
class CompactReport:
    segments: int = 0  # segments removed (rewritten or dropped)
    moved: int = 0  # live records copied into new segments
    freed: int = 0  # bytes the removed segments occupied, less what their copies occupy


class SegmentStore:
    """The segment files under ``root`` (``blobs/segments``), located through ``index``."""

    def __init__(self, root: Path, index: Index) -> None:
        self.root = root
        self.index = index
        self._lock = threading.Lock()
        self._active: _Active | None = None
        #: where this process last found (or put) each body: a hint, checked on every read
        self._where: dict[str, tuple[Location, str]] = {}
        #: False once a direct write was refused here: the page cache from then on
        self._direct = bool(_O_DIRECT)
        self._stage: mmap.mmap | None = None

    def after_fork(self) -> None:
        """In a forked child: the parent's segment stays the parent's."""
        self._lock = threading.Lock()
        active, self._active = self._active, None
        if active is not None:
            with contextlib.suppress(OSError):
                os.close(active.fd)  # the child's copy only: the parent's lock stays

    def path(self, name: str) -> Path:
        return self.root / name

    # -- writing ---------------------------------------------------------------------------
    def append(self, items: list[tuple[str, str, bytes | memoryview]]) -> list[Location]:
        """Append records for (sha256, seal, body) and sync the segment once; their locations,
        which the caller records in the index (until then they are invisible). On an error
        nothing is kept: the segment is cut back to where it was, and the OSError raised.
        Every successful call is followed by ``settle()`` once the index commit is done."""
        with self._lock:
            active = self._current()
            start = offset = active.end
            buffers: list[bytes | memoryview] = []
            placed: list[Location] = []
            for sha256, seal, body in items:
                buffers.append(encode_header(sha256, len(body), seal))
                buffers.append(body)
                placed.append(Location(active.name, offset, len(body)))
                offset += record_size(len(body))
            try:
                offset = self._write(active, buffers, start, offset)
                os.fdatasync(active.fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(active.fd, start)
                if not active.inflight:
                    self._retire()
                raise
            active.end = offset
            active.inflight += 1
            return placed

    def _write(self, active: _Active, buffers: list[bytes | memoryview], start: int,
               end: int) -> int:
        """Write the records (``buffers``, ``start`` to ``end``); the segment's new end."""
        if active.direct and start % ALIGN == 0:
            try:
                return self._write_direct(active.fd, buffers, start, end)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                logger.info("direct writes to cache segments in %s are refused (%s); "
                            "writing through the page cache", self.root, exc)
                self._direct = False
        if active.direct:  # refused, or (never expected) not on a boundary: this segment
            active.direct = False  # goes on through the page cache
            _set_direct(active.fd, False)
            os.ftruncate(active.fd, start)
        _pwrite_all(active.fd, buffers, start)
        return end

    def _write_direct(self, fd: int, buffers: list[bytes | memoryview], start: int,
                      end: int) -> int:
        """The records copied into the aligned staging buffer, written from there a buffer at
        a time, the last one completed by a filler up to the next ALIGN boundary."""
        if self._stage is None:
            self._stage = mmap.mmap(-1, STAGE_BYTES)
        stage = memoryview(self._stage)
        pad = filler_size(end)
        if pad:
            buffers = [*buffers, encode_filler(pad)]
        fill, offset = 0, start
        for buffer in buffers:
            source = memoryview(buffer).cast("B")
            taken = 0
            while taken < len(source):
                count = min(len(source) - taken, STAGE_BYTES - fill)
                stage[fill:fill + count] = source[taken:taken + count]
                fill += count
                taken += count
                if fill == STAGE_BYTES:
                    _pwrite_all(fd, [stage], offset)
                    offset += fill
                    fill = 0
        if fill:
            _pwrite_all(fd, [stage[:fill]], offset)
            offset += fill
        return offset

    def settle(self, placed: list[Location]) -> None:
        """The index commit after an ``append`` is done (or failed): a full segment may now be
        retired."""
        with self._lock:
            active = self._active
            if active is None or not placed or placed[0].segment != active.name:
                return
            active.inflight = max(0, active.inflight - 1)
            if active.end >= SEGMENT_ROTATE and not active.inflight:
                self._retire()

    def _current(self) -> _Active:
        """This store's segment, a new one when there is none yet, after a fork, or when the
        one it had was removed meanwhile (``cache clear`` in another process)."""
        active = self._active
        if active is not None and active.pid == os.getpid():
            try:
                if os.fstat(active.fd).st_nlink > 0:
                    return active
            except OSError:
                pass
            if active.inflight:  # its records are uncommitted: append beside it, retire later
                active.inflight = 0
            self._retire()
        self._active = active = self._create()
        return active

    def _create(self) -> _Active:
        """A new segment, locked before it is given its name (so no compaction ever sees it
        unlocked and empty while it is being started)."""
        for _ in range(100):
            name = f"{os.getpid()}-{secrets.token_hex(8)}{SUFFIX}"
            temp = self.root / (name + ".new")
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            except FileNotFoundError:
                self.root.mkdir(parents=True, exist_ok=True)
                continue
            except FileExistsError:
                continue
            try:
                with contextlib.suppress(OSError):  # where locks do nothing: see ``_held``
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(temp, self.root / name)
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
            return _Active(name, fd, 0, os.getpid(), direct=self._direct and _set_direct(fd))
        raise FileExistsError(errno.EEXIST, "no unique segment name", str(self.root))

    def _retire(self) -> None:
        """Stop appending to the current segment (it becomes compactable)."""
        active, self._active = self._active, None
        if active is not None and active.pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(active.fd)

    def close(self) -> None:
        with self._lock:
            self._retire()
            stage, self._stage = self._stage, None
            if stage is not None:
                with contextlib.suppress(BufferError):  # a view still held: freed with it
                    stage.close()

    def placed(self, rows: list[Placed]) -> None:
        """Remember where this process put bodies whose records the index now holds."""
        for sha256, where, seal, _ in rows:
            self._where[sha256] = (where, seal)

    # -- reading ---------------------------------------------------------------------------
    def locate(self, sha256: str, *, fresh: bool = False) -> tuple[Location, str] | None:
        """Where the record of this body is (and its seal): this process's hint, or the index
        (``fresh``: the index only)."""
        if not fresh:
            hint = self._where.get(sha256)
            if hint is not None:
                return hint
        found = self.index.location(sha256)
        if found is None:
            self._where.pop(sha256, None)
        else:
            if len(self._where) > 100_000:
                self._where.clear()  # bounded memory; the index still knows
            self._where[sha256] = found
        return found

    def known(self, shas: list[str]) -> set[str]:
        """Which of these bodies already have a record (this process's hints, then one index
        query for the rest): a store of one of them writes nothing new."""
        hinted = {sha for sha in shas if sha in self._where}
        return hinted | self.index.located([sha for sha in shas if sha not in hinted])

    def read(self, sha256: str, size: int, seal: str | None) -> bytes | Damaged | None:
        """The body, None when no record of it is known (or its segment is gone), or DAMAGED
        when the record there is not the body: the index's record of it is then dropped."""
        found = self.locate(sha256)
        for attempt in range(2):
            if found is None or found[0].length != size:
                return None
            got = self._read_at(found[0], sha256, size, seal or found[1])
            if got is not None:
                return got
            fresher = self.locate(sha256, fresh=True)  # compacted meanwhile?
            if fresher == found or attempt:
                break
            found = fresher
        if found is None:
            return None
        damaged = self.path(found[0].segment).exists()
        if damaged:
            logger.warning("cache segment record of %s is damaged; dropping it", sha256)
        self.forget(sha256, found[0])  # damaged, or its segment was removed (``clear``)
        return DAMAGED if damaged else None

    def _read_at(self, where: Location, sha256: str, size: int,
                 seal: str) -> bytes | Damaged | None:
        try:
            fd = os.open(self.path(where.segment), os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("cannot read cache segment %s: %s", where.segment, exc)
            return None
        try:
            head = os.pread(fd, HEADER_SIZE, where.offset)
            body = os.pread(fd, size, where.offset + HEADER_SIZE)
        except OSError as exc:
            logger.warning("cannot read cache segment %s: %s", where.segment, exc)
            return None
        finally:
            os.close(fd)
        if not accepts(parse_header(head), body, sha256, size, seal):
            return None
        return body

    def check(self, sha256: str, where: Location, seal: str) -> bool | None:
        """Whether the record at ``where`` is whole and its body hashes to ``sha256`` (None when
        its segment is gone); nothing is dropped."""
        got = self._read_at(where, sha256, where.length, seal)
        if got is None and not self.path(where.segment).exists():
            return None
        return isinstance(got, bytes) and hashlib.sha256(got).hexdigest() == sha256

    def holder(self, sha256: str) -> tuple[Path, Location] | None:
        """The segment file holding this body's record, and where in it (None: not in one)."""
        found = self.locate(sha256)
        return None if found is None else (self.path(found[0].segment), found[0])

    def forget(self, sha256: str, where: Location | None = None) -> None:
        """Drop the index's record of this body (its bytes are dead until compaction)."""
        self._where.pop(sha256, None)
        self.index.unplace(sha256, where)

    # -- housekeeping ----------------------------------------------------------------------
    def names(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.root) if e.name.endswith(SUFFIX))
        except FileNotFoundError:
            return []

    def usage(self, live: dict[str, tuple[Location, str, float]]) -> dict[str, SegmentUse]:
        """Each segment file's size, live bytes (records ``live`` points at) and what those
        are charged (``costs.blob_cost`` each)."""
        live_bytes: dict[str, int] = {}
        charged: dict[str, int] = {}
        for where, _, _ in live.values():
            live_bytes[where.segment] = live_bytes.get(where.segment, 0) + record_size(
                where.length)
            charged[where.segment] = charged.get(where.segment, 0) + blob_cost(where.length)
        uses: dict[str, SegmentUse] = {}
        for name in self.names():
            with contextlib.suppress(FileNotFoundError):
                uses[name] = SegmentUse(os.stat(self.path(name)).st_size,
                                        live_bytes.get(name, 0), charged.get(name, 0))
        return uses

    def compact(self, *, live_fraction: float, keep: Callable[[str], bool] = lambda _: False,
                budget: int | None = None) -> CompactReport:
        """Rewrite or drop the segments ``compaction_plan`` picks that no writer holds (this
        store's own current one is retired first when picked). ``keep(sha256)``: records to
        leave where they are (bodies being read in this process): their segment waits.
        ``budget``: stop once this many bytes are freed. The caller holds the housekeeping
        lock, so two compactions never run at once."""
        live = self.index.locations()
        uses = self.usage(live)
        plan = compaction_plan(uses, live_fraction=live_fraction)
        with self._lock:
            active = self._active
            if active is not None and active.name in plan:
                if active.inflight:  # records of it may still be on their way to the index
                    plan.remove(active.name)
                else:
                    self._retire()
        by_segment: dict[str, list[tuple[str, Location, str]]] = {}
        for sha, (where, seal, _) in live.items():
            by_segment.setdefault(where.segment, []).append((sha, where, seal))
        removed = moved = freed = 0
        for name in plan:
            if budget is not None and freed >= budget:
                break
            records = sorted(by_segment.get(name, []), key=lambda r: r[1].offset)
            if any(keep(sha) for sha, _, _ in records):
                continue
            with _held(self.path(name)) as held:
                if not held:
                    continue  # a writer still appends to it
                copied = self._rewrite(name, records) if records else 0
                if copied < 0:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path(name))
            removed += 1
            moved += len(records)
            freed += uses[name].size - copied
        return CompactReport(removed, moved, freed)

    def _rewrite(self, name: str, records: list[tuple[str, Location, str]]) -> int:
        """Copy a segment's live records into a new segment and point the index at them; the
        bytes copied, or -1 when the copies could not be made (the old segment then stays)."""
        keep: list[tuple[str, str, bytes, Location]] = []
        for sha, where, seal in records:
            got = self._read_at(where, sha, where.length, seal)
            if isinstance(got, bytes):
                keep.append((sha, seal, got, where))
            else:  # damaged: never copied, never served
                logger.warning("cache segment record of %s is damaged; dropping it", sha)
                self.forget(sha, where)
        if not keep:
            return 0
        target = SegmentStore(self.root, self.index)  # a segment of its own, held until done
        try:
            placed = target.append([(sha, seal, body) for sha, seal, body, _ in keep])
            if not self.index.move([(sha, old, new) for (sha, _, _, old), new
                                    in zip(keep, placed, strict=True)]):
                return -1  # the index still points at the old segment: it stays
        except OSError as exc:
            logger.warning("cannot compact cache segment %s: %s", name, exc)
            return -1
        finally:
            target.close()
        for sha, _, _, _ in keep:
            self._where.pop(sha, None)
        return sum(record_size(where.length) for where in placed)

    def scan(self, name: str) -> Iterator[tuple[int, RecordHeader]]:
        """The whole records of a segment, in order (for diagnostics and tests)."""
        try:
            data = self.path(name).read_bytes()
        except FileNotFoundError:
            return iter(())
        return iter_records(data)

    def clear(self) -> None:
        """Remove every segment (a writer elsewhere starts a new one on its next group)."""
        with self._lock:
            self._retire()
            self._where.clear()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def _held(path: Path) -> Iterator[bool]:
    """An exclusive, non-blocking flock on a segment: False while a writer holds it. Where
    locks do nothing the answer is always True: compaction then relies on writers retiring
    their segments, as documented in the README."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:
            pass
        yield True
    finally:
        os.close(fd)


def _set_direct(fd: int, on: bool = True) -> bool:
    """Turn direct I/O on (or off) for ``fd``; False when the filesystem does not do it."""
    if not _O_DIRECT:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
    except OSError:
        return False
    return on


def _pwrite_all(fd: int, buffers: list[bytes | memoryview], offset: int) -> None:
    """Write every buffer, in order, from ``offset`` (short writes continued)."""
    pending = [memoryview(b).cast("B") for b in buffers if len(b)]
    while pending:
        batch = pending[:_MAX_IOV]
        written = os.pwritev(fd, batch, offset)
        if written <= 0:
            raise OSError(errno.EIO, "a segment write wrote nothing")
        offset += written
        while written:
            first = pending[0]
            if written >= len(first):
                written -= len(first)
                pending.pop(0)
            else:
                pending[0] = first[written:]
                written = 0
