"""A download body read straight into the caller's buffers (requests/urllib3 underneath).

``raw.read1(n)`` returns a new ``bytes`` per chunk, copied out of urllib3 and http.client. A
download only needs the bytes long enough to write and hash them, so when the body is plain
(no content coding, not chunked: what a file server sends) it is read with ``readinto1`` from
the connection's own socket file into a buffer the caller owns and reuses. ``readinto1`` makes
at most one ``recv`` per call, so the deadline is still checked after every read (fault F12),
and the socket's timeout is still the idle timeout. Anything else goes through
``RequestsDriver.iter_body`` as before.
"""

from __future__ import annotations

import http.client
import io
from collections.abc import Callable, Iterator
from typing import Any

import requests

from ..core.body import BodyMeter, is_encoded
from ..core.request import FetchRequest
from ..core.urls import redact_url
from ..errors import FetchError


def plain_body(response: requests.Response) -> tuple[http.client.HTTPResponse, Any] | None:
    """http.client's response under ``response`` and its socket file, when the body can be
    read from that file directly: unread, not chunked, not content-coded. Else None."""
    raw = response.raw
    inner = getattr(raw, "_fp", None)
    if not isinstance(inner, http.client.HTTPResponse) or inner.chunked:
        return None
    if getattr(raw, "_fp_bytes_read", 0) or getattr(raw, "_decoded_buffer", None):
        return None  # urllib3 already read (or holds) part of the body
    file = inner.fp
    if not isinstance(file, io.BufferedReader) or is_encoded(response.headers):
        return None
    return inner, file


def iter_into(
    response: requests.Response, meter: BodyMeter, req: FetchRequest,
    buffer: bytearray,
    map_error: Callable[[BaseException, str], FetchError],
) -> Iterator[memoryview] | None:
    """Views of the body, each read into ``buffer`` (reused: each view is consumed before the
    next read) and accounted by the meter; None when the body is not plain (the caller reads
    it the usual way)."""
    found = plain_body(response)
    if found is None:
        return None
    return _read(response, found[0], found[1], meter, req, buffer, map_error)


def _read(
    response: requests.Response, inner: http.client.HTTPResponse, file: Any, meter: BodyMeter,
    req: FetchRequest, buffer: bytearray,
    map_error: Callable[[BaseException, str], FetchError],
) -> Iterator[memoryview]:
    url = response.url or req.url
    safe = redact_url(url)
    remaining: int | None = inner.length  # None: the body ends when the connection closes
    try:
        while remaining is None or remaining > 0:
            size = meter.read_size(len(buffer))
            if remaining is not None:
                size = min(size, remaining)
            view = memoryview(buffer)[:size]
            got = file.readinto1(view)
            if not got:
                if remaining is not None:  # closed before Content-Length: as urllib3 would
                    raise http.client.IncompleteRead(b"", remaining)
                break
            if remaining is not None:
                remaining -= got
            chunk = view[:got]
            meter.feed(chunk)
            req.deadline.check(safe)
            yield chunk
    except FetchError:
        raise
    except TimeoutError as exc:  # the socket's timeout: the idle timeout
        raise map_error(requests.ReadTimeout("read timed out"), url) from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise map_error(requests.exceptions.ChunkedEncodingError("connection broken"),
                        url) from exc
    if remaining == 0:
        # The whole body is read: as at the end of urllib3's own reads, http.client lets go of
        # the socket file and the connection goes back to the pool for the next request.
        inner.length = 0
        inner.close()
        response.raw.release_conn()
    meter.finish()
