"""The async download runner: performs the machine's effects with aiohttp, tasks and aiofiles.

It only executes what ``core.download_machine`` yields. Nothing blocking runs on the event loop:
bodies are written through aiofiles (one handle per body, positioned once, written in order, in
batches of the chunks as aiohttp handed them, one batch written while the next fills), every
other file effect runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiofiles
import aiohttp
from aiofiles.threadpool.binary import AsyncFileIO

from ..core import download_machine as dm
from ..core.request import FetchRequest
from ..core.results import DownloadResult
from ..errors import DiskError
from ..files import disk_error
from .effects import Stepper, abandon, perform_file
from .locking import TargetLock
from .options import DownloadOptions
from .partials import Partial
from .progress import Progress

if TYPE_CHECKING:
    from ..drivers.aiohttp_driver import AiohttpDriver

#: Bytes gathered before one write (one stream; each part: smaller, as up to 8 parts buffer
#: at once and peak memory must stay low).
WRITE_BATCH = 2 * 1024 * 1024
PART_WRITE_BATCH = 1024 * 1024
T = TypeVar("T")


async def _off_loop(func: Callable[..., T], *args: Any) -> T:
    """Run file work in a thread and wait for it even if cancelled: a write still in flight
    must never outlive the file descriptor it uses."""
    return await _finished(asyncio.to_thread(func, *args))


async def _finished(work: Awaitable[T]) -> T:
    """Await ``work``; when cancelled, wait for it to end before the cancellation goes on."""
    future = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


async def _open_partial(partial: Partial) -> AsyncFileIO:
    """The partial's aiofiles handle. The open runs in a thread: when cancelled meanwhile, wait
    for it and close what it opened, so no descriptor is left for the GC to find."""
    future = asyncio.ensure_future(_open(partial))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        if not future.cancelled() and future.exception() is None:
            await future.result().close()
        raise


async def _open(partial: Partial) -> AsyncFileIO:
    return await aiofiles.open(partial.path, "r+b", buffering=0, opener=partial.opener)


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
            partial = await _off_loop(_claim, target, req.url, options.resume)
            machine = dm.Machine(req, await _off_loop(partial.start), retry=options.retry,
                              connections=options.connections)
            try:
                async with driver.call_session() as session:
                    result: DownloadResult = await _Runner(driver, session, machine, partial,
                                                           progress).run(machine.flow())
            except BaseException as exc:
                await _off_loop(abandon, machine, partial, exc)
                raise
            await _off_loop(lock.record, result)
            return result
    finally:
        progress.close()


class _Batches:
    """One body's chunks on their way to the partial: gathered into batches of
    ``WRITE_BATCH`` bytes (``PART_WRITE_BATCH`` for a part), each written in one call (a
    thread, one ``writelines``), counted once it is on disk, in order. A stream's next batch
    fills while one is written; a part's waits for it."""

    def __init__(self, handle: AsyncFileIO, sink: dm.Sink, machine: dm.Machine,
                 partial: Partial, progress: Progress) -> None:
        self.handle, self.sink, self.machine = handle, sink, machine
        self.partial, self.progress = partial, progress
        self.size = WRITE_BATCH if sink.kind is dm.Kind.STREAM else PART_WRITE_BATCH
        self.chunks: list[bytes] = []
        self.batched = 0
        self.writing: tuple[asyncio.Future[None], int] | None = None
        self.failed = False  # a write that failed is not repeated (its bytes may be written)

    @property
    def pending(self) -> int:
        """Bytes handed over and not yet counted as written."""
        return self.batched + (self.writing[1] if self.writing is not None else 0)

    async def add(self, data: bytes | memoryview) -> bool:
        """Queue ``data``; True once the sink's limit is reached (the caller stops reading)."""
        if data:
            self.chunks.append(bytes(data) if isinstance(data, memoryview) else data)
            self.batched += len(data)
            if self.batched >= self.size:
                await self._start()
            elif self.writing is not None and self.writing[0].done():
                await self._settle()  # count it now: writeback and checkpoints start on time
        limit = self.sink.limit
        return limit is not None and self.sink.position + self.pending >= limit

    async def drain(self) -> None:
        """Every queued byte written and counted."""
        await self._start()
        await self._settle()

    async def salvage(self) -> None:
        """After an error: write what arrived unless a write is what failed."""
        if not self.failed:
            await self.drain()

    async def _start(self) -> None:
        await self._settle()
        if not self.batched:
            return
        chunks, size = self.chunks, self.batched
        self.chunks, self.batched = [], 0
        start = self.sink.position
        self.writing = (asyncio.ensure_future(self._write(chunks, start, start + size)), size)
        if self.sink.kind is not dm.Kind.STREAM:
            await self._settle()  # up to 8 parts at once: one batch each in memory, not two

    async def _write(self, chunks: list[bytes], start: int, end: int) -> None:
        handle = self.handle
        await handle.writelines(chunks)
        if await handle.tell() == end:
            return
        # A raw file's write may be short (a signal, the disk filling up), which writelines
        # ignores, writing the next chunk after it: the batch is written again, write by
        # write, until the disk takes it all or refuses with an error.
        await handle.seek(start)
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[await handle.write(view):]

    async def _settle(self) -> None:
        """Wait for the batch being written and count it; a batch that reached the disk is
        counted even when the wait was cancelled (a resume continues after its bytes)."""
        if self.writing is None:
            return
        future, size = self.writing
        self.writing = None
        try:
            await _finished(future)
        except OSError as exc:
            self.failed = True
            raise disk_error(exc, self.partial.path) from exc
        except asyncio.CancelledError:
            if future.cancelled() or future.exception() is not None:
                self.failed = True  # its bytes may be partly written: never counted
            else:
                await self._count(size)
            raise
        await self._count(size)

    async def _count(self, size: int) -> None:
        save = self.machine.wrote(self.sink, size)
        self.progress.add(size)
        if save is not None:
            await _off_loop(self.partial.save, save.state)
        if self.partial.wrote(size):
            await _off_loop(self.partial.write_behind)
        if self.machine.hash_due():
            if self.partial.hashes_behind:  # a poke: the stream never waits for it
                self.partial.hash_behind(self.machine.hash_ahead)
            else:  # off the loop: Thread.start waits until the new thread runs
                await _off_loop(self.partial.hash_behind, self.machine.hash_ahead)


