"""The sync download runner: performs the machine's effects with requests and threads.

It only executes what ``core.download_machine`` yields; parallel parts run in threads, each
with its own requests Session, writing with positional writes into the one partial.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from ..core import download_machine as dm
from ..core.request import FetchRequest
from ..core.results import DownloadResult
from .effects import Stepper, abandon, perform_file
from .locking import TargetLock
from .options import DownloadOptions
from .partials import Partial
from .progress import Progress

if TYPE_CHECKING:
    from ..drivers.requests_driver import RequestsDriver


#: Bytes read at most per ``recv`` of a download (into a reused buffer; ``chunk_size`` when
#: larger). One read per call, so the deadline is still checked after every ``recv``.
READ_SIZE = 256 * 1024


class _Stopped(Exception):
    """Another part failed: this one stops (its error is the one raised)."""


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
            partial = Partial.claim(target, req.url, resume=options.resume)
            machine = dm.Machine(req, partial.start(), retry=options.retry,
                              connections=options.connections)
            try:
                with driver.call_session() as session:
                    result: DownloadResult = _Runner(driver, session, machine, partial,
                                                     progress).run(machine.flow())
            except BaseException as exc:
                abandon(machine, partial, exc)
                raise
            lock.record(result)
            return result
    finally:
        progress.close()


class _Runner:
    """Performs one flow's effects on one session (and one open response at a time)."""

    def __init__(self, driver: RequestsDriver, session: requests.Session, machine: dm.Machine,
                 partial: Partial, progress: Progress, stop: threading.Event | None = None,
                 response: tuple[requests.Response, FetchRequest] | None = None) -> None:
        self.driver, self.session, self.machine = driver, session, machine
        self.partial, self.progress, self.stop = partial, progress, stop
        self.response = response

    def run(self, flow: dm.Flow) -> Any:
        with Stepper(flow, self.hang_up) as step:
            while (effect := step.next()) is not None:
                step.settle(self.perform, effect)
            return step.result

    def perform(self, effect: dm.Effect) -> Any:
        if self.stop is not None and self.stop.is_set():
            raise _Stopped
        if isinstance(effect, dm.Send):
            return self.send(effect.req)
        if isinstance(effect, dm.Receive):
            return self.receive(effect.sink)
        if isinstance(effect, dm.Sleep):
            if self.stop is None:
                return time.sleep(effect.seconds)
            if self.stop.wait(effect.seconds):
                raise _Stopped
            return None
        if isinstance(effect, dm.RunParts):
            return self.run_parts(effect)
        return perform_file(effect, self.machine, self.partial, self.progress)

    def send(self, req: FetchRequest) -> dm.Answer:
        self.hang_up()
        response = self.driver.open(self.session, req)
        self.response = (response, req)
        return dm.Answer(response.status_code, response.headers, response.url or req.url)

    def hang_up(self) -> None:
        if self.response is not None:
            self.response[0].close()
            self.response = None

    def receive(self, sink: dm.Sink) -> None:
        assert self.response is not None
        (response, req), self.response = self.response, None
        machine, partial, stop = self.machine, self.partial, self.stop
        buffer = bytearray(max(req.chunk_size, READ_SIZE))
        with response:
            for chunk in self.driver.iter_body_into(response, sink.meter, req, buffer):
                if stop is not None and stop.is_set():
                    raise _Stopped
                data = sink.clip(chunk)
                partial.write(data, sink.position)
                save = machine.wrote(sink, len(data))
                self.progress.add(len(data))
                if save is not None:
                    partial.save(save.state)
                if machine.hash_due():
                    partial.hash_behind(machine.hash_ahead)
                if sink.full:
                    return

    def run_parts(self, effect: dm.RunParts) -> None:
        """``effect.workers`` threads run part flows (this thread is one of them, and takes
        part 0 from the open probe when there is one); the first real error is raised."""
        stop = threading.Event()
        first, self.response = self.response, None
        with ThreadPoolExecutor(max_workers=max(1, effect.workers - 1),
                                thread_name_prefix="vllm_fetch-part") as pool:
            futures = [pool.submit(self._worker, None, None, stop)
                       for _ in range(effect.workers - 1)]
            with contextlib.suppress(_Stopped):
                self._worker(self.session, (first, effect.first), stop)
            wait(futures, return_when=FIRST_EXCEPTION)
            if stop.is_set():
                wait(futures)
                _raise_first(futures)

    def _worker(self, session: requests.Session | None,
                first: tuple[tuple[requests.Response, FetchRequest] | None, dm.Sink | None] | None,
                stop: threading.Event) -> None:
        own = session is None
        session = self.driver.new_session() if session is None else session
        response, sink = first if first is not None else (None, None)
        try:
            _Runner(self.driver, session, self.machine, self.partial, self.progress, stop,
                    response).run(self.machine.part_flow(sink))
        except BaseException:
            stop.set()
            raise
        finally:
            if own:
                session.close()


def _raise_first(futures: list[Future[None]]) -> None:
    errors = [f.exception() for f in futures]
    error = next((e for e in errors if e is not None and not isinstance(e, _Stopped)), None)
    if error is not None:
        raise error
