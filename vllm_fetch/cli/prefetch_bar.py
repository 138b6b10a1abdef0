"""The prefetch progress bar: bytes on disk across every file (rate, ETA), files done beside."""

from __future__ import annotations

import threading
from typing import IO, Any

from tqdm import tqdm

from ..download.progress import ProgressCallback


class PrefetchBar:
    """One bar for a whole prefetch. Each file reports ``(done_bytes, total_or_None)`` through
    :meth:`for_entry`; the bar's total grows as the files' sizes become known."""

    def __init__(self, files: int, *, enabled: bool, file: IO[str] | None = None,
                 label: str = "prefetch") -> None:
        self._bar: tqdm[Any] = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024,
                                    desc=label, disable=not enabled, file=file,
                                    dynamic_ncols=True)
        self._files, self._finished = files, 0
        self._done: dict[int, int] = {}
        self._totals: dict[int, int] = {}
        self._lock = threading.Lock()
        self._show_files()

    def for_entry(self, number: int) -> ProgressCallback:
        def report(done: int, total: int | None) -> None:
            with self._lock:
                if total is not None and self._totals.get(number) != total:
                    self._totals[number] = total
                    self._bar.total = sum(self._totals.values())
                delta = done - self._done.get(number, 0)  # < 0 when a download restarts
                self._done[number] = done
                self._bar.update(delta)
        return report

    def file_done(self) -> None:
        with self._lock:
            self._finished += 1
            self._show_files()

    def _show_files(self) -> None:
        self._bar.set_postfix_str(f"{self._finished}/{self._files} files", refresh=True)

    def write(self, line: str, file: IO[str] | None = None) -> None:
        self._bar.write(line, file=file)

    def close(self) -> None:
        self._bar.close()
