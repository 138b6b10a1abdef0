"""Hugging Face Hub repos into the cache vLLM and huggingface_hub read.

``snapshot()`` fetches a repo at a revision into ``$HF_HUB_CACHE`` in huggingface_hub's exact
layout (or plain files under ``local_dir``); ``file()`` fetches one file. Files go in parallel,
large ones in parallel ranges, every one verified (LFS by sha256, git files by blob id)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..connections import HTTPConnection, global_http_connection
from .job import HubEntryNotFoundError, Job, Progress
from .names import HubNameError, HubURL, parse_hf_url
from .runner import SnapshotInterrupted, arun, run

__all__ = ["HubEntryNotFoundError", "HubNameError", "HubURL", "SnapshotInterrupted", "async_file",
           "async_snapshot", "file", "parse_hf_url", "snapshot"]

PathArg = str | os.PathLike[str] | None


def _job(repo_id: str, revision: str, repo_type: str, allow: str | Sequence[str] | None,
         ignore: str | Sequence[str] | None, cache_dir: PathArg, local_dir: PathArg,
         token: str | bool | None, endpoint: str | None, only: str | None = None) -> Job:
    return Job(repo_id, revision, repo_type, allow, ignore, cache_dir, local_dir, token,
               endpoint, only)


def snapshot(repo_id: str, *, revision: str = "main", repo_type: str = "model",
             allow_patterns: str | Sequence[str] | None = None,
             ignore_patterns: str | Sequence[str] | None = None, cache_dir: PathArg = None,
             local_dir: PathArg = None, token: str | bool | None = None,
             endpoint: str | None = None, connections: int | None = None,
             max_workers: int = 8, progress: Progress = None,
             http: HTTPConnection | None = None) -> Path:
    """Fetch a repo at ``revision`` and return its snapshot directory (or ``local_dir``).

    A complete snapshot costs one metadata request (none for a commit hash, none offline
    with ``HF_HUB_OFFLINE=1``). ``token``: None reads HF_TOKEN then the token file, False
    sends none; it goes to the Hub endpoint only, never to the CDN a file redirects to.
    On Ctrl-C the running files stop at their next block, their partials kept for the next
    call to resume, and :class:`SnapshotInterrupted` (a ``KeyboardInterrupt``) is raised.
    """
    job = _job(repo_id, revision, repo_type, allow_patterns, ignore_patterns, cache_dir,
               local_dir, token, endpoint)
    return run(job, http or global_http_connection, connections=connections,
               max_workers=max_workers, progress=progress)


def file(repo_id: str, filename: str, *, revision: str = "main", repo_type: str = "model",
         cache_dir: PathArg = None, local_dir: PathArg = None, token: str | bool | None = None,
         endpoint: str | None = None, connections: int | None = None,
         progress: Progress = None, http: HTTPConnection | None = None) -> Path:
    """Fetch one file of a repo; its path in the snapshot (or under ``local_dir``)."""
    job = _job(repo_id, revision, repo_type, None, None, cache_dir, local_dir, token,
               endpoint, only=filename)
    return run(job, http or global_http_connection, connections=connections, max_workers=1,
               progress=progress)


async def async_snapshot(repo_id: str, *, revision: str = "main", repo_type: str = "model",
                         allow_patterns: str | Sequence[str] | None = None,
                         ignore_patterns: str | Sequence[str] | None = None,
                         cache_dir: PathArg = None, local_dir: PathArg = None,
                         token: str | bool | None = None, endpoint: str | None = None,
                         connections: int | None = None, max_workers: int = 8,
                         progress: Progress = None, http: HTTPConnection | None = None) -> Path:
    """Async twin of :func:`snapshot`."""
    job = _job(repo_id, revision, repo_type, allow_patterns, ignore_patterns, cache_dir,
               local_dir, token, endpoint)
    return await arun(job, http or global_http_connection, connections=connections,
                      max_workers=max_workers, progress=progress)


async def async_file(repo_id: str, filename: str, *, revision: str = "main",
                     repo_type: str = "model", cache_dir: PathArg = None,
                     local_dir: PathArg = None, token: str | bool | None = None,
                     endpoint: str | None = None, connections: int | None = None,
                     progress: Progress = None, http: HTTPConnection | None = None) -> Path:
    """Async twin of :func:`file`."""
    job = _job(repo_id, revision, repo_type, None, None, cache_dir, local_dir, token,
               endpoint, only=filename)
    return await arun(job, http or global_http_connection, connections=connections,
                      max_workers=1, progress=progress)
