"""The fast path of a cached body call: a fresh answer from the memory tier, with no index
read, no flow, no retry wrapper and one ``stat`` (the blob's signature).

It handles only "fresh, servable without contacting anyone": the same key as the disk path
(``FetchCache.key_for``: URL policy scope, keyed credential hash), the same decision
(``core.cache_policy.on_lookup`` on the held entry, per call: freshness, ``Age``, Vary,
request directives, privacy, Range) and the same answer (``flows.served_hit``). Anything else
(offline, stale, revalidation, stale-while-revalidate, a stored redirect, nothing held)
returns None and takes the cache flows unchanged. The URL policy was checked by the caller.
"""

from __future__ import annotations

import time

from ..core.cache_policy import LookupAction, on_lookup
from ..core.request import FetchRequest
from ..core.results import Body
from .fetch_cache import FetchCache
from .flows import served_hit


def memory_body(cache: FetchCache, req: FetchRequest) -> Body | None:
    """The answer from memory to an online body call, or None (then ask the flows)."""
    if cache.memory is None:
        return None
    key, headers = cache.key_for(req.url, req.headers, req.cache_scope)
    held = cache.held(key)
    if held is None or held.entry.is_redirect:
        return None
    now = time.time()
    decision = on_lookup(held.entry, headers, now, offline=False,
                         caller_private_ok=cache.allow_private)
    if decision.action is not LookupAction.HIT or decision.background:
        return None
    cache.used(key, now)
    return served_hit(held.data, decision, req)
