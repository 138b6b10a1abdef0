"""Fetch every entry of a manifest concurrently; one failure never stops the others."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..connections import HTTPConnection
from ..core.urls import redact_url
from ..download.progress import ProgressCallback
from ..errors import FetchError
from .manifest import ManifestEntry, ManifestError, resolve_target

logger = logging.getLogger("vllm_fetch.prefetch")


class PrefetchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a prefetch: the outcomes finished so far, and how many entries were left
    (running ones stopped with their partials kept; queued ones never started)."""

    def __init__(self, finished: list[PrefetchOutcome], left: int) -> None:
        super().__init__(f"{left} left")
        self.finished, self.left = finished, left


@dataclass(frozen=True)
class PrefetchOutcome:
    """How one manifest entry ended: ``error`` is None on success."""

    entry: ManifestEntry
    target: Path
    error: str | None = None
    from_cache: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def fetch_entry(conn: HTTPConnection, entry: ManifestEntry, directory: Path,
                **options: Any) -> PrefetchOutcome:
    """Download one entry; ``options`` (``progress`` among them) go to
    :meth:`HTTPConnection.fetch_file`."""
    if entry.url.startswith("hf://"):  # Hugging Face repos and files: vllm_fetch.cli.hub
        from .hub import fetch_manifest_entry
        where, error = fetch_manifest_entry(conn, entry, directory, **options)
        return PrefetchOutcome(entry, where, error=error)
    target = directory.joinpath(*entry.path.parts)
    try:
        target = resolve_target(directory, entry)  # again: a link may have appeared since
        result = conn.fetch_file(entry.url, target, expected_sha256=entry.sha256, **options)
    except (FetchError, ManifestError, OSError) as exc:
        logger.debug("prefetch of %s failed", redact_url(entry.url), exc_info=True)
        return PrefetchOutcome(entry, target, error=f"{type(exc).__name__}: {exc}")
    return PrefetchOutcome(entry, target, from_cache=result.from_cache)


def prefetch(
    conn: HTTPConnection,
    entries: Sequence[ManifestEntry],
    directory: Path,
    *,
    jobs: int = 4,
    on_done: Callable[[PrefetchOutcome], None] | None = None,
    progress_for: Callable[[int], ProgressCallback] | None = None,
    **options: Any,
) -> list[PrefetchOutcome]:
    """Download every entry into ``directory``, ``jobs`` at once; outcomes in manifest order.
    ``on_done`` sees each outcome as it completes; ``progress_for(n)`` gives entry n's byte
    progress callback. On Ctrl-C, queued entries are cancelled and
    ``PrefetchInterrupted`` is raised at once (running transfers are not waited for: the
    caller exits, and their partials stay for the next run to resume)."""
    if jobs < 1:
        raise ValueError("jobs must be >= 1")
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="vllm-fetch-prefetch")
    futures = []
    finished: list[PrefetchOutcome] = []
    try:
        futures = [pool.submit(fetch_entry, conn, entry, directory,
                               progress=False if progress_for is None else progress_for(n),
                               **options)
                   for n, entry in enumerate(entries)]
        for future in as_completed(futures):
            finished.append(future.result())
            if on_done is not None:
                on_done(finished[-1])
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise PrefetchInterrupted(finished, len(entries) - len(finished)) from None
    pool.shutdown()
    return [future.result() for future in futures]
