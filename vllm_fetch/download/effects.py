"""What both download runners share: stepping a flow, and the file work behind its effects.

``perform_file`` is plain blocking code; the sync runner calls it directly, the async runner in
a worker thread. Neither decides anything: the machine (``core.download_machine``) does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from ..core.download_machine import (
    Effect,
    HashAhead,
    Machine,
    Preallocate,
    Publish,
    SaveState,
    StartProgress,
    Truncate,
)
from ..errors import FetchError
from ..files import preallocate
from .partials import Partial
from .progress import Progress


class Stepper:
    """Steps a flow: sends it the last effect's outcome (``value`` or ``error``), and returns its
    next effect, or None once it returned (its value is then ``result``). As a context manager
    it closes the flow and calls ``on_exit`` however the run ends."""

    __slots__ = ("error", "flow", "on_exit", "result", "value")

    def __init__(self, flow: Generator[Effect, Any, Any], on_exit: Callable[[], None]) -> None:
        self.flow, self.on_exit = flow, on_exit
        self.value: Any = None
        self.error: BaseException | None = None
        self.result: Any = None

    def __enter__(self) -> Stepper:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the flow, then ``on_exit`` (the runner lets go of an unread response)."""
        try:
            self.flow.close()
        finally:
            self.on_exit()

    def settle(self, perform: Callable[[Effect], Any], effect: Effect) -> None:
        """Perform ``effect``; its outcome (or its error) goes to the flow next."""
        try:
            self.value = perform(effect)
        except Exception as exc:
            self.error = exc

    async def asettle(self, perform: Callable[[Effect], Awaitable[Any]], effect: Effect) -> None:
        """:meth:`settle` for an async ``perform``."""
        try:
            self.value = await perform(effect)
        except Exception as exc:
            self.error = exc

    def next(self) -> Effect | None:
        value, error = self.value, self.error
        self.value = self.error = None
        try:
            return self.flow.send(value) if error is None else self.flow.throw(error)
        except StopIteration as stop:
            self.result = stop.value
            return None


def perform_file(effect: Effect, machine: Machine, partial: Partial, progress: Progress) -> Any:
    """Do the file (or progress) work one effect asks for; returns its outcome."""
    if isinstance(effect, Truncate):
        return partial.reset()
    if isinstance(effect, Preallocate):
        return preallocate(partial.open(), effect.size, partial.path)
    if isinstance(effect, SaveState):
        return partial.save(effect.state)
    if isinstance(effect, HashAhead):
        partial.flush_ahead()  # the disk writes while the rest is hashed
        return machine.hash_ahead(partial.read_into, final=True)
    if isinstance(effect, StartProgress):
        return progress.start(effect.total, effect.done)
    if isinstance(effect, Publish):
        return partial.publish()
    raise AssertionError(f"not a file effect: {effect!r}")


def abandon(machine: Machine, partial: Partial, error: BaseException) -> None:
    """After the call failed: checkpoint the parts, keep the partial for resume or remove it."""
    machine.stop_hashing()  # the partial's helper thread is waited for, not its whole hash
    save = machine.checkpoint()
    if save is not None:
        with contextlib.suppress(FetchError):  # the error that ended the call matters more
            partial.save(save.state)
    partial.abandon(error)
