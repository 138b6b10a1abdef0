"""The sync download engine: requests sessions and threads around :class:`Transfer`.

One function, :func:`download`: take the machine lock (or reuse what a writer that held it just
published), then run resume-aware attempts under the retry loop. Parallel parts run in threads,
each with its own requests Session and its own retry loop.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from ..core.request import FetchRequest
from ..core.results import DownloadResult
from ..errors import IntegrityError
from ..retry_loop import sync_retrying
from .locking import TargetLock
from .options import DownloadOptions
from .partials import Partial
from .progress import Progress
from .transfer import RangeRefused, Step, Stream, Transfer, parts_done

if TYPE_CHECKING:
    from ..drivers.requests_driver import RequestsDriver

#: Whole-file requests one attempt may send (a discarded partial or a refused split re-asks).
MAX_REQUESTS_PER_ATTEMPT = 4


class _Stopped(Exception):
    pass


def download(driver: RequestsDriver, req: FetchRequest, target: Path,
             options: DownloadOptions) -> DownloadResult:
    """Download ``req.url`` to ``target``: one transfer per machine, resumed, verified."""
    lock = TargetLock(target, req.url)
    progress = Progress(options.progress, target.name)
    try:
        with lock.hold(req.deadline):
            reused = lock.reusable(req.expected_sha256, req.expected_size)
            if reused is not None:
                return reused
            transfer = Transfer(req, Partial.claim(target, req.url, resume=options.resume),
                                options, progress)
            try:
                result = sync_retrying(options.retry, req.deadline, "download", req.url)(
                    _attempt, driver, transfer)
            except BaseException as exc:
                transfer.abandon(exc)
                raise
            lock.record(result)
            return result
    finally:
        progress.close()


def _attempt(driver: RequestsDriver, transfer: Transfer) -> DownloadResult:
    with driver.call_session() as session:
        for _ in range(MAX_REQUESTS_PER_ATTEMPT):
            request = transfer.next_request()
            if request is None:
                return _run_parts(driver, transfer, None)
            response = driver.open(session, request)
            with response:
                stream = transfer.on_response(response.status_code, response.headers,
                                              response.url or request.url)
                if stream.step is Step.AGAIN:
                    continue
                if stream.step is Step.PARALLEL:
                    try:
                        return _run_parts(driver, transfer, (response, stream))
                    except RangeRefused:
                        transfer.fall_back()
                        continue
                if stream.step is Step.STREAM:
                    _stream(driver, transfer, response, stream)
                return transfer.finish(stream)
    raise IntegrityError(f"{transfer.safe_url} keeps answering unusable ranges",
                         url=transfer.safe_url)


def _stream(driver: RequestsDriver, transfer: Transfer, response: requests.Response,
            stream: Stream) -> None:
    try:
        for chunk in driver.iter_body(response, stream.meter, transfer.req):
            transfer.write(stream, chunk)
    finally:
        transfer.interrupted(stream)


def _run_parts(driver: RequestsDriver, transfer: Transfer,
               first: tuple[requests.Response, Stream] | None) -> DownloadResult:
    """``transfer.workers`` threads pull parts in file order (this thread is one of them, and
    takes part 0 from ``first``'s body when given); then verify and publish."""
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, transfer.workers - 1),
                            thread_name_prefix="vllm_fetch-part") as pool:
        futures = [pool.submit(_worker, driver, transfer, stop)
                   for _ in range(transfer.workers - 1)]
        try:
            if first is not None:
                _first_part(driver, transfer, *first, stop)
            _worker(driver, transfer, stop)
        except _Stopped:
            pass  # another part failed: its error is raised below
        except BaseException:
            stop.set()
            raise
        wait(futures, return_when=FIRST_EXCEPTION)
        if stop.is_set():
            wait(futures)
            errors = [f.exception() for f in futures]
            raise next(e for e in errors if e is not None and not isinstance(e, _Stopped))
    return transfer.finish(parts_done(transfer))


def _first_part(driver: RequestsDriver, transfer: Transfer, response: requests.Response,
                stream: Stream, stop: threading.Event) -> None:
    """Part 0 is the head of the probe's open-ended body: write up to its end, then hang up."""
    assert stream.limit is not None
    with response:
        for chunk in driver.iter_body(response, stream.meter, transfer.req):
            if stop.is_set():
                raise _Stopped
            transfer.write_part(0, stream, chunk[: stream.limit - stream.position])
            if stream.position >= stream.limit:
                return


def _worker(driver: RequestsDriver, transfer: Transfer, stop: threading.Event) -> None:
    """Fetch parts until none is left, each under its own retry loop (resumed on retry)."""
    session = driver.new_session()
    try:
        while not stop.is_set() and (index := transfer.claim_part()) is not None:
            sync_retrying(transfer.options.retry, transfer.req.deadline, "download part",
                          transfer.req.url)(_part_attempt, driver, session, transfer, index, stop)
    except BaseException:
        stop.set()
        raise
    finally:
        session.close()


def _part_attempt(driver: RequestsDriver, session: requests.Session, transfer: Transfer,
                  index: int, stop: threading.Event) -> None:
    request = transfer.part_request(index)
    if request is None or stop.is_set():
        return
    with driver.open(session, request) as response:
        stream = transfer.part_stream(index, response.status_code, response.headers)
        for chunk in driver.iter_body(response, stream.meter, request):
            if stop.is_set():
                raise _Stopped
            transfer.write_part(index, stream, chunk)
