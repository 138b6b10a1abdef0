"""The async face of the errors: twins of vllm_fetch's classes that are also aiohttp's.

vLLM's async code catches aiohttp's exceptions (``aiohttp.ClientResponseError`` and its
``.status``, ``aiohttp.ClientPayloadError``...). The async methods raise, for each error that
has an aiohttp counterpart, a twin class that subclasses both: same name, message and
attributes, still in the one ``FetchError`` hierarchy. Twins are made on first use; this module
imports aiohttp, so only the async side imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TypeVar

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .errors import (
    FetchConnectionError,
    FetchError,
    FetchTimeoutError,
    HTTPStatusError,
    TooManyRedirectsError,
    TruncatedBodyError,
    retype,
)

_E = TypeVar("_E", bound=FetchError)

#: Our class -> the aiohttp exception vLLM's async code would have seen in its place.
AIOHTTP_COUNTERPARTS: tuple[tuple[type[FetchError], type[Exception]], ...] = (
    (TooManyRedirectsError, aiohttp.TooManyRedirects),
    (HTTPStatusError, aiohttp.ClientResponseError),
    (FetchConnectionError, aiohttp.ClientConnectionError),
    (TruncatedBodyError, aiohttp.ClientPayloadError),
    # aiohttp's timeouts are asyncio.TimeoutError: the builtin TimeoutError from Python 3.11
    # on (no twin needed there), a class of its own on 3.10
    (FetchTimeoutError, asyncio.TimeoutError),
)

_twins: dict[type[BaseException], type[BaseException]] = {}


def _rebuild(base: type[FetchError], args: tuple[Any, ...], state: dict[str, Any]) -> FetchError:
    """Unpickle a twin (its class is made at run time, so it is pickled as its base)."""
    error = base.__new__(base, *args)
    error.args = args
    error.__dict__.update(state)
    return as_async(error)


def _reduce(self: FetchError) -> tuple[Any, ...]:
    state = {k: v for k, v in self.__dict__.items() if k not in _REMADE}
    return _rebuild, (type(self).__mro__[1], self.args, state)


_REMADE = frozenset({"request_info", "history"})  # made again by as_async, not picklable


def twin_class(cls: type[_E]) -> type[_E]:
    """``cls``'s twin (``cls`` itself when it has no aiohttp counterpart or already is one)."""
    twin: Any = _twins.get(cls)
    if twin is None:
        twin = cls
        for ours, theirs in AIOHTTP_COUNTERPARTS:
            if issubclass(cls, ours) and not issubclass(cls, theirs):
                namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                             "__doc__": cls.__doc__, "__repr__": BaseException.__repr__,
                             "__reduce__": _reduce}
                twin = type(cls.__name__, (cls, theirs), namespace)
                break
        twin = _twins.setdefault(cls, twin)  # two threads racing keep the same class
    return twin  # type: ignore[no-any-return]


def _request_info(url: str | None) -> aiohttp.RequestInfo:
    target = URL()
    with contextlib.suppress(ValueError, TypeError):
        target = URL(url or "")
    return aiohttp.RequestInfo(target, "GET", CIMultiDictProxy(CIMultiDict()), target)


def as_async(error: _E) -> _E:
    """``error`` as the async side raises it: an instance of its twin, with the attributes
    aiohttp's class has (``request_info`` and ``history`` name only the redacted URL)."""
    cls = twin_class(type(error))
    if cls is type(error):
        return error
    twin = retype(error, cls)
    if isinstance(twin, aiohttp.ClientResponseError):
        state = twin.__dict__
        state.setdefault("status", 0)  # aiohttp's TooManyRedirects carries no status either
        state["message"] = state.get("reason", "")
        state.setdefault("headers", None)
        state["request_info"] = _request_info(error.url)
        state["history"] = ()
    return twin


class NotJSONContentTypeError(aiohttp.ContentTypeError, ValueError):
    """``async_get_json`` of a body whose Content-Type is not JSON: aiohttp's
    ``ContentTypeError`` (what vLLM's ``await r.json()`` raises), and a ``ValueError`` as every
    other not-JSON answer is. ``request_info`` names only the redacted URL."""


def not_json_error(url: str, status: int, content_type: str,
                   headers: CIMultiDictProxy[str]) -> NotJSONContentTypeError:
    """The error aiohttp's ``json()`` raises for ``content_type``, with its message."""
    return NotJSONContentTypeError(
        _request_info(url), (), status=status, headers=headers,
        message=f"Attempt to decode JSON with unexpected mimetype: {content_type}")
