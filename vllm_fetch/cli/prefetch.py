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
from ..errors import FetchError
from .manifest import ManifestEntry, ManifestError, resolve_target

logger = logging.getLogger("vllm_fetch.prefetch")


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
    """Download one entry; ``options`` go to :meth:`HTTPConnection.fetch_file`."""
    if entry.url.startswith("hf://"):  # Hugging Face repos and files: vllm_fetch.cli.hub
        from .hub import fetch_manifest_entry
        where, error = fetch_manifest_entry(conn, entry, directory, **options)
        return PrefetchOutcome(entry, where, error=error)
    target = directory.joinpath(*entry.path.parts)
    try:
        target = resolve_target(directory, entry)  # again: a link may have appeared since
        result = conn.fetch_file(entry.url, target, expected_sha256=entry.sha256,
                                 progress=False, **options)
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
    **options: Any,
) -> list[PrefetchOutcome]:
    """Download every entry into ``directory``, ``jobs`` at once; outcomes in manifest order.
    ``on_done`` sees each outcome as it completes."""
    if jobs < 1:
        raise ValueError("jobs must be >= 1")
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="vllm-fetch-prefetch") as pool:
        futures = [pool.submit(fetch_entry, conn, entry, directory, **options) for entry in entries]
        for future in as_completed(futures):
            if on_done is not None:
                on_done(future.result())
    return [future.result() for future in futures]
