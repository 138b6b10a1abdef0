"""The seal: a fast checksum of a stored body, kept in the index and checked on every read.

The sha256 names a blob (its address); the seal proves that the bytes read back are the bytes
that were stored. xxh3-128 costs ~1.7 us per 100 KB where sha256 costs ~57, so a cache hit can
afford it every time. An entry written before seals existed has an empty seal: its bytes are
checked against the sha256 instead (slower, still correct).
"""

from __future__ import annotations

import hashlib
import os

import xxhash

from ..core.seal import seal_of

_CHUNK = 1 << 20


def seal_fd(fd: int) -> str:
    """The seal of a whole open file, read from its start (positional reads: the fd's offset
    is left alone)."""
    hasher = xxhash.xxh3_128()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        hasher.update(chunk)
        offset += len(chunk)
    return hasher.hexdigest()


def seal_file(path: str | os.PathLike[str]) -> str:
    """The seal of the file at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return seal_fd(fd)
    finally:
        os.close(fd)


def sha256_fd(fd: int) -> str:
    """The sha256 of a whole open file (for blobs stored without a seal)."""
    hasher = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        hasher.update(chunk)
        offset += len(chunk)
    return hasher.hexdigest()


def matches(data: bytes | memoryview, sha256: str, seal: str) -> bool:
    """Whether ``data`` is the body stored with this sha256 and seal ("" when none was kept)."""
    if seal:
        return seal_of(data) == seal
    return hashlib.sha256(data).hexdigest() == sha256


def fd_matches(fd: int, sha256: str, seal: str) -> bool:
    """``matches`` for a whole open file."""
    return seal_fd(fd) == seal if seal else sha256_fd(fd) == sha256


__all__ = ["fd_matches", "matches", "seal_fd", "seal_file", "seal_of", "sha256_fd"]
