"""The HTTP side of a snapshot: one metadata request, then files in parallel (threads for
the sync side, tasks for the async side), each through ``download_file`` (ranges, resume,
sha256, the shared cache). Decisions live in :mod:`.job`."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..connections import HTTPConnection
from .job import Bytes, Job, Progress
from .plan import RepoEntry


def run(job: Job, http: HTTPConnection, *, connections: int | None, max_workers: int,
        progress: Progress) -> Path:
    done = job.local_answer()
    if done is not None:
        return done
    todo = job.accept_info(http.get_json(job.info_url(), extra_headers=job.headers,
                                         use_cache=False))
    bar = Bytes(sum(e.size for e in todo), progress)

    def one(group: list[RepoEntry]) -> None:
        entry = group[0]
        target = job.download_target(entry)
        got = http.download_file(
            job.file_url(entry), target, extra_headers=job.headers,
            expected_sha256=entry.sha256, expected_size=entry.size,
            connections=connections, progress=bar.for_file())
        job.publish(group, got)

    pool = ThreadPoolExecutor(max(1, max_workers), thread_name_prefix="hf-file")
    try:
        for future in [pool.submit(one, g) for g in job.transfers(todo)]:
            future.result()
    except KeyboardInterrupt:  # Ctrl-C: return at once, start no other file; partials stay
        pool.shutdown(wait=False, cancel_futures=True)
        raise
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
    info = await http.async_get_json(job.info_url(), extra_headers=job.headers, use_cache=False)
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
