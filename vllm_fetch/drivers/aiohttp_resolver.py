"""An aiohttp resolver that answers only with addresses the :class:`AddressGuard` checked.

aiohttp skips the resolver for IP-literal hosts; those are checked before every request by
``URLPolicy.check_url`` (and by :func:`literal_check_trace` for the raw session and the
redirects aiohttp follows for it), so a literal is refused before aiohttp would dial it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from types import SimpleNamespace

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from ..core.address_policy import URLPolicy, redirect_target
from .address_guard import AddressGuard

_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


class PinnedResolver(AbstractResolver):
    """Resolves through the guard (in a worker thread: resolvers may block) and fails closed."""

    def __init__(self, guard: AddressGuard) -> None:
        self.guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await asyncio.get_running_loop().run_in_executor(
            None, self.guard.resolve, host, port
        )
        return [
            ResolveResult(
                hostname=host,  # SNI and the certificate check use the request's own host
                host=address,
                port=port,
                family=socket.AF_INET6 if ipaddress.ip_address(address).version == 6
                else socket.AF_INET,
                proto=0,
                flags=_NUMERIC,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None


def literal_check_trace(policy: URLPolicy) -> aiohttp.TraceConfig:
    """Trace hooks that refuse each request URL, and each redirect aiohttp itself follows, by
    ``policy`` before aiohttp connects.

    They guard callers who use ``get_async_client()``'s session directly, where aiohttp would
    dial an IP literal without asking the resolver.
    """

    async def on_request_start(
        session: aiohttp.ClientSession, context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        policy.check_url(str(params.url))

    async def on_request_redirect(
        session: aiohttp.ClientSession, context: SimpleNamespace,
        params: aiohttp.TraceRequestRedirectParams,
    ) -> None:
        location = params.response.headers.get("Location") or params.response.headers.get("URI")
        if not location:
            return
        try:
            policy.check_url(redirect_target(str(params.url), location))
        except BaseException:
            params.response.release()
            raise

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    trace.on_request_redirect.append(on_request_redirect)
    return trace
