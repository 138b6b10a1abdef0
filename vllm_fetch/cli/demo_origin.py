"""A small local origin that misbehaves on purpose, for ``vllm-fetch demo`` (no internet needed).

Each path serves its own 2 MiB body and fails once in a typical way, then behaves: ``/flaky``
answers 503 with Retry-After, ``/cut`` drops the connection half way, ``/stall`` stops sending
mid-body. It serves byte ranges (``Range: bytes=N-``) like a CDN, so a client can resume, and
records the Range header of every request so the demo can show what was asked for.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections import defaultdict

from aiohttp import web

BODY_SIZE = 2 * 1024 * 1024
PATHS = ("/flaky", "/cut", "/stall", "/model.bin")
_RANGE = re.compile(r"bytes=(\d+)-$")


def demo_body(path: str) -> bytes:
    """A deterministic body per path (distinct, so the cache cannot answer one with another)."""
    seed = hashlib.sha256(path.encode()).digest()
    return (seed * (BODY_SIZE // len(seed) + 1))[:BODY_SIZE]


class DemoOrigin:
    """An aiohttp.web app on 127.0.0.1 in a background thread."""

    def __init__(self, stall_seconds: float = 30.0) -> None:
        self.bodies = {path: demo_body(path) for path in PATHS}
        self.stall_seconds = stall_seconds
        #: path -> the Range header of each request ("" when none)
        self.seen: defaultdict[str, list[str]] = defaultdict(list)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True, name="demo-origin")
        self._ready = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.bodies[path]).hexdigest()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        body = self.bodies.get(path)
        if body is None:
            return web.Response(status=404, text="not found")
        self.seen[path].append(request.headers.get("Range", ""))
        first = len(self.seen[path]) == 1
        if path == "/flaky" and first:
            return web.Response(status=503, headers={"Retry-After": "1"}, text="slow down")
        start = self._range_start(request, body)
        headers = {"ETag": f'"{self.sha256(path)[:16]}"', "Accept-Ranges": "bytes",
                   "Cache-Control": "max-age=3600", "Content-Length": str(len(body) - start)}
        status = 200
        if start:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if path in ("/cut", "/stall") and first:
            await response.write(body[: len(body) // 2])
            if path == "/stall":
                await asyncio.sleep(self.stall_seconds)
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(body[start:])
        return response

    @staticmethod
    def _range_start(request: web.Request, body: bytes) -> int:
        match = _RANGE.match(request.headers.get("Range", ""))
        if_range = request.headers.get("If-Range")
        if match is None or (if_range is not None and not if_range.startswith('"')):
            return 0
        start = int(match.group(1))
        return start if start < len(body) else 0

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server) and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> DemoOrigin:
        self._thread.start()
        self._ready.wait(10)
        return self

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        # handlers still sleeping (the stall) are cancelled, not destroyed pending
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
