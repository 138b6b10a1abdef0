"""``hf://org/name[@revision][/path]`` in the CLI: ``get``, ``prefetch`` (a repo with
``--include``/``--exclude``/``--local-dir``) and manifest entries, all through
:mod:`vllm_fetch.hub` (into the Hugging Face cache, or plain files in a local dir)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from .. import hub
from ..connections import HTTPConnection
from ..errors import FetchError
from .manifest import ManifestEntry, ManifestError, safe_relative_path

logger = logging.getLogger("vllm_fetch.prefetch")


def is_hf_url(text: object) -> bool:
    return isinstance(text, str) and text.startswith("hf://")


def manifest_or_hf(text: str) -> Path | str:
    """argparse type for prefetch's argument: an ``hf://`` URL stays a string."""
    return text if is_hf_url(text) else Path(text)


def add_hub_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include", action="append", metavar="GLOB",
                        help="hf:// repos: only files matching (repeatable)")
    parser.add_argument("--exclude", action="append", metavar="GLOB",
                        help="hf:// repos: skip files matching (repeatable)")
    parser.add_argument("--local-dir", type=Path,
                        help="hf:// repos: plain files here instead of the Hugging Face cache")


def _fetch(conn: HTTPConnection, url: str, *, local_dir: Path | None = None,
           include: list[str] | None = None, exclude: list[str] | None = None,
           connections: int | None = None, progress: bool | None = None) -> Path:
    ref = hub.parse_hf_url(url)
    if ref.path is not None:
        return hub.file(ref.repo_id, ref.path, revision=ref.revision, repo_type=ref.repo_type,
                        local_dir=local_dir, connections=connections, progress=progress,
                        http=conn)
    return hub.snapshot(ref.repo_id, revision=ref.revision, repo_type=ref.repo_type,
                        allow_patterns=include, ignore_patterns=exclude, local_dir=local_dir,
                        connections=connections, progress=progress, http=conn)


def _interrupted(stop: hub.SnapshotInterrupted) -> int:
    """Ctrl-C during a snapshot: one line, exit 130."""
    from . import EXIT_INTERRUPTED

    print(f"vllm-fetch: interrupted: {stop} (partial downloads kept: run again to resume)",
          file=sys.stderr, flush=True)
    if stop.running:  # a file that did not stop in time would hold the exit: leave as a kill
        os._exit(EXIT_INTERRUPTED)  # would (every file is published atomically)
    return EXIT_INTERRUPTED


def cmd_get_hf(conn: HTTPConnection, args: argparse.Namespace) -> int:
    """``get hf://...``: into the Hugging Face cache (``-o DIR``: plain files in DIR)."""
    try:
        path = _fetch(conn, args.url, local_dir=args.output, connections=args.connections)
    except hub.SnapshotInterrupted as stop:
        return _interrupted(stop)
    print(f"{args.url} -> {path}")
    return 0


def cmd_prefetch_hf(conn: HTTPConnection, args: argparse.Namespace) -> int:
    """``prefetch hf://org/name``: the repo (``--include``/``--exclude``, ``--local-dir``)."""
    try:
        path = _fetch(conn, args.manifest, local_dir=args.local_dir, include=args.include,
                      exclude=args.exclude, progress=None if sys.stderr.isatty() else False)
    except hub.SnapshotInterrupted as stop:
        return _interrupted(stop)
    print(f"{args.manifest} -> {path}")
    return 0


def manifest_entry(url: str, sha256: str | None, path: str | None, where: str
                   ) -> ManifestEntry:
    """A manifest line ``hf://... [PATH]``: PATH (under -d) is a local dir of plain files;
    without it the files go to the Hugging Face cache."""
    try:
        hub.parse_hf_url(url)
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    if sha256 is not None:
        raise ManifestError(f"{where}: hf:// entries are verified by the Hub's hashes; "
                            "drop the SHA256 field")
    target = safe_relative_path(path, where) if path else PurePosixPath(".")
    return ManifestEntry(url=url, path=target, where=where)


def fetch_manifest_entry(conn: HTTPConnection, entry: ManifestEntry, directory: Path,
                         **options: Any) -> tuple[Path, str | None]:
    """Fetch an hf:// manifest entry: (where it went, error text or None)."""
    local = directory.joinpath(*entry.path.parts) if entry.path.parts else None
    try:
        return _fetch(conn, entry.url, local_dir=local, progress=False), None
    except (FetchError, ValueError, OSError) as exc:
        logger.debug("prefetch of %s failed", entry.url, exc_info=True)
        return local or directory, f"{type(exc).__name__}: {exc}"
