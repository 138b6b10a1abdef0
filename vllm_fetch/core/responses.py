"""What a response status and its headers mean for the caller (pure)."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Mapping
from typing import Any

from ..errors import HTTPStatusError
from .body import AnyURL, BodyMeter, header, safe_url, wire_length
from .header_fields import combined_view
from .request import FetchRequest

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Sent unless the caller overrides it: compressed bodies would defeat size accounting.
DEFAULT_HEADERS = {"Accept-Encoding": "identity"}


def is_redirect(status: int) -> bool:
    return status in REDIRECT_STATUSES


def check_status(
    status: int, url: str, *, reason: str = "", headers: Mapping[str, str] | None = None
) -> None:
    """Raise HTTPStatusError unless ``status`` is a 2xx.

    A 3xx reaching this point was not followed (``allow_redirects=False`` or no Location):
    its body is never content, so it is an error too.
    """
    if not 200 <= status < 300:
        # repeated lines (an aiohttp multidict) combined, so none is lost (RFC 9110 §5.3)
        view = combined_view(headers) if headers is not None else None
        raise HTTPStatusError(status, url, reason=reason, headers=view)


def reads_no_body(req: FetchRequest, status: int, headers: Mapping[str, str]) -> bool:
    """Whether the final response's body is not read: a redirect the cache follows itself
    (``req.redirect_answers``); its status and headers are the answer."""
    return (req.redirect_answers and is_redirect(status)
            and header(headers, "Location") is not None)


def response_meter(
    req: FetchRequest, status: int, headers: Mapping[str, str], url: str | AnyURL,
    reason: str = "", redacted: bool = True,
) -> BodyMeter:
    """Check a final response's status and announced length; the meter for its body.

    A 304 answering a conditional request of the cache (``req.accept_not_modified``) is not an
    error: it has no body, so its meter expects nothing (its Content-Length, if any, describes
    the stored representation, RFC 9110 §15.4.5). ``redacted=False``: ``url`` is the response's
    own URL, redacted only for a message (a body that passes every check never needs it).
    """
    if (status == 304 and req.accept_not_modified) or (
            req.redirect_answers and reads_no_body(req, status, headers)):
        return BodyMeter(url, redacted=redacted)
    if not 200 <= status < 300:
        check_status(status, safe_url(url, redacted), reason=reason, headers=headers)
    # positional (the order of BodyMeter's parameters): one meter per response, and a
    # keyword each costs the call a name match
    return BodyMeter(url, wire_length(headers, url, redacted), req.max_bytes,
                     req.expected_size, req.expected_sha256, req.hash_body, 0, None,
                     req.media_limit, req.request_budget, redacted)


def charset_of(content_type: str | None) -> str | None:
    """The charset parameter of a Content-Type, if it names a codec Python knows."""
    if not content_type:
        return None
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip("\"'")
            try:
                return codecs.lookup(charset).name
            except LookupError:
                return None
    return None


def decode_text(body: bytes, headers: Mapping[str, str]) -> str:
    """Decode a body by its declared charset, else UTF-8 (with a BOM check), else Latin-1."""
    charset = charset_of(header(headers, "Content-Type"))
    if charset:
        return body.decode(charset, errors="replace")
    if body.startswith(codecs.BOM_UTF8):
        return body[len(codecs.BOM_UTF8):].decode("utf-8", errors="replace")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("latin-1")


#: What aiohttp's ``ClientResponse.json()`` accepts as a JSON Content-Type (its ``json_re``).
_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+?\+)?json")


def unexpected_json_type(headers: Mapping[str, str]) -> str | None:
    """The lowercased Content-Type when aiohttp's ``json()`` would refuse it, else None."""
    content_type = (header(headers, "Content-Type") or "").lower()
    return None if _JSON_TYPE.match(content_type) else content_type


def decode_json_as_aiohttp(body: bytes, headers: Mapping[str, str]) -> Any:
    """A JSON body decoded as aiohttp's ``json()`` does once the type is checked: None for an
    empty (or all-whitespace) body, else the text by its charset (UTF-8 by default, strict)
    parsed with ``json.loads`` (``UnicodeDecodeError`` / ``json.JSONDecodeError``)."""
    stripped = body.strip()
    if not stripped:
        return None
    return json.loads(stripped.decode(charset_of(header(headers, "Content-Type")) or "utf-8"))


def request_headers(
    user_agent: str, extra: Mapping[str, str] | None, *, extra_defaults: Mapping[str, str]
) -> dict[str, str]:
    """Headers for a request: defaults, then the caller's (which win, case-insensitively)."""
    headers = {"User-Agent": user_agent, **extra_defaults}
    for name, value in (extra or {}).items():
        for existing in [k for k in headers if k.lower() == name.lower()]:
            del headers[existing]
        headers[name] = value
    return headers
