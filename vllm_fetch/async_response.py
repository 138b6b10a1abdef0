"""The object ``get_async_response`` returns: awaitable and an async context manager."""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from types import TracebackType
from typing import Any

import aiohttp


class AsyncResponseContext:
    """``async with ctx as response`` releases the response (and a one-off session) on exit;
    ``response = await ctx`` hands both to the caller, as aiohttp's own request context does.
    """

    def __init__(
        self,
        opening: Coroutine[Any, Any, tuple[aiohttp.ClientResponse, aiohttp.ClientSession | None]],
    ) -> None:
        self._opening = opening
        self._response: aiohttp.ClientResponse | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _open(self) -> aiohttp.ClientResponse:
        self._response, self._session = await self._opening
        return self._response

    def __await__(self) -> Generator[Any, None, aiohttp.ClientResponse]:
        return self._open().__await__()

    async def __aenter__(self) -> aiohttp.ClientResponse:
        return await self._open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._response is not None:
            self._response.release()
        if self._session is not None:
            await self._session.close()

    def __del__(self) -> None:
        if self._response is None:
            self._opening.close()  # never awaited: no "coroutine was never awaited" warning
