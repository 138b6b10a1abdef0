"""vLLM's media download limits (pure): the per-download cap and the per-request byte budget.

``$VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB`` (MiB, default 256, 0 or less: off) caps every
``get_bytes`` / ``async_get_bytes`` body, as in vLLM; the smaller of it and ``max_bytes`` wins.
``$VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB`` (same units and default) caps what all fetches
sharing one :class:`MediaRequestDownloadBudget` receive. Both are read when they apply, as vLLM
reads its ``envs``, so a server may change them without a restart.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

from ..errors import FetchError, MiB, budget_exceeded

MEDIA_DOWNLOAD_LIMIT_VAR = "VLLM_MAX_MEDIA_DOWNLOAD_SIZE_MB"
REQUEST_BUDGET_VAR = "VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB"
DEFAULT_LIMIT_MB = 256

_parsed: dict[object, int] = {}  # raw value -> MiB (the variable is read on every get_bytes)
# os.environ's own store, read without decoding: ``os.environ.get`` of an unset name costs
# ~1 µs (it raises and catches a KeyError); a dict lookup ~50 ns. Writes through os.environ
# (and so pytest's monkeypatch) update this store.
_STORE = getattr(os.environ, "_data", None) if os.name == "posix" else None
_KEYS = {name: os.fsencode(name) for name in (MEDIA_DOWNLOAD_LIMIT_VAR, REQUEST_BUDGET_VAR)}


def env_mb(name: str) -> int:
    """A whole number of MiB from the environment (vLLM's default when unset)."""
    key = _KEYS.get(name)
    raw: object = (_STORE.get(key) if isinstance(_STORE, dict) and key is not None
                   else os.environ.get(name))
    if raw is None:
        return DEFAULT_LIMIT_MB
    value = _parsed.get(raw)
    if value is None:
        text = os.fsdecode(raw) if isinstance(raw, bytes) else str(raw)
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is not a whole number of MiB") from None
        if len(_parsed) < 64:
            _parsed[raw] = value
    return value


_MEDIA_KEY = _KEYS[MEDIA_DOWNLOAD_LIMIT_VAR]


def media_cap(max_bytes: int | None) -> tuple[int | None, bool]:
    """The cap for a ``get_bytes`` body and whether it is the media download limit (which
    wins ties, as in vLLM, so the error names the variable to raise). On every get_bytes."""
    if isinstance(_STORE, dict) and _STORE.get(_MEDIA_KEY) is None:
        limit_mb = DEFAULT_LIMIT_MB  # unset: the common case, without a second lookup
    else:
        limit_mb = env_mb(MEDIA_DOWNLOAD_LIMIT_VAR)
    if limit_mb <= 0:
        return max_bytes, False
    limit = limit_mb * MiB
    if max_bytes is None or limit <= max_bytes:
        return limit, True
    return max_bytes, False


class ByteBudget(Protocol):
    """What ``get_bytes(request_budget=...)`` accepts: vllm_fetch's budget or vLLM's own."""

    def charge(self, size: int) -> None: ...


class MediaRequestDownloadBudget:
    """The media bytes received by all fetches of one request, thread- and task-safe.

    Pass the same budget to every ``get_bytes`` of one request: each chunk is charged as it
    arrives (retried attempts included); past ``$VLLM_MAX_MEDIA_REQUEST_DOWNLOAD_SIZE_MB`` the
    fetch fails with ``MediaRequestDownloadSizeExceededError``. ``used``: bytes charged so far.
    """

    def __init__(self) -> None:
        self.used = 0
        self._lock = threading.Lock()

    def charge(self, size: int) -> None:
        """Add ``size`` bytes, or raise (adding nothing) when that passes the limit."""
        limit_mb = env_mb(REQUEST_BUDGET_VAR)
        if limit_mb <= 0:
            return
        with self._lock:
            received = self.used + size
            if received > limit_mb * MiB:
                raise budget_exceeded(
                    f"Request media downloads exceed {REQUEST_BUDGET_VAR}={limit_mb:g} "
                    f"({received} bytes received, including retried attempts).")
            self.used = received


def charge(budget: ByteBudget, size: int, url: str | None) -> None:
    """Charge ``budget``; a refusal from vLLM's own budget class (a plain ValueError) becomes
    a ``MediaRequestDownloadSizeExceededError`` like ours."""
    try:
        budget.charge(size)
    except FetchError as exc:
        if exc.url is None:
            exc.url = url
        raise
    except ValueError as exc:
        raise budget_exceeded(str(exc), url) from None


class CallBudget:
    """One call's view of a caller's budget: charges it, and counts what this call charged.

    A body that did not cross the network (a cache hit, a 304) is charged at the end by
    :meth:`settle`, so a request's budget does not depend on what the cache holds.
    """

    __slots__ = ("budget", "charged")

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.charged = 0

    def charge(self, size: int) -> None:
        self.budget.charge(size)
        self.charged += size

    def settle(self, size: int, url: str | None) -> None:
        """After a body of ``size`` bytes: charge what no transfer of this call charged."""
        if size > self.charged:
            charge(self, size - self.charged, url)
