"""The requests adapter vllm_fetch mounts: verbatim request targets and pinned addresses.

Verbatim targets: urllib3 normalises percent-escapes in the target (``%7e`` -> ``%7E``), which
breaks signatures that cover the raw query. The driver names the verbatim target for the current
call; the pool uses it only when urllib3's own encoding of it is exactly what urllib3 was about
to send, so nothing that urllib3 would have had to escape is ever sent raw.

Pinned addresses: with an :class:`AddressGuard`, each new connection resolves its host once
through the guard (every answer checked) and connects to one of those addresses. ``self.host``
is left alone, so the Host header, TLS SNI and the certificate check still use the name.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import http.client
import itertools
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar, cast
from urllib.parse import urlsplit

from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.util import connection
from urllib3.util.url import _encode_target

from ..core.address_policy import URLPolicy, parse_ip_literal
from .address_guard import AddressGuard

_Pool = TypeVar("_Pool", bound=HTTPConnectionPool)

_VERBATIM_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "vllm_fetch_verbatim_target", default=None
)
#: time.monotonic() by which the response head must have arrived (see response_deadline)
_HEAD_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "vllm_fetch_head_deadline", default=None
)


def request_target(url: str) -> str:
    """The origin-form target of a URL: path (or /) and query, as written."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class _RedactOwnRequests(logging.Filter):
    """urllib3 logs each request target (DEBUG) and, for a malformed response head, the URL
    (WARNING), query strings included: signed URLs in the application's logs (fault S7). For
    records emitted while vllm_fetch sends a request, the query is cut."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _VERBATIM_TARGET.get() is not None:
            try:
                message = record.getMessage()
            except Exception:  # a malformed record: logging reports it later, never we
                return True
            record.msg, record.args = _QUERY.sub("?…", message), ()
        return True


_QUERY = re.compile(r"\?[^\s\"')\]]+")
for _name in ("urllib3.connectionpool", "urllib3.connection"):
    logging.getLogger(_name).addFilter(_RedactOwnRequests())


@contextlib.contextmanager
def verbatim_target(url: str) -> Iterator[None]:
    """Within this block, requests in this thread send ``url``'s target unnormalised."""
    token = _VERBATIM_TARGET.set(request_target(url))
    try:
        yield
    finally:
        _VERBATIM_TARGET.reset(token)


@contextlib.contextmanager
def response_deadline(seconds: float | None) -> Iterator[None]:
    """Within this block, a response head must arrive within ``seconds`` in all.

    Socket timeouts bound each read, not the sum: an origin trickling its status line and
    headers a byte at a time, each just under the idle timeout, would otherwise hold a sync
    call far past its total deadline (fault F12). None: no bound beyond the idle timeout.
    """
    end = None if seconds is None else time.monotonic() + seconds
    token = _HEAD_DEADLINE.set(end)
    try:
        yield
    finally:
        _HEAD_DEADLINE.reset(token)


