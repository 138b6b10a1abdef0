"""A file served over HTTP with byte ranges (RFC 9110 §14), and knobs to misbehave.

``RangeFile`` is an aiohttp handler for the test origin: Range and If-Range like a CDN, ETag and
Last-Modified, 416 past the end. Per request number it can drop the connection at a byte offset,
stall, or ignore Range; the data and ETag can be swapped between requests (a new version).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from tests.origin import Origin

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
SEND_BLOCK = 64 * 1024


@dataclass
class RangeFile:
    data: bytes
    etag: str | None = '"v1"'
    last_modified: str | None = "Wed, 21 Oct 2015 07:28:00 GMT"
    ranges: bool = True
    #: request number (0-based) -> absolute file offset where the connection is dropped
    cuts: dict[int, int] = field(default_factory=dict)
    #: range start -> absolute offset where the first request for that range is dropped
    cut_ranges: dict[int, int] = field(default_factory=dict)
    #: request number -> absolute offset where the origin stalls (sleeps ``stall_seconds``)
    stalls: dict[int, int] = field(default_factory=dict)
    stall_seconds: float = 30.0
    #: once the origin has sent this many bytes in all, every response stalls
    stall_total: int | None = None
    #: seconds to sleep after each 64 KiB block (a slow link, so downloads overlap)
    delay: float = 0.0
    #: called with the request number before answering (tests swap versions here)
    before: Callable[[int], None] | None = None
    served: int = 0
    origin: Origin | None = None

    def mount(self, origin: Origin, path: str) -> str:
        self.origin = origin
        return origin.route(path, self.handle)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept-Ranges": "bytes"} if self.ranges else {}
        if self.etag:
            headers["ETag"] = self.etag
        if self.last_modified:
            headers["Last-Modified"] = self.last_modified
        return headers

    def _range(self, request: web.Request) -> tuple[int, int] | None:
        header = request.headers.get("Range")
        if not self.ranges or header is None:
            return None
        if_range = request.headers.get("If-Range")
        if if_range is not None and if_range not in (self.etag, self.last_modified):
            return None  # the representation changed: the whole new body, 200
        match = _RANGE.fullmatch(header.strip())
        if match is None:
            return None
        start = int(match[1])
        end = int(match[2]) if match[2] else len(self.data) - 1
        return start, min(end, len(self.data) - 1)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        number = self.served
        self.served += 1
        if self.before is not None:
            self.before(number)
        total = len(self.data)
        wanted = self._range(request)
        headers = self._headers()
        if wanted is not None and wanted[0] >= total:
            headers["Content-Range"] = f"bytes */{total}"
            return web.Response(status=416, headers=headers)
        start, end = wanted if wanted is not None else (0, total - 1)
        status = 206 if wanted is not None else 200
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        headers["Content-Length"] = str(end - start + 1)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        await self._send(request, response, number, start, end + 1)
        return response

    async def _stall(self, request: web.Request) -> None:
        """Send nothing for ``stall_seconds``, or until the client hangs up."""
        end = asyncio.get_running_loop().time() + self.stall_seconds
        while asyncio.get_running_loop().time() < end:
            if request.transport is None or request.transport.is_closing():
                return
            await asyncio.sleep(0.02)

    async def _send(self, request: web.Request, response: web.StreamResponse, number: int,
                    start: int, stop: int) -> None:
        cut = self.cuts.get(number, self.cut_ranges.pop(start, None))
        stall = self.stalls.get(number)
        position = start
        while position < stop:
            if cut is not None and position >= cut:
                await asyncio.sleep(0.05)
                assert request.transport is not None
                request.transport.close()
                return
            if stall is not None and position >= stall:
                await self._stall(request)
                stall = None
            assert self.origin is not None
            if self.stall_total is not None and self.origin.bytes_sent >= self.stall_total:
                await self._stall(request)
            if request.transport is None or request.transport.is_closing():
                return
            limits = [x for x in (cut, stall) if x is not None and x > position]
            block_end = min([stop, position + SEND_BLOCK, *limits])
            await response.write(self.data[position:block_end])
            assert self.origin is not None
            self.origin.count_sent(block_end - position)
            position = block_end
            if self.delay:
                await asyncio.sleep(self.delay)


def ranges_asked(origin: Origin, path: str) -> list[str | None]:
    """The Range header of every request the origin saw for ``path`` (None: none sent)."""
    return [seen.headers.get("Range") for seen in origin.seen(path)]
