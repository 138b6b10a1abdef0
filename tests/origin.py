"""A real HTTP origin on 127.0.0.1 for the tests: an aiohttp.web app in a background thread.

Tests register handlers per path, then assert on what the origin saw: how many requests, with
which raw path and headers, and how many body bytes it sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str
    raw_path: str
    headers: dict[str, str]


@dataclass
class Origin:
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    bytes_sent: int = 0
    connections: int = 0
    tls: ssl.SSLContext | None = None  # serve https with this context
    _handlers: dict[str, Handler] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- describing the origin --------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}{path}"

    def route(self, path: str, handler: Handler) -> str:
        self._handlers[path] = handler
        return self.url(path)

    def serve_bytes(self, path: str, data: bytes, *, headers: dict[str, str] | None = None,
                    status: int = 200) -> str:
        async def handler(request: web.Request) -> web.StreamResponse:
            self.count_sent(len(data))
            return web.Response(body=data, status=status, headers=headers or {})
        return self.route(path, handler)

    def count(self, path: str) -> int:
        return sum(1 for seen in self.requests if seen.path == path)

    def seen(self, path: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.path == path]

    def count_sent(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    # -- running it ---------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Seen(request.method, request.path, request.raw_path,
                                  dict(request.headers)))
        handler = self._handlers.get(request.path)
        if handler is None:
            return web.Response(status=404, text="not found")
        return await handler(request)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.tls)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    def start(self) -> Origin:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="test-origin")
        self._thread.start()
        ready.wait(10)
        return self

    @staticmethod
    async def _shutdown(runner: web.AppRunner) -> None:
        await runner.cleanup()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:  # handlers still sleeping are cancelled, not destroyed pending
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is None or runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(runner), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        loop.close()
        self._loop = None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def cut_after(request: web.Request, data: bytes, cut: int, *,
                    headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Announce the full length, send ``cut`` bytes, then drop the connection."""
    response = web.StreamResponse(headers={"Content-Length": str(len(data)), **(headers or {})})
    await response.prepare(request)
    await response.write(data[:cut])
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.close()
    return response