def _claim(target: Path, url: str, resume: bool) -> Partial:
    return Partial.claim(target, url, resume=resume)


class _Runner:
    """Performs one flow's effects on one session (and one open response at a time)."""

    def __init__(self, driver: AiohttpDriver, session: aiohttp.ClientSession, machine: dm.Machine,
                 partial: Partial, progress: Progress,
                 response: tuple[aiohttp.ClientResponse, FetchRequest] | None = None) -> None:
        self.driver, self.session, self.machine = driver, session, machine
        self.partial, self.progress = partial, progress
        self.response = response

    async def run(self, flow: dm.Flow) -> Any:
        with Stepper(flow, self.release) as step:
            while (effect := step.next()) is not None:
                await step.asettle(self.perform, effect)
            return step.result

    def release(self) -> None:
        """Let go of a response whose body the flow did not read."""
        if self.response is not None:
            self.response[0].release()
            self.response = None

    async def perform(self, effect: dm.Effect) -> Any:
        if isinstance(effect, dm.Receive):
            return await self.receive(effect.sink)
        if isinstance(effect, dm.Send):
            self.release()
            response = await self.driver.open(self.session, effect.req)
            self.response = (response, effect.req)
            return dm.Answer(response.status, response.headers, str(response.url))
        if isinstance(effect, dm.Sleep):
            return await asyncio.sleep(effect.seconds)
        if isinstance(effect, dm.RunParts):
            return await self.run_parts(effect)
        return await _off_loop(perform_file, effect, self.machine, self.partial, self.progress)

    async def receive(self, sink: dm.Sink) -> None:
        """Write the body from the sink's position through one aiofiles handle: chunks are
        gathered into batches (kept as aiohttp handed them, never copied) and each batch is
        written in one call while the next one fills."""
        assert self.response is not None
        (response, req), self.response = self.response, None
        async with response:
            try:
                handle = await _open_partial(partial := self.partial)
            except OSError as exc:
                raise disk_error(exc, partial.path) from exc
            batches = _Batches(handle, sink, self.machine, partial, self.progress)
            try:
                await handle.seek(sink.position)
                async for chunk in self.driver.iter_body(response, sink.meter, req):
                    if await batches.add(sink.clip(chunk, batches.pending)):
                        break
                await batches.drain()
            except BaseException as exc:
                if not isinstance(exc, DiskError):
                    await batches.salvage()  # the bytes that did arrive are good: keep them
                raise
            finally:
                await _finished(handle.close())  # even when cancelled again meanwhile

    async def run_parts(self, effect: dm.RunParts) -> None:
        """``effect.workers`` tasks run part flows (one takes part 0 from the open probe when
        there is one); on the first error the others are cancelled and it is raised."""
        first, self.response = self.response, None
        tasks = [asyncio.create_task(self._worker(None, None))
                 for _ in range(effect.workers - 1)]
        tasks.append(asyncio.create_task(self._worker(first, effect.first)))
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _worker(self, response: tuple[aiohttp.ClientResponse, FetchRequest] | None,
                      sink: dm.Sink | None) -> None:
        await _Runner(self.driver, self.session, self.machine, self.partial, self.progress,
                      response).run(self.machine.part_flow(sink))
