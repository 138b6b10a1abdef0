"""The TLS context for the async driver when a CA bundle variable names one (``config.ca_bundle``).

requests takes the bundle as ``verify=``; aiohttp's default context reads ``SSL_CERT_FILE`` only
once, at import, and no other variable. One context per bundle file and version is kept.
"""

from __future__ import annotations

import functools
import os
import ssl

from ..config import ca_bundle


@functools.lru_cache(maxsize=8)
def _context(path: str, is_dir: bool, stamp: tuple[int, int]) -> ssl.SSLContext:
    """A verifying context trusting exactly ``path`` (``stamp``: its mtime and size, so an
    edited bundle is read again)."""
    if is_dir:
        return ssl.create_default_context(capath=path)
    return ssl.create_default_context(cafile=path)


def ca_context() -> ssl.SSLContext | None:
    """The context for the configured bundle, or None for aiohttp's default. Raises OSError
    (a connection error for the caller) when the bundle cannot be read."""
    bundle = ca_bundle()
    if bundle is None:
        return None
    st = os.stat(bundle)
    return _context(bundle, os.path.isdir(bundle), (st.st_mtime_ns, st.st_size))
