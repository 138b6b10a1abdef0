"""What ``HTTPConnection(cache=...)`` means, resolved once and lazily.

``None``: the default cache (``$VLLM_FETCH_CACHE_DIR`` or the user cache dir) unless
``VLLM_FETCH_DISABLE_CACHE=1``; ``True``: the default cache; ``False``: none; a path: a cache
there; a ``FetchCache``: that one. Default caches are opened on first use (importing vllm_fetch
touches no disk) and shared by every connection in the process that uses the same directory;
an explicit directory is opened at once, so a bad one fails the constructor.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from pathlib import Path
from typing import Union

from ..config import env_flag
from .fetch_cache import FetchCache, default_cache_dir

logger = logging.getLogger("vllm_fetch.cache")

CacheArg = Union[FetchCache, str, "os.PathLike[str]", bool, None]

_shared: dict[Path, FetchCache] = {}
_shared_lock = threading.Lock()


def _close_shared() -> None:
    """At exit: commit queued stores and close the index connections of the shared caches
    (an SQLite connection collected unclosed is a ResourceWarning on Python 3.13: fault D7)."""
    with _shared_lock:
        caches = list(_shared.values())
    for cache in caches:
        try:
            cache.close()
        except Exception as exc:  # exiting anyway: never a traceback for this
            logger.warning("cannot close the cache in %s: %s", cache.directory, exc)


atexit.register(_close_shared)


def shared_cache(directory: Path) -> FetchCache:
    """The process-wide FetchCache for ``directory`` (one index connection set, one pin table)."""
    key = directory.expanduser().absolute()
    with _shared_lock:
        cache = _shared.get(key)
        if cache is None:
            cache = _shared[key] = FetchCache(key)
        return cache


class CacheSetting:
    """A connection's cache choice; ``get()`` opens it the first time it is needed."""

    def __init__(self, cache: CacheArg) -> None:
        if not isinstance(cache, (FetchCache, str, os.PathLike, bool, type(None))):
            raise TypeError(f"cache must be a FetchCache, a path, a bool or None, not {cache!r}")
        self._arg = cache
        self._cache: FetchCache | None = cache if isinstance(cache, FetchCache) else None
        self._resolved = isinstance(cache, FetchCache) or cache is False
        self._lock = threading.Lock()
        if isinstance(cache, (str, os.PathLike)):
            self.get()  # an explicit directory that cannot be used is an error here, not later

    def get(self) -> FetchCache | None:
        if self._resolved:
            return self._cache
        with self._lock:
            if not self._resolved:
                self._cache = self._open()
                self._resolved = True
        return self._cache

    def _open(self) -> FetchCache | None:
        arg = self._arg
        if isinstance(arg, (str, os.PathLike)):
            return shared_cache(Path(arg))
        if arg is None and env_flag("VLLM_FETCH_DISABLE_CACHE"):
            return None
        directory = default_cache_dir()
        try:
            return shared_cache(directory)
        except OSError as exc:
            logger.warning("cannot open the cache in %s (%s); caching is off", directory, exc)
            return None
