"""The async download engine: aiohttp and tasks around :class:`Transfer`.

The twin of :mod:`.sync_engine`. File work (claiming a partial, re-hashing, positional writes,
fsync and rename) runs in worker threads so the event loop never blocks on the disk; bytes are
gathered into batches of ``WRITE_BATCH`` so each thread hop carries a useful amount.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

from ..core.request import FetchRequest
from ..core.results import DownloadResult
from ..errors import DiskError, IntegrityError
from ..retry_loop import async_retrying
from .locking import TargetLock
from .options import DownloadOptions
from .partials import Partial
from .progress import Progress
from .transfer import RangeRefused, Step, Stream, Transfer, parts_done

if TYPE_CHECKING:
    from ..drivers.aiohttp_driver import AiohttpDriver

#: Bytes gathered before one positional write in a worker thread (one stream, then each part:
#: smaller, as up to 8 parts buffer at once and peak memory must stay low).
WRITE_BATCH = 2 * 1024 * 1024
PART_WRITE_BATCH = 1024 * 1024
MAX_REQUESTS_PER_ATTEMPT = 4
T = TypeVar("T")


async def _off_loop(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run file work in a thread and wait for it even if cancelled: a write still in flight
    must never outlive the file descriptor it uses."""
    future = asyncio.ensure_future(asyncio.to_thread(func, *args, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


async def download(driver: AiohttpDriver, req: FetchRequest, target: Path,
                   options: DownloadOptions) -> DownloadResult:
    """Download ``req.url`` to ``target``: one transfer per machine, resumed, verified."""
    lock = TargetLock(target, req.url)
    progress = Progress(options.progress, target.name)
    try:
        async with lock.ahold(req.deadline):
            reused = await _off_loop(lock.reusable, req.expected_sha256, req.expected_size)
            if reused is not None:
                return reused
            partial = await _off_loop(Partial.claim, target, req.url, resume=options.resume)
            transfer = Transfer(req, partial, options, progress)
            try:
                result: DownloadResult = await async_retrying(
                    options.retry, req.deadline, "download", req.url)(_attempt, driver, transfer)
            except BaseException as exc:
                await _off_loop(transfer.abandon, exc)
                raise
            await _off_loop(lock.record, result)
            return result
    finally:
        progress.close()


async def _attempt(driver: AiohttpDriver, transfer: Transfer) -> DownloadResult:
    async with driver.call_session() as session:
        for _ in range(MAX_REQUESTS_PER_ATTEMPT):
            request = await _off_loop(transfer.next_request)
            if request is None:
                return await _run_parts(driver, session, transfer, None)
            async with await driver.open(session, request) as response:
                stream = await _off_loop(transfer.on_response, response.status,
                                         response.headers, str(response.url))
                if stream.step is Step.AGAIN:
                    continue
                if stream.step is Step.PARALLEL:
                    try:
                        return await _run_parts(driver, session, transfer, (response, stream))
                    except RangeRefused:
                        await _off_loop(transfer.fall_back)
                        continue
                if stream.step is Step.STREAM:
                    await _stream(driver, transfer, response, stream, request, None)
                return await _off_loop(transfer.finish, stream)
    raise IntegrityError(f"{transfer.safe_url} keeps answering unusable ranges",
                         url=transfer.safe_url)


async def _stream(driver: AiohttpDriver, transfer: Transfer, response: aiohttp.ClientResponse,
                  stream: Stream, request: FetchRequest, part: int | None) -> None:
    """Write the body at the stream's position in batches (up to ``stream.limit``); ``part``
    is the index of the part it fills, None for one sequential stream."""
    batch: list[bytes] = []
    batched = 0
    batch_size = WRITE_BATCH if part is None else PART_WRITE_BATCH

    async def flush() -> None:
        nonlocal batch, batched
        if batched:
            chunks, size = batch, batched
            batch, batched = [], 0
            await _off_loop(transfer.partial.write_chunks, chunks, stream.position)
            if part is None:
                transfer.advance(stream, size)
            else:
                transfer.advance_part(part, stream, size)
                await _off_loop(transfer.hash_ahead)

    try:
        async for chunk in driver.iter_body(response, stream.meter, request):
            if stream.limit is not None:
                chunk = chunk[: stream.limit - stream.position - batched]
            batch.append(chunk)
            batched += len(chunk)
            if batched >= batch_size:
                await flush()
            if stream.limit is not None and stream.position + batched >= stream.limit:
                break
        await flush()
    except BaseException as exc:
        if not isinstance(exc, DiskError):
            await flush()  # the bytes that did arrive are good (cancelled too): keep them
        raise
    finally:
        transfer.interrupted(stream)


async def _run_parts(driver: AiohttpDriver, session: aiohttp.ClientSession, transfer: Transfer,
                     first: tuple[aiohttp.ClientResponse, Stream] | None) -> DownloadResult:
    """``transfer.workers`` tasks pull parts in file order (one takes part 0 from ``first``'s
    body when given); then verify and publish."""
    tasks = [asyncio.create_task(_worker(driver, session, transfer, None))
             for _ in range(transfer.workers - 1)]
    tasks.append(asyncio.create_task(_worker(driver, session, transfer, first)))
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return await _off_loop(transfer.finish, parts_done(transfer))


async def _worker(driver: AiohttpDriver, session: aiohttp.ClientSession, transfer: Transfer,
                  first: tuple[aiohttp.ClientResponse, Stream] | None) -> None:
    """Fetch parts until none is left, each under its own retry loop (resumed on retry)."""
    if first is not None:
        response, stream = first
        await _stream(driver, transfer, response, stream, transfer.req, 0)
    while (index := transfer.claim_part()) is not None:
        await async_retrying(transfer.options.retry, transfer.req.deadline, "download part",
                             transfer.req.url)(_part_attempt, driver, session, transfer, index)


async def _part_attempt(driver: AiohttpDriver, session: aiohttp.ClientSession,
                        transfer: Transfer, index: int) -> None:
    request = transfer.part_request(index)
    if request is None:
        return
    async with await driver.open(session, request) as response:
        stream = transfer.part_stream(index, response.status, response.headers)
        await _stream(driver, transfer, response, stream, request, index)
