"""Keep URL credentials and query strings out of every raised error and its chain (pure).

vllm_fetch's own messages use ``redact_url``; the exceptions of requests, aiohttp and urllib3
that end up in an error's ``__cause__`` / ``__context__`` quote whatever URL they were given.
``scrub_error`` replaces each such link with a ``RedactedError`` that keeps the library's
exception type and its message with the URL's userinfo, password pieces, query and fragment
removed, and cleans vllm_fetch's own messages the same way (fault S7, S11).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from ..errors import FetchError

#: A query string in any text (``?`` then anything up to whitespace, a quote or a bracket).
_QUERY = re.compile(r"\?(?!…)[^\s'\"()<>\[\]]+")
#: Userinfo after ``//`` in any URL quoted by a message.
_USERINFO = re.compile(r"//[^/\s'\"<>]*@")
#: Where a password or user name may be cut by a parser that ends the authority early.
_PIECES = re.compile(r"[:?#/@%&=\s]+")
#: Pieces shorter than this are too common to remove from a message without mangling it.
_MIN_PIECE = 3


class RedactedError(Exception):
    """Stands in for a library's exception in the chain of a vllm_fetch error: the library's
    exception type (``original_type``) and its message, without URL credentials or queries."""

    def __init__(self, original_type: str, message: str) -> None:
        super().__init__(f"{original_type}: {message}")
        self.original_type = original_type


def secret_fragments(url: str) -> list[str]:
    """The parts of ``url`` that must not appear in a message, longest first: its userinfo
    (everything between ``://`` and the last ``@``), the pieces a parser may cut it into, its
    query and fragment (any other ``?query`` in a message goes too: ``scrub_text``)."""
    found: set[str] = set()
    _, sep, rest = url.partition("://")
    if not sep:
        rest = url
    if "@" in rest:
        userinfo = rest.rpartition("@")[0]
        found.add(userinfo)
        found.update(p for p in _PIECES.split(userinfo) if len(p) >= _MIN_PIECE)
    before_fragment, hash_sign, fragment = rest.partition("#")
    query = before_fragment.partition("?")[2]
    found.update(text for text in (query, fragment if hash_sign else "") if text)
    return sorted(found, key=len, reverse=True)


def scrub_text(text: str, url: str | None) -> str:
    """``text`` with the secrets of ``url`` and any quoted query or userinfo removed."""
    for fragment in secret_fragments(url) if url else ():
        text = text.replace(fragment, "…")
    return _QUERY.sub("?…", _USERINFO.sub("//…@", text))


def _describe(exc: BaseException) -> str:
    kind = type(exc)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _stand_in(exc: BaseException, url: str | None) -> RedactedError:
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not hide the real error
        message = ""
    stand_in = RedactedError(_describe(exc), scrub_text(message, url))
    stand_in.__suppress_context__ = True
    return stand_in


def scrub_error(exc: BaseException, url: str | None) -> None:
    """Clean ``exc`` and its whole ``__cause__`` / ``__context__`` chain in place."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, FetchError):
            current.args = tuple(scrub_text(a, url) if isinstance(a, str) else a
                                 for a in current.args)
        for attr in ("__cause__", "__context__"):
            inner = getattr(current, attr)
            if inner is None:
                continue
            if isinstance(inner, (FetchError, RedactedError)):
                pending.append(inner)
                continue
            suppressed = current.__suppress_context__
            setattr(current, attr, _stand_in(inner, url))
            current.__suppress_context__ = suppressed


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _url_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    url = args[1] if len(args) > 1 else kwargs.get("url")  # (self, url, ...)
    return url if isinstance(url, str) else None


def scrubbed(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """A façade method whose errors leave with ``scrub_error`` applied (for its ``url``)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            scrub_error(exc, _url_argument(args, kwargs))
            raise

    return wrapper


def ascrubbed(fn: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """``scrubbed`` for a coroutine method."""

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await fn(*args, **kwargs)
        except BaseException as exc:
            scrub_error(exc, _url_argument(args, kwargs))
            raise

    return wrapper
