"""The framing of one body in a segment file, and which segments to compact: no I/O.

A segment (``cache/segments.py``) is an append-only file of records, each a fixed header and
the body's bytes::

    magic (8) | length (8, little-endian) | sha256 (32) | seal (16: xxh3-128 of the body)
    | check (8: xxh3-64 of the 64 bytes before it) | body (length bytes)

The index says where a committed record starts (a ``Location``); a reader takes the header
and the body from there and accepts them only when the header is whole (magic and check), it
names the sha256 and length asked for, and the body matches the header's seal (and the
index's, when it has one). A torn append, a stray write or a record read from the wrong place
is therefore a miss, never a body.

A writer whose segment is written with direct I/O (``O_DIRECT``: no page-cache copy, no
write-back) ends each group on an ``ALIGN`` boundary with a *filler*: a header of its own magic
whose length covers the zero bytes up to the boundary. A filler is never a body (a reader's
``parse_header`` refuses its magic); ``iter_records`` steps over it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import xxhash

MAGIC = b"VFSEG\x01\r\n"
#: The magic of a filler (padding to the next ``ALIGN`` boundary), never a body.
FILLER_MAGIC = b"VFPAD\x01\r\n"
#: Groups written with direct I/O start and end on multiples of this (file offsets and sizes).
ALIGN = 4096
_HEAD = struct.Struct("<8sQ32s16s")
_CHECK = struct.Struct("<Q")
HEADER_SIZE = _HEAD.size + _CHECK.size  # 72
#: Bodies up to this size go into segments; larger ones stay files of their own.
SEGMENT_BODY_MAX = 1 << 20
#: A writer starts a new segment once its current one holds this many bytes.
SEGMENT_ROTATE = 64 << 20
#: A segment is rewritten (compacted) once at most this fraction of it is still live.
COMPACT_LIVE_FRACTION = 0.5


class Location(NamedTuple):
    """Where a record is: the segment's file name, the record's offset, the body's length."""

    segment: str
    offset: int
    length: int


@dataclass(frozen=True)
class RecordHeader:
    sha256: str
    length: int
    seal: str


def record_size(length: int) -> int:
    """Bytes a record of a ``length``-byte body occupies in its segment."""
    return HEADER_SIZE + length


def encode_header(sha256: str, length: int, seal: str) -> bytes:
    """The header of a record for a body with this sha256 (hex), length and seal (hex)."""
    head = _HEAD.pack(MAGIC, length, bytes.fromhex(sha256), bytes.fromhex(seal))
    return head + _CHECK.pack(xxhash.xxh3_64_intdigest(head))


def parse_header(raw: bytes | memoryview) -> RecordHeader | None:
    """The header at the start of ``raw``, or None when it is short, torn, a filler or not a
    header."""
    found = _parse(raw)
    return None if found is None or found[0] != MAGIC else found[1]


def _parse(raw: bytes | memoryview) -> tuple[bytes, RecordHeader] | None:
    """(magic, header) of a whole header of either kind at the start of ``raw``."""
    if len(raw) < HEADER_SIZE:
        return None
    head = bytes(raw[:_HEAD.size])
    magic, length, digest, seal = _HEAD.unpack(head)
    (check,) = _CHECK.unpack_from(raw, _HEAD.size)
    if magic not in (MAGIC, FILLER_MAGIC) or check != xxhash.xxh3_64_intdigest(head):
        return None
    return magic, RecordHeader(digest.hex(), length, seal.hex())


def filler_size(end: int) -> int:
    """Bytes of filler that bring a group ending at offset ``end`` to an ``ALIGN`` boundary:
    0 when it is on one, else at least a header's worth."""
    pad = -end % ALIGN
    return pad + ALIGN if 0 < pad < HEADER_SIZE else pad


def encode_filler(size: int) -> bytes:
    """A filler of ``size`` bytes in all (``size >= HEADER_SIZE``): its header, then zeros."""
    if size < HEADER_SIZE:
        raise ValueError("a filler holds at least a header")
    head = _HEAD.pack(FILLER_MAGIC, size - HEADER_SIZE, bytes(32), bytes(16))
    return head + _CHECK.pack(xxhash.xxh3_64_intdigest(head)) + bytes(size - HEADER_SIZE)


def body_seal(body: bytes | memoryview) -> str:
    """The seal a record's header holds for ``body`` (the cache's seal, ``core.seal``)."""
    return str(xxhash.xxh3_128_hexdigest(body))


def accepts(header: RecordHeader | None, body: bytes | memoryview, sha256: str, length: int,
            seal: str | None) -> bool:
    """Whether a record read back is the body asked for: a whole header naming ``sha256`` and
    ``length``, a body of that length matching the header's seal, and the index's ``seal``
    when one is given (None or "": none kept)."""
    if header is None or header.sha256 != sha256 or header.length != length:
        return False
    if len(body) != length or (seal and seal != header.seal):
        return False
    return body_seal(body) == header.seal


def iter_records(buffer: bytes | memoryview, base: int = 0) -> Iterator[tuple[int, RecordHeader]]:
    """(offset, header) of each whole record in ``buffer`` (a segment's bytes read from offset
    ``base``), in order, fillers stepped over; stops at the first torn or damaged header, or a
    record cut short."""
    view = memoryview(buffer)
    at = 0
    while at + HEADER_SIZE <= len(view):
        found = _parse(view[at:at + HEADER_SIZE])
        if found is None or at + record_size(found[1].length) > len(view):
            return
        if found[0] == MAGIC:
            yield base + at, found[1]
        at += record_size(found[1].length)


@dataclass(frozen=True)
class SegmentUse:
    """A segment's file size and the bytes of its records the index still points at, and
    what those records are charged against the size limit elsewhere (whole blocks each, at
    least their bytes: a group's filler is covered by its bodies' rounding)."""

    size: int
    live: int
    charged: int = 0

    @property
    def dead(self) -> int:
        """Bytes no live record occupies nor is charged for (what compaction would free)."""
        return max(0, self.size - max(self.live, self.charged))


def compaction_plan(
    segments: Mapping[str, SegmentUse], *, live_fraction: float = COMPACT_LIVE_FRACTION
) -> list[str]:
    """The segments worth rewriting, most dead bytes first: every one with no live record,
    and every one whose live share is at most ``live_fraction`` (0 < fraction <= 1) and that
    has dead bytes at all. Segments a writer still appends to are the caller's to leave out."""
    chosen = [name for name, use in segments.items()
              if use.live == 0 or (use.dead > 0 and use.live <= use.size * live_fraction)]
    return sorted(chosen, key=lambda name: (-segments[name].dead, name))
