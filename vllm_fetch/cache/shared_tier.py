"""A read-only shared cache tier (``VLLM_FETCH_SHARED_CACHE=DIR``): blobs another machine filled.

``DIR`` is a vllm_fetch cache directory (or a copy of its ``blobs/``), e.g. on a shared mount.
A download whose ``expected_sha256`` names a blob there is published from it, the bytes hashed
while they are copied: a blob that does not hash to its name (or has the wrong size) is never
published, and the download goes to the network. Nothing there is ever written, locked or
removed, so a fleet may share one pre-filled store without locks.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from ..config import env_str
from ..core.results import DownloadResult
from ..errors import DiskError
from ..files import create_temp, fsync_fd, publish, remove_quietly, write_all
from .blobs import is_sha256

logger = logging.getLogger("vllm_fetch.cache")

_CHUNK = 1 << 20


class SharedTier:
    """Blobs under ``root/blobs`` (the cache layout: ``ab/cdef…`` for sha256 ``abcdef…``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    def from_env(cls) -> SharedTier | None:
        configured = env_str("VLLM_FETCH_SHARED_CACHE")
        return cls(Path(configured).expanduser()) if configured else None

    def path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256[2:]

    def publish_to(self, sha256: str, target: Path, url: str,
                   expected_size: int | None = None) -> DownloadResult | None:
        """Publish the blob named ``sha256`` at ``target`` (temp file, fsync, rename) if it is
        there and its bytes hash to its name; else None (nothing left at ``target``)."""
        if not is_sha256(sha256):
            return None
        source = self.path(sha256)
        try:
            src = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        try:
            size = os.fstat(src).st_size
            if expected_size is not None and size != expected_size:
                return None
            fd, temp = create_temp(target)
            try:
                digest, copied = hashlib.sha256(), 0
                while chunk := os.read(src, _CHUNK):
                    digest.update(chunk)
                    write_all(fd, chunk, temp)
                    copied += len(chunk)
                if digest.hexdigest() != sha256 or copied != size:
                    logger.warning("shared cache blob %s does not match its sha256: not used",
                                   source)
                    return None
                fsync_fd(fd, temp)
                os.close(fd)
                fd = -1
                publish(temp, target)
            finally:
                if fd >= 0:
                    os.close(fd)
                remove_quietly(temp)
        except DiskError:
            raise  # the target cannot be written: the network would not help
        except OSError as exc:
            logger.warning("cannot read shared cache blob %s: %s", source, exc)
            return None
        finally:
            os.close(src)
        headers = {"Content-Length": str(size)}
        return DownloadResult(target, size, sha256, 200, headers, url, from_cache=True)
