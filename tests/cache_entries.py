"""A fresh, storable cache entry for tests that drive ``FetchCache`` directly."""

from __future__ import annotations

import time

from vllm_fetch.core.cache_policy import CacheEntry


def fresh_entry(url: str, *, max_age: int = 600) -> CacheEntry:
    """An entry for ``url`` stored now, fresh for ``max_age`` seconds (sha256/size unset)."""
    now = time.time()
    return CacheEntry(url=url, headers={"cache-control": f"max-age={max_age}"}, stored_at=now,
                      request_time=now, response_time=now)
