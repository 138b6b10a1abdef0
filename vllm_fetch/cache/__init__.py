"""The content-addressed disk cache: blob store, diskcache index, and the glue to the façade."""

from .fetch_cache import CachedItem, CacheInfo, FetchCache, default_cache_dir
from .housekeeping import PruneReport, VerifyReport

__all__ = ["CacheInfo", "CachedItem", "FetchCache", "PruneReport", "VerifyReport",
           "default_cache_dir"]
