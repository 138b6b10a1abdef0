"""A small local origin that misbehaves on purpose, for ``vllm-fetch demo`` (no internet needed).

Each path fails once in a typical way, then behaves: ``/flaky`` answers 503 with Retry-After,
``/cut`` drops the connection half way, ``/stall`` stops sending mid-body.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import Counter

from aiohttp import web

DEMO_BODY = bytes(range(256)) * 8192  # 2 MiB


class DemoOrigin:
    """An aiohttp.web app on 127.0.0.1 in a background thread."""

    def __init__(self, body: bytes = DEMO_BODY, stall_seconds: float = 30.0) -> None:
        self.body = body
        self.sha256 = hashlib.sha256(body).hexdigest()
        self.stall_seconds = stall_seconds
        self.hits: Counter[str] = Counter()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True, name="demo-origin")
        self._ready = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] += 1
        first = self.hits[path] == 1
        headers = {"ETag": f'"{self.sha256[:16]}"', "Accept-Ranges": "bytes",
                   "Cache-Control": "max-age=3600"}
        if path == "/flaky" and first:
            return web.Response(status=503, headers={"Retry-After": "1"}, text="slow down")
        if path in ("/cut", "/stall") and first:
            response = web.StreamResponse(headers={**headers,
                                                   "Content-Length": str(len(self.body))})
            await response.prepare(request)
            await response.write(self.body[: len(self.body) // 2])
            if path == "/stall":
                await asyncio.sleep(self.stall_seconds)
            assert request.transport is not None
            request.transport.close()
            return response
        if path in ("/flaky", "/cut", "/stall", "/model.bin"):
            return web.Response(body=self.body, headers=headers)
        return web.Response(status=404, text="not found")

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
