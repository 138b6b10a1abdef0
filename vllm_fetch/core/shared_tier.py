"""The read-only shared cache tier (pure): which calls may ask it, which of its entries serve.

The tier is another machine's cache directory (``VLLM_FETCH_SHARED_CACHE``). It is asked after
the local cache, before any request, and answers by the same cache key. Rules:

- Never offline (offline mode answers from the local cache alone), never for a Range the local
  cache could not answer (``BYPASS``).
- Never for a request with credentials (``core.tenancy``): their keys include a keyed hash made
  with the filling machine's own secret, so they could not be found, and a response to
  credentials belongs to that machine's caller alone. Entries marked ``private`` are misses.
- A stored entry serves only while it is fresh, judged from its stored headers exactly as a
  local entry is (``on_lookup``): a stale one (even within ``stale-while-revalidate``) is a miss,
  and the call goes to the mirror or the origin.
"""

from __future__ import annotations

from collections.abc import Mapping

from .cache_policy import CacheEntry, LookupAction, LookupDecision, on_lookup
from .tenancy import credential_material


def asks_shared_tier(url: str, request_headers: Mapping[str, str], local: LookupDecision, *,
                     offline: bool) -> bool:
    """Whether a call the local cache could not answer without a request asks the tier."""
    if offline or local.action in (LookupAction.BYPASS, LookupAction.OFFLINE_MISS,
                                   LookupAction.OFFLINE_HIT):
        return False
    return not credential_material(url, request_headers)


def shared_hit(entry: CacheEntry | None, request_headers: Mapping[str, str],
               now: float) -> LookupDecision | None:
    """The decision to serve the tier's ``entry`` (a fresh HIT), or None: a miss."""
    decision = on_lookup(entry, request_headers, now, offline=False, caller_private_ok=False)
    if decision.action is not LookupAction.HIT or decision.background or decision.entry is None:
        return None
    if decision.byte_range is not None:
        return None  # a Range is answered from the local cache or the network only
    return decision
