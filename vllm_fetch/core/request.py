"""What one call asks for, as plain data both drivers read (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .deadline import DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, Deadline

if TYPE_CHECKING:
    from .address_policy import Resolver, URLPolicy
    from .media_limits import ByteBudget

#: Default read size for streaming bodies, chosen by ``benchmarks/bench_download.py --sweep``
#: (256 MiB from loopback nginx, alternating rounds, median time vs curl): 120 KiB 1.00x every
#: round within 0.21-0.26 s; 256 KiB 0.75-1.48x; 1 MiB 1.55x. Each read allocates a fresh
#: buffer: below glibc's 128 KiB mmap threshold it is recycled from the heap, above it it is
#: often mmapped anew and page-faults on every chunk (up to 75k extra faults per 256 MiB).
DEFAULT_CHUNK_SIZE = 120 * 1024

_SET = object.__setattr__


@dataclass(frozen=True)
class TransportOptions:
    """Per-connection settings the drivers need for every request."""

    user_agent: str
    policy: URLPolicy
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_redirects: int = 10
    trust_env: bool = True
    #: DNS hook ``(host, port) -> addresses``; when set (or when the policy blocks private
    #: addresses) connections dial only the addresses it returned, after checking them.
    resolver: Resolver | None = None


@dataclass(frozen=True)
class FetchRequest:
    """One fetch: where, with which headers, under which deadline and limits."""

    url: str
    headers: dict[str, str]
    deadline: Deadline
    allow_redirects: bool = True
    max_bytes: int | None = None
    expected_size: int | None = None
    expected_sha256: str | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    hash_body: bool = False
    #: A conditional request from the cache: a 304 is an answer (headers, empty body), not an error.
    accept_not_modified: bool = False
    #: The cache follows redirects itself, hop by hop: a redirect is an answer (its status and
    #: headers; its body is never read), not followed by the driver.
    redirect_answers: bool = False
    #: aiohttp's per-response buffer (None: the session's). Parallel parts use a smaller one:
    #: eight connections each buffering 2 MiB would dominate peak memory.
    read_bufsize: int | None = None
    #: The URL policy's namespace in the shared cache (``URLPolicy.cache_scope``).
    cache_scope: str = ""
    #: ``max_bytes`` is vLLM's media download limit (an overrun names that variable).
    media_limit: bool = False
    #: Charged for every body chunk received (vLLM's per-request media budget).
    request_budget: ByteBudget | None = field(default=None, compare=False)
    #: Where the first request goes instead of ``url`` (a mirror, ``core.mirrors``); ``url``
    #: stays the identity: cache key, partials, locks and the policy check.
    send_url: str | None = None

    def __init__(
        self, url: str, headers: dict[str, str], deadline: Deadline,
        allow_redirects: bool = True, max_bytes: int | None = None,
        expected_size: int | None = None, expected_sha256: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE, hash_body: bool = False,
        accept_not_modified: bool = False, redirect_answers: bool = False,
        read_bufsize: int | None = None, cache_scope: str = "", media_limit: bool = False,
        request_budget: ByteBudget | None = None, send_url: str | None = None,
    ) -> None:
        """The dataclass's own ``__init__`` (kept by ``@dataclass``: it is defined here), one
        ``__dict__`` set in one call instead of an ``object.__setattr__`` per field (one per fetch):
        a dict display, built at its size, not a keyword dict copied into another."""
        _SET(self, "__dict__", {
            "url": url, "headers": headers, "deadline": deadline,
            "allow_redirects": allow_redirects, "max_bytes": max_bytes,
            "expected_size": expected_size, "expected_sha256": expected_sha256,
            "chunk_size": chunk_size, "hash_body": hash_body,
            "accept_not_modified": accept_not_modified, "redirect_answers": redirect_answers,
            "read_bufsize": read_bufsize, "cache_scope": cache_scope, "media_limit": media_limit,
            "request_budget": request_budget, "send_url": send_url})
