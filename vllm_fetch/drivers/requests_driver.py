"""The sync driver: opens connections with requests, streams bytes, asks the core what to do."""

from __future__ import annotations

import contextlib
import http.client
import http.cookiejar
import threading
import weakref
from collections.abc import Iterator

import requests
import urllib3.exceptions as u3
from requests.structures import CaseInsensitiveDict

from ..config import ca_bundle
from ..core import redirects
from ..core.body import CASE_INSENSITIVE_TYPES, BodyMeter
from ..core.header_fields import field_lines
from ..core.proxy_refusal import proxy_refused, tunnel_status
from ..core.request import FetchRequest, TransportOptions
from ..core.responses import reads_no_body, response_meter
from ..core.results import Body
from ..core.urls import redact_url, url_to_send
from ..errors import (
    FetchConnectionError,
    FetchError,
    FetchTimeoutError,
    IdleTimeoutError,
    IntegrityError,
    InvalidURLError,
    ResponseHeadersError,
    TruncatedBodyError,
    wrapped_fetch_error,
)
from .address_guard import address_guard
from .requests_adapter import FetchAdapter, response_deadline, verbatim_target
from .requests_environment import send_settings
from .requests_readinto import iter_into

CASE_INSENSITIVE_TYPES.add(CaseInsensitiveDict)


def _wrapped(exc: BaseException, depth: int = 4) -> Iterator[BaseException]:
    """``exc`` and the exceptions requests and urllib3 wrapped inside it (args and causes)."""
    yield exc
    if depth:
        inner = [a for a in exc.args if isinstance(a, BaseException)] + [exc.__cause__]
        for nested in inner:
            if nested is not None and nested is not exc:
                yield from _wrapped(nested, depth - 1)


def is_header_limit(exc: BaseException) -> bool:
    """True when http.client refused the response head: a header line over 64 KiB, or more
    than 100 header fields (fault F20)."""
    return any(
        isinstance(e, http.client.LineTooLong)
        or (type(e) is http.client.HTTPException and "headers" in str(e))
        for e in _wrapped(exc)
    )


def map_error(exc: BaseException, url: str) -> FetchError:
    """Translate requests/urllib3 exceptions into the vllm_fetch hierarchy."""
    safe = redact_url(url)
    inner = wrapped_fetch_error(exc)  # e.g. the address guard's refusal, wrapped as an OSError
    if inner is not None:
        return inner
    if is_header_limit(exc):
        return ResponseHeadersError(f"oversized or too many response headers from {safe}",
                                    url=safe)
    if any(isinstance(e, u3.InvalidHeader) for e in _wrapped(exc)):
        # e.g. two different Content-Length values (fault F5): malformed, never retried
        return ResponseHeadersError(f"malformed response headers from {safe}", url=safe)
    if isinstance(exc, (requests.ConnectTimeout, u3.ConnectTimeoutError)):
        return FetchTimeoutError(f"timed out connecting to {safe}", url=safe)
    if isinstance(exc, (requests.ReadTimeout, u3.ReadTimeoutError)):
        return IdleTimeoutError(f"no data from {safe} within the idle timeout", url=safe)
    if isinstance(exc, requests.ConnectionError) and exc.args:
        inner = exc.args[0]
        if isinstance(inner, u3.ReadTimeoutError):
            return IdleTimeoutError(f"no data from {safe} within the idle timeout", url=safe)
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, u3.ProtocolError)):
        return TruncatedBodyError(f"connection to {safe} broke mid-body", url=safe)
    if isinstance(exc, (requests.exceptions.ContentDecodingError, u3.DecodeError)):
        return IntegrityError(f"cannot decode the body of {safe}", url=safe)
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        u3.LocationParseError)):
        return InvalidURLError(f"Invalid HTTP URL: {safe}", url=safe)
    if isinstance(exc, requests.exceptions.ProxyError):
        status = next((s for e in _wrapped(exc) if (s := tunnel_status(str(e)))), None)
        if status is not None:
            return proxy_refused(safe, status)
    if isinstance(exc, (requests.RequestException, OSError, u3.HTTPError)):
        return FetchConnectionError(f"cannot fetch {safe}: {type(exc).__name__}", url=safe)
    raise exc


def ca_bundle_from_env() -> str | bool:
    """The CA bundle the CA variables name (``config.ca_bundle``), else True."""
    return ca_bundle() or True


