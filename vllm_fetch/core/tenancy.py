"""Which requests carry credentials, and the material a cache key must bind them to (pure).

The cache is shared by every caller of a process and every process of a machine, so a response
to a request with credentials — ``Authorization``, ``Proxy-Authorization``, ``Cookie``,
``X-Api-Key``, a field named like a key or token (``is_credential_field``) or userinfo in
the URL — belongs to those credentials alone, whatever its
Cache-Control says (stricter than RFC 9111 §3.5, which lets a shared cache reuse a response to
an authorized request marked ``public``, ``s-maxage`` or ``must-revalidate``). Where such a
response is stored at all, its key includes a keyed hash of ``credential_material`` (the
cache does the hashing with its own secret; see ``cache/tenants.py``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from .urls import split_url

#: Request fields that carry credentials (lowercase)...
CREDENTIAL_FIELDS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
#: ...and the names of other fields taken as credentials: API keys and tokens under the names
#: services give them (``Api-Key``, ``X-Auth-Token``, ``Private-Token``, ``X-Goog-Api-Key``,
#: ``Ocp-Apim-Subscription-Key``, ``X-Amz-Security-Token``, a session id). Taking a harmless
#: field for one costs only cache hits; missing one would serve a tenant's answer to another.
_CREDENTIAL_NAME = re.compile(
    r"auth|token|secret|passw|passphrase|session|cookie|signature|credential|apikey"
    r"|(?:^|-)key(?:$|-)")  # "key" as a word: X-Functions-Key, Api-Key, X-Key, not Keep-Alive


@functools.lru_cache(maxsize=1024)
def is_credential_field(name: str) -> bool:
    """Whether a request field (its name, in any case) carries credentials."""
    lower = name.lower()
    return (lower in CREDENTIAL_FIELDS
            or _CREDENTIAL_NAME.search(lower.replace("_", "-")) is not None)  # api_key too
#: What stands in for URL userinfo among the request fields the cache policy looks at.
URL_CREDENTIALS_FIELD = "authorization"


def url_userinfo(url: str) -> str:
    """The userinfo of ``url`` ("" when none, or when the URL does not parse)."""
    if "@" not in url:
        return ""
    try:
        netloc = split_url(url)[0].netloc
    except ValueError:
        return ""
    userinfo, at, _ = netloc.rpartition("@")
    return userinfo if at else ""


def credential_material(url: str, headers: Mapping[str, str]) -> bytes:
    """Every credential the request carries, canonically (b"" when it carries none)."""
    found: list[tuple[str, str]] = []
    for name, value in headers.items():  # a plain loop: this runs on every cache lookup
        if is_credential_field(name):
            found.append((name.lower(), value))
    if "@" in url:
        userinfo = url_userinfo(url)
        if userinfo:
            found.append(("userinfo", userinfo))
    if not found:
        return b""
    found.sort()
    return "\0".join(f"{name}\0{value}" for name, value in found).encode("utf-8",
                                                                          "surrogatepass")


def policy_headers(url: str, headers: Mapping[str, str]) -> Mapping[str, str]:
    """The request fields the cache policy decides on: ``headers``, plus a stand-in
    Authorization field when the credentials are in the URL's userinfo (the value is never
    stored: credential fields are not recorded for Vary)."""
    if not url_userinfo(url) or any(n.lower() == URL_CREDENTIALS_FIELD for n in headers):
        return headers
    return {**headers, URL_CREDENTIALS_FIELD: "(URL userinfo)"}
