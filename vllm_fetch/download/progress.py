"""Download progress: a tqdm bar (one per file) or the caller's callback; thread-safe.

``progress=None`` shows a bar only when stderr is a terminal and ``VLLM_FETCH_DISABLE_PROGRESS``
is not set; ``False`` never; ``True`` always; a callable ``(done_bytes, total_bytes_or_None)`` is
called instead of drawing. ``done`` counts the bytes on disk: it restarts from zero only when the
origin forces a restart (the partial was discarded).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from ..config import env_flag

ProgressCallback = Callable[[int, int | None], None]
ProgressSpec = bool | ProgressCallback | None


def bar_wanted(spec: ProgressSpec) -> bool:
    """Whether ``spec`` asks for a tqdm bar (None: only on a TTY and unless disabled by env)."""
    if spec is None:
        return sys.stderr.isatty() and not env_flag("VLLM_FETCH_DISABLE_PROGRESS")
    return spec is True


class Progress:
    """Counts bytes on disk for one file and reports them to a bar or a callback."""

    def __init__(self, spec: ProgressSpec, name: str) -> None:
        self._callback = spec if callable(spec) else None
        self._bar_wanted = bar_wanted(spec) if self._callback is None else False
        self._name = name
        self._bar: Any = None
        self._lock = threading.Lock()
        self.done = 0
        self.total: int | None = None

    def start(self, total: int | None, done: int) -> None:
        """(Re)start counting at ``done`` of ``total`` bytes."""
        with self._lock:
            self.total, self.done = total, done
            if self._bar_wanted:
                if self._bar is None:
                    self._bar = tqdm(total=total, initial=done, unit="B", unit_scale=True,
                                     unit_divisor=1024, desc=self._name, leave=True,
                                     dynamic_ncols=True)
                else:
                    self._bar.reset(total=total)
                    self._bar.update(done)
            self._report()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            if self._bar is not None:
                self._bar.update(nbytes)
            self._report()

    def _report(self) -> None:
        if self._callback is not None:
            self._callback(self.done, self.total)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