class RequestsDriver:
    """Sync transport. Sessions are per thread (requests.Session is not thread-safe)."""

    def __init__(self, options: TransportOptions, *, reuse_client: bool = True) -> None:
        self.options = options
        self.reuse_client = reuse_client
        self._local = threading.local()
        # weak: a thread that ends drops its session (urllib3 then closes its pooled sockets),
        # so threads that come and go do not pile up sessions and keep-alive sockets
        self._sessions: weakref.WeakSet[requests.Session] = weakref.WeakSet()
        self._lock = threading.Lock()

    # -- sessions -----------------------------------------------------------------------------
    def new_session(self) -> requests.Session:
        """A session pinned to checked addresses when the policy asks for it, and keeping no
        cookies (it is shared by every caller of the connection)."""
        session = requests.Session()
        session.trust_env = self.options.trust_env
        session.max_redirects = self.options.max_redirects
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        policy = self.options.policy
        adapter = FetchAdapter(address_guard(self.options), policy if policy.restricts else None)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def session(self) -> requests.Session:
        """The calling thread's shared session (or a fresh one when reuse_client=False)."""
        if not self.reuse_client:
            return self.new_session()
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self.new_session()
            self._local.session = session
            with self._lock:
                self._sessions.add(session)
        return session

    @contextlib.contextmanager
    def call_session(self) -> Iterator[requests.Session]:
        """A session for one call: the shared one, or a fresh one closed afterwards."""
        if self.reuse_client:
            yield self.session()
            return
        session = self.new_session()
        try:
            yield session
        finally:
            session.close()

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions), weakref.WeakSet()
        for session in sessions:
            session.close()
        self._local = threading.local()

    # -- one request, redirects followed by the core ------------------------------------------
    def _send(
        self, session: requests.Session, url: str, headers: dict[str, str], req: FetchRequest
    ) -> requests.Response:
        req.deadline.check(redact_url(url))
        timeouts = req.deadline.attempt_timeouts(
            idle=self.options.idle_timeout, connect=self.options.connect_timeout
        )
        try:
            # prepared from the URL to send: requests makes Basic credentials of the userinfo
            # of the URL it prepares, over the caller's own Authorization header
            sent = url_to_send(url, headers)
            settings, auth = send_settings(session, sent, headers)
            prepared = session.prepare_request(
                requests.Request("GET", sent, headers=headers, auth=auth))
            prepared.url = url  # requests re-quotes (%7e -> ~): signed URLs must go verbatim
            # The adapter, not Session.send: even with allow_redirects=False, Session.send reads
            # a redirect's whole body (to precompute response.next), and keeps cookies.
            verify: bool | str = settings["verify"] if settings["verify"] is not None else True
            if verify is True and not session.trust_env:
                verify = ca_bundle_from_env()  # trust_env is about proxies and .netrc only
            with verbatim_target(url), response_deadline(timeouts.total):
                return session.get_adapter(url).send(
                    prepared, stream=True, timeout=(timeouts.connect, timeouts.read),
                    verify=verify, cert=settings["cert"],
                    proxies=settings["proxies"],
                )
        except Exception as exc:
            # not chained: requests' own exceptions quote the full URL, query string included
            raise map_error(exc, url) from None

    def open(self, session: requests.Session, req: FetchRequest) -> requests.Response:
        """Send the request and follow redirects; the body of the final response is unread."""
        chain = redirects.Chain(req, self.options)
        while True:
            response = self._send(session, chain.url, chain.headers, req)
            if chain.arrived(response.status_code, response.headers, response.close):
                return response

    # -- bodies -------------------------------------------------------------------------------
    def iter_body(
        self, response: requests.Response, meter: BodyMeter, req: FetchRequest
    ) -> Iterator[bytes]:
        """Stream decoded chunks as they arrive, each accounted by the meter."""
        raw = response.raw
        safe = redact_url(response.url or req.url)
        try:
            while True:
                chunk = raw.read1(meter.read_size(req.chunk_size), decode_content=True)
                if not chunk:
                    break
                meter.feed(chunk)
                req.deadline.check(safe)
                yield chunk
        except FetchError:
            raise
        except Exception as exc:
            raise map_error(exc, response.url or req.url) from exc
        meter.finish()

    def iter_body_into(
        self, response: requests.Response, meter: BodyMeter, req: FetchRequest,
        buffer: bytearray,
    ) -> Iterator[bytes | memoryview]:
        """:meth:`iter_body` for downloads: a plain body is read into ``buffer``, reused
        (``requests_readinto``: no new bytes object per chunk), any other the usual way."""
        views = iter_into(response, meter, req, buffer, map_error)
        return views if views is not None else self.iter_body(response, meter, req)

    def checked_response(self, session: requests.Session, req: FetchRequest) -> tuple[
        requests.Response, BodyMeter
    ]:
        """Open, check the status and announced length; return the response and its meter."""
        response = self.open(session, req)
        try:
            url = redact_url(response.url or req.url)
            meter = response_meter(req, response.status_code, response.headers, url,
                                   reason=response.reason or "")
        except BaseException:
            response.close()
            raise
        return response, meter

    def fetch_body(self, req: FetchRequest) -> Body:
        """The whole body in memory, checked against every limit."""
        with self.call_session() as session:
            response, meter = self.checked_response(session, req)
            with response:
                # every header line as received (urllib3 keeps repeated ones; requests joins)
                raw = getattr(response.raw, "headers", None)
                lines = field_lines(raw if raw is not None else response.headers)
                url = response.url or req.url
                if reads_no_body(req, response.status_code, response.headers):
                    return Body(b"", response.status_code, lines, url)
                content = b"".join(self.iter_body(response, meter, req))
                return Body(content, response.status_code, lines, url, meter.sha256)