class _Watchdog:
    """One daemon thread that shuts down the sockets of heads still awaited at their deadline
    (a thread per request would cost more than a loopback request itself)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Any, threading.Event]] = []
        self._ids = itertools.count()
        self._armed = 0
        self._thread: threading.Thread | None = None

    def arm(self, end: float, conn: Any) -> threading.Event:
        """Watch ``conn`` until ``end`` (until :meth:`disarm`). When it fires, it sets
        ``conn.vllm_fetch_cut`` and shuts ``conn.sock`` down."""
        done = threading.Event()
        conn.vllm_fetch_cut = False
        with self._cond:
            self._armed += 1
            heapq.heappush(self._heap, (end, next(self._ids), conn, done))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="vllm_fetch-deadline")
                self._thread.start()
            if self._heap[0][3] is done:
                self._cond.notify()
        return done

    def disarm(self, done: threading.Event) -> None:
        """Stop watching; afterwards ``conn.vllm_fetch_cut`` says whether it fired first."""
        with self._cond:
            if done.is_set():
                return
            done.set()
            self._armed -= 1
            if len(self._heap) > 64 and len(self._heap) > 4 * self._armed:
                self._heap = [entry for entry in self._heap if not entry[3].is_set()]
                heapq.heapify(self._heap)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][3].is_set():
                    heapq.heappop(self._heap)  # disarmed
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                _, _, conn, done = heapq.heappop(self._heap)
                if not done.is_set():
                    self._armed -= 1
                    conn.vllm_fetch_cut = True
                    sock = getattr(conn, "sock", None)
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns
                    done.set()


_WATCHDOG = _Watchdog()


class _VerbatimTargetMixin:
    def _make_request(self, conn: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        wanted = _VERBATIM_TARGET.get()
        if wanted is not None and wanted != url and _encode_target(wanted) == url:
            url = wanted
        try:
            return self._timed_request(conn, method, url, *args, **kwargs)
        except BaseException:
            stray = getattr(conn, "stray_response", None)
            if stray is not None:
                stray.close()
            raise
        finally:
            conn.stray_response = None

    def _timed_request(self, conn: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        end = _HEAD_DEADLINE.get()
        if end is None:
            return super()._make_request(conn, method, url, *args, **kwargs)  # type: ignore[misc]
        watch = _WATCHDOG.arm(end, conn)
        try:
            response = super()._make_request(conn, method, url, *args, **kwargs)  # type: ignore[misc]
        except BaseException as exc:
            _WATCHDOG.disarm(watch)
            if conn.vllm_fetch_cut:  # whatever the cut made the parser say, it was the deadline
                raise ReadTimeoutError(self, url, "total deadline passed") from exc  # type: ignore[arg-type]
            raise
        _WATCHDOG.disarm(watch)
        if conn.vllm_fetch_cut:  # a head cut short can parse as a complete (empty) response
            response.close()
            raise ReadTimeoutError(self, url, "total deadline passed")  # type: ignore[arg-type]
        return response


class _TrackedResponseMixin:
    """Remembers http.client's response until urllib3 has wrapped it. urllib3 drops it unclosed
    when the head fails its own checks (two different Content-Length values, fault F5), and
    its socket file then leaks (a ResourceWarning); ``_make_request`` closes it."""

    stray_response: http.client.HTTPResponse | None = None

    @property
    def response_class(self) -> Callable[..., http.client.HTTPResponse]:
        def make(*args: Any, **kwargs: Any) -> http.client.HTTPResponse:
            self.stray_response = http.client.HTTPResponse(*args, **kwargs)
            return self.stray_response
        return make


class _BoundedLookupMixin:
    """Unpinned connections (no guard): the system lookup (``getaddrinfo``) is bounded by the
    connect timeout too, as on the async side; a literal address needs no lookup."""

    #: resolves with ``getaddrinfo`` and checks nothing (no URL policy applies here)
    guard: ClassVar[AddressGuard] = AddressGuard(URLPolicy())
    _dns_host: str
    timeout: float | None

    def _new_conn(self) -> socket.socket:
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
        if timeout is not None and parse_ip_literal(self._dns_host.strip("[]")) is None:
            return _PinnedConnectionMixin._new_conn(self)  # type: ignore[arg-type]
        return super()._new_conn()  # type: ignore[misc, no-any-return]


class _TrackedHTTPConnection(_BoundedLookupMixin, _TrackedResponseMixin,  # type: ignore[misc]
                             HTTPConnection):
    pass


class _TrackedHTTPSConnection(_BoundedLookupMixin, _TrackedResponseMixin,  # type: ignore[misc]
                              HTTPSConnection):
    pass


class VerbatimHTTPConnectionPool(_VerbatimTargetMixin, HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class VerbatimHTTPSConnectionPool(_VerbatimTargetMixin, HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _PinnedConnectionMixin:
    """``_new_conn`` of urllib3's HTTP(S)Connection, dialing only the guard's addresses."""

    guard: ClassVar[AddressGuard]
    _dns_host: str
    port: int
    timeout: float | None
    source_address: tuple[str, int] | None
    socket_options: connection._TYPE_SOCKET_OPTIONS | None

    def _new_conn(self) -> socket.socket:
        host = cast(HTTPConnection, self).host
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
        try:  # bounded: the call's deadline covers DNS too (issue 13)
            addresses = self.guard.resolve_within(self._dns_host, self.port, timeout)
        except socket.gaierror as exc:
            raise NameResolutionError(host, cast(HTTPConnection, self), exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"{exc} (connect timeout={timeout})") from exc
        failure: OSError | None = None
        for address in addresses:
            try:
                sock = connection.create_connection(
                    (address, self.port), self.timeout, source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(
                    self, f"Connection to {host} timed out. (connect timeout={self.timeout})"
                ) from exc
            except OSError as exc:
                failure = exc
                continue
            sys.audit("http.client.connect", self, host, self.port)
            return sock
        raise NewConnectionError(
            cast(HTTPConnection, self), f"Failed to establish a new connection: {failure}"
        )


def _pinned_pool(pool: type[_Pool], guard: AddressGuard) -> type[_Pool]:
    """A subclass of ``pool`` whose connections dial only addresses ``guard`` checked."""
    base = pool.ConnectionCls
    conn_cls = type(f"Pinned{base.__name__}", (_PinnedConnectionMixin, base), {"guard": guard})
    return cast("type[_Pool]", type(f"Pinned{pool.__name__}", (pool,),
                                    {"ConnectionCls": conn_cls}))


class FetchAdapter(HTTPAdapter):
    """The adapter every vllm_fetch ``requests.Session`` mounts for http and https.

    With a ``guard``, direct connections are pinned to checked addresses. Connections through
    a proxy are not (the proxy resolves the name), which is why proxies are off by default
    whenever the URL policy restricts anything. With a restricting ``policy``, every request
    URL is checked before it is sent, also for callers using ``get_sync_client()`` directly
    (and the redirects requests follows for them).
    """

    __attrs__ = [*HTTPAdapter.__attrs__, "guard", "policy"]  # noqa: RUF012 - pickles keep them

    def __init__(self, guard: AddressGuard | None = None, policy: URLPolicy | None = None,
                 **kwargs: Any) -> None:
        self.guard = guard  # init_poolmanager (called by HTTPAdapter.__init__) reads it
        self.policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        http: type[HTTPConnectionPool] = VerbatimHTTPConnectionPool
        https: type[HTTPConnectionPool] = VerbatimHTTPSConnectionPool
        guard = getattr(self, "guard", None)
        if guard is not None:
            http, https = _pinned_pool(http, guard), _pinned_pool(https, guard)
        self.poolmanager.pool_classes_by_scheme = {"http": http, "https": https}

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        if self.policy is not None and request.url is not None:
            self.policy.check_url(request.url)
        return super().send(request, *args, **kwargs)
