"""Single-flight: concurrent identical requests in one process make one transfer.

The first caller for a key (the leader) runs the work; callers arriving meanwhile wait for it.
With ``share=True`` they get the leader's result, or its ``FetchError``. Otherwise (or when the
leader was cancelled or interrupted) they run the work themselves once the leader is done, which
for a cacheable URL is then a cache hit.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..errors import FetchError

_T = TypeVar("_T")
_FOLLOW = object()  # "no shared outcome: run the work yourself"


@dataclass
class _Flight(Generic[_T]):
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Any = _FOLLOW


class SingleFlight:
    """Thread-level single-flight for the sync side."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[object, _Flight[Any]] = {}

    def run(self, key: object, work: Callable[[], _T], *, share: bool = True) -> _T:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if not share or flight.outcome is _FOLLOW:
                return work()
            return _shared(flight.outcome)  # type: ignore[no-any-return]
        try:
            result = work()
            flight.outcome = result
            return result
        except FetchError as exc:
            flight.outcome = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()


class AsyncSingleFlight:
    """Task-level single-flight for the async side, one table per event loop. A flight is the
    list of its waiters' futures: one future per caller that waits, none for a leader alone
    (the common case: every URL of a burst is new)."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[object, list[asyncio.Future[Any]]]
        ] = weakref.WeakKeyDictionary()

    async def run(
        self, key: object, work: Callable[[], Awaitable[_T]], *, share: bool = True
    ) -> _T:
        loop = asyncio.get_running_loop()
        flights = self._by_loop.get(loop)
        if flights is None:
            flights = self._by_loop.setdefault(loop, {})
        waiters = flights.get(key)
        if waiters is not None:
            waiting: asyncio.Future[Any] = loop.create_future()
            waiters.append(waiting)  # a waiter cancelled meanwhile only cancels its own
            outcome = await waiting
            if not share or outcome is _FOLLOW:
                return await work()
            return _shared(outcome)  # type: ignore[no-any-return]
        waiters = flights[key] = []
        outcome = _FOLLOW
        try:
            result = await work()
            outcome = result
            return result
        except FetchError as exc:
            outcome = exc
            raise
        finally:
            del flights[key]
            for waiting in waiters:
                if not waiting.done():
                    waiting.set_result(outcome)


def _shared(outcome: Any) -> Any:
    if isinstance(outcome, FetchError):
        raise outcome
    return outcome
