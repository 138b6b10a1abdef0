"""The HTTP side of a snapshot: one metadata request, then files in parallel (threads for
the sync side, tasks for the async side), each through ``download_file`` (ranges, resume,
sha256, the shared cache). Decisions live in :mod:`.job`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from ..connections import HTTPConnection
from .job import Bytes, Job, Progress
from .plan import RepoEntry

#: After Ctrl-C, how long the running files get to stop at their next block (checkpointing
#: their partials) before the interrupt is raised anyway, in seconds.
STOP_GRACE = 10.0


class SnapshotInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sync snapshot: the files that were running stopped at their next
    block, their partials kept for the next run to resume; queued files never started.
    ``running`` counts files that had not stopped within :data:`STOP_GRACE` seconds."""

    def __init__(self, complete: int, total: int, running: int = 0) -> None:
        super().__init__(f"{complete} of {total} files complete, {total - complete} left")
        self.complete, self.total, self.running = complete, total, running


class _FileStopped(KeyboardInterrupt):
    """Raised in a running file's transfer (from its progress) once the snapshot was
    interrupted: the download ends as a Ctrl-C ends it, its partial kept."""


def _stoppable(update: Callable[[int, int | None], None], stop: threading.Event
               ) -> Callable[[int, int | None], None]:
    def report(done: int, total: int | None) -> None:
        if stop.is_set():
            raise _FileStopped
        update(done, total)
    return report


def _complete(groups: list[list[RepoEntry]], futures: list[Future[None]]) -> int:
    return sum(len(group) for group, future in zip(groups, futures, strict=True)
               if future.done() and not future.cancelled() and future.exception() is None)


def run(job: Job, http: HTTPConnection, *, connections: int | None, max_workers: int,
        progress: Progress) -> Path:
    done = job.local_answer()
    if done is not None:
        return done
    todo = job.accept_info(http.get_text(job.info_url(), extra_headers=job.headers,
                                         use_cache=False))
    bar = Bytes(sum(e.size for e in todo), progress)
    stop = threading.Event()

    def one(group: list[RepoEntry]) -> None:
        entry = group[0]
        target = job.download_target(entry)
        got = http.download_file(
            job.file_url(entry), target, extra_headers=job.headers,
            expected_sha256=entry.sha256, expected_size=entry.size,
            connections=connections, progress=_stoppable(bar.for_file(), stop))
        job.publish(group, got)

    groups = job.transfers(todo)
    pool = ThreadPoolExecutor(max(1, max_workers), thread_name_prefix="hf-file")
    futures: list[Future[None]] = []
    try:
        futures = [pool.submit(one, g) for g in groups]
        for future in futures:
            future.result()
    except KeyboardInterrupt:  # Ctrl-C: start no other file, stop the running ones
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        running = len(wait(futures, timeout=STOP_GRACE).not_done)
        total = len(job.selected())
        complete = total - len(todo) + _complete(groups, futures)
        raise SnapshotInterrupted(complete, total, running) from None
    except BaseException:  # a failed file: start no other, let the running ones end
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        bar.close()
    return job.result()


async def arun(job: Job, http: HTTPConnection, *, connections: int | None, max_workers: int,
               progress: Progress) -> Path:
    done = await asyncio.to_thread(job.local_answer)
    if done is not None:
        return done
    info = await http.async_get_text(job.info_url(), extra_headers=job.headers, use_cache=False)
    todo = await asyncio.to_thread(job.accept_info, info)
    bar = Bytes(sum(e.size for e in todo), progress)
    gate = asyncio.Semaphore(max(1, max_workers))

    async def one(group: list[RepoEntry]) -> None:
        entry = group[0]
        async with gate:
            target = await asyncio.to_thread(job.download_target, entry)
            got = await http.async_download_file(
                job.file_url(entry), target, extra_headers=job.headers,
                expected_sha256=entry.sha256, expected_size=entry.size,
                connections=connections, progress=bar.for_file())
            await asyncio.to_thread(job.publish, group, got)

    try:
        await asyncio.gather(*(one(g) for g in job.transfers(todo)))
    finally:
        bar.close()
    return job.result()
