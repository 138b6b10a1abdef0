"""The cache's tenant secret: keys of responses to requests with credentials include a keyed
hash (HMAC-SHA256) of those credentials, never the credentials themselves.

The secret is 32 random bytes in ``<cache dir>/tenant.key`` (mode 0600), made once and shared
by every process using the directory, so one tenant's entries are found by that tenant in any
process. Without the file, a guess of the credentials cannot be checked against the index.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import threading
from pathlib import Path

logger = logging.getLogger("vllm_fetch.cache")

_KEY_FILE = "tenant.key"
_KEY_BYTES = 32


class TenantKeys:
    """Turns credential material into the tenant part of a cache key."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / _KEY_FILE
        self._secret: bytes | None = None
        self._lock = threading.Lock()

    def tag(self, material: bytes) -> str:
        """"" for no credentials, else the keyed hash that names these credentials' entries."""
        if not material:
            return ""
        return hmac.new(self._key(), material, hashlib.sha256).hexdigest()

    def _key(self) -> bytes:
        secret = self._secret
        if secret is None:
            with self._lock:
                secret = self._secret
                if secret is None:
                    try:
                        secret = _load_or_create(self._path)
                    except OSError as exc:  # entries of this process only: never an error
                        logger.warning("cache tenant key %s is unusable (%s); responses to "
                                       "requests with credentials are kept for this process "
                                       "only", self._path, exc)
                        secret = secrets.token_bytes(_KEY_BYTES)
                    self._secret = secret
        return secret


def _load_or_create(path: Path) -> bytes:
    """Read the secret, or make it: written to a temp file, then linked into place (exactly
    one process creates it; a reader never sees half of it)."""
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(_KEY_BYTES))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return _read(path)


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    if len(data) < _KEY_BYTES:
        raise OSError(f"{path} is damaged (delete it: entries of requests with credentials "
                      "are then fetched again)")
    return data
