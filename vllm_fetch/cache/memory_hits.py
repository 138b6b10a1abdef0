"""The fast path of a cached body call: a fresh answer from the memory tier, with no index
read, no flow, no retry wrapper and one ``stat`` (the blob's signature).

It handles only "fresh, servable without contacting anyone": the same key as the disk path
(``FetchCache.key_for``: URL policy scope, keyed credential hash), the same decision
(``core.cache_policy.on_lookup`` on the held entry: freshness, ``Age``, Vary, request
directives, privacy, Range) and the same answer (``flows.served_hit``). A fresh verdict for a
plain request (no directive, no Range) is remembered with the held copy and the request's
fields until the instant the entry turns stale (``core.cache_policy.fresh_until``): the same
copy asked with the same fields before then gets the same answer without deciding again.
Anything else (offline, stale, revalidation, stale-while-revalidate, a stored redirect,
nothing held) returns None and takes the cache flows unchanged. The URL policy was checked by
the caller.
"""

from __future__ import annotations

import time

from ..core.cache_policy import (
    LookupAction,
    current_age,
    fresh_until,
    on_lookup,
    plain_request,
)
from ..core.request import FetchRequest
from ..core.results import Body
from ..core.urls import without_userinfo
from .fetch_cache import FetchCache, FreshVerdict
from .flows import check_size, served_fresh, served_hit

#: Verdicts remembered per cache (one per key served from memory to a plain request).
_VERDICTS_MAX = 65_536


def memory_body(cache: FetchCache, req: FetchRequest) -> Body | None:
    """The answer from memory to an online body call, or None (then ask the flows)."""
    if cache.memory is None:
        return None
    key, headers = cache.key_for(req.url, req.headers, req.cache_scope)
    held = cache.held(key)
    if held is None or held.entry.is_redirect:
        return None
    now = time.time()
    known = cache.fresh_verdicts.get(key)
    if known is not None and known.held is held and now < known.until and known.fields == headers:
        cache.used(key, now)  # the same held copy, the same fields, still fresh: as before
        age = current_age(held.entry, now)
        last = known.served
        if (last is not None and last.age == int(age)
                and last.url == (without_userinfo(req.url) if "@" in req.url else req.url)):
            check_size(held.entry.size, req)  # this caller's cap
            return last  # the same answer, to the second
        known.served = served_fresh(held.data, held.entry, req, age)
        return known.served
    decision = on_lookup(held.entry, headers, now, offline=False,
                         caller_private_ok=cache.allow_private)
    if decision.action is not LookupAction.HIT or decision.background:
        return None
    if decision.byte_range is None and not decision.stale and plain_request(headers):
        _remember(cache.fresh_verdicts, key,
                  FreshVerdict(held, dict(headers), fresh_until(held.entry)))
    cache.used(key, now)
    return served_hit(held.data, decision, req)


def _remember(verdicts: dict[str, FreshVerdict], key: str, verdict: FreshVerdict) -> None:
    if len(verdicts) >= _VERDICTS_MAX:
        verdicts.clear()  # bounded: the next hit of each decides again
    verdicts[key] = verdict
