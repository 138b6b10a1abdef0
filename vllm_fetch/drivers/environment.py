"""What the process environment says about a request (proxies, .netrc), remembered until it
changes. Shared by both drivers.

requests and aiohttp re-read the environment on every request when ``trust_env`` is on:
``urllib.request.getproxies()`` walks and decodes all of ``os.environ`` (twice with the
``NO_PROXY`` check, ~70 µs), and ``.netrc`` is looked up and parsed again; aiohttp even does
both in worker threads, two thread hops per request (~240 µs a fetch measured in
``benchmarks/bench_cache.py``). The answers only change when the environment or the netrc file
does, so each driver computes them with its library's own functions (the library's semantics,
unchanged) and keeps them here, keyed by what they depend on, until a cheap check per request
sees a change: ``os.environ`` compared with a snapshot (~0.2 µs) and a look at each netrc
file the library would read (~1 µs: an ``access`` while it does not exist, which raises
nothing, else a ``stat``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any

#: Answers kept at most for this many keys (hosts) before starting over.
MAX_ENTRIES = 1024

NetrcFiles = Callable[[Mapping[str, str]], tuple[str, ...]]


def _environ_now() -> Mapping[Any, Any]:
    """The live environment mapping, without decoding it (``os.environ``'s own store)."""
    data = getattr(os.environ, "_data", None)
    return data if isinstance(data, dict) else dict(os.environ)


def _stat_key(path: str | bytes) -> tuple[int, int, int, int] | None:
    """What a change of the file at ``path`` changes; None when there is no file there.

    A missing file (the usual netrc) is asked with ``access``: a failing ``stat`` costs an
    ``OSError`` (its message decoded from ``strerror``) on every request."""
    try:
        if not os.access(path, os.F_OK):
            return None
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def _encoded(paths: tuple[str, ...]) -> tuple[str | bytes, ...]:
    """``paths`` as the bytes the system calls take (encoded once, not on every look)."""
    try:
        return tuple(os.fsencode(p) for p in paths)
    except (UnicodeError, TypeError):
        return paths


def home_netrc(names: tuple[str, ...]) -> NetrcFiles:
    """The netrc files a library reads: ``$NETRC``, else each of ``names`` in the home dir."""

    def files(environ: Mapping[str, str]) -> tuple[str, ...]:
        if environ.get("NETRC") is not None:
            return (environ["NETRC"],)
        return tuple(os.path.expanduser(f"~/{name}") for name in names)

    return files


class EnvironmentMemo:
    """Answers that depend only on the environment and the netrc files, per key.

    ``current()`` returns the dict of answers valid now (a fresh one whenever ``os.environ`` or
    a netrc file changed since the last call); callers read and fill it themselves. A value
    computed just before a change may land in the abandoned dict: it is never seen again.
    """

    def __init__(self, netrc_files: NetrcFiles) -> None:
        self._netrc_files = netrc_files
        self._lock = threading.Lock()
        self._environ: dict[Any, Any] | None = None
        self._paths: tuple[str | bytes, ...] = ()
        self._stats: tuple[tuple[int, int, int, int] | None, ...] = ()
        self._values: dict[Hashable, Any] = {}

    def current(self) -> dict[Hashable, Any]:
        environ = getattr(os.environ, "_data", None)  # _environ_now(), one call less
        if not isinstance(environ, dict):
            environ = _environ_now()
        if environ != self._environ:
            with self._lock:
                self._environ = dict(environ)
                self._paths = _encoded(self._netrc_files(os.environ))
                self._stats = tuple(_stat_key(p) for p in self._paths)
                self._values = {}
                return self._values
        stats = tuple(map(_stat_key, self._paths))
        values = self._values
        if stats != self._stats or len(values) > MAX_ENTRIES:
            with self._lock:
                self._stats = stats
                values = self._values = {}
        return values
