"""vllm_fetch: a resilient download manager for ML serving and training.

A drop-in for ``vllm.connections.HTTPConnection`` whose every call runs under a retry policy,
follows redirects under a URL policy and streams downloads crash-safely, with a shared
content-addressed disk cache (``FetchCache``).
"""

from ._version import __version__
from .cache.fetch_cache import FetchCache
from .connections import HTTPConnection, global_http_connection
from .core.address_policy import URLPolicy
from .core.media_limits import MediaRequestDownloadBudget
from .core.results import DownloadResult, FetchResult
from .core.retry import RetryPolicy
from .errors import (
    BlockedURLError,
    CachedBodyDamagedError,
    CacheUnreadableError,
    ChecksumMismatchError,
    DiskError,
    FetchConnectionError,
    FetchError,
    FetchTimeoutError,
    HTTPResponseSizeExceededError,
    HTTPStatusError,
    IdleTimeoutError,
    IntegrityError,
    InvalidURLError,
    MediaDownloadSizeExceededError,
    MediaRequestDownloadSizeExceededError,
    OfflineError,
    ResponseHeadersError,
    SizeLimitExceededError,
    TooManyRedirectsError,
    TruncatedBodyError,
)

__all__ = [
    "BlockedURLError",
    "CacheUnreadableError",
    "CachedBodyDamagedError",
    "ChecksumMismatchError",
    "DiskError",
    "DownloadResult",
    "FetchCache",
    "FetchConnectionError",
    "FetchError",
    "FetchResult",
    "FetchTimeoutError",
    "HTTPConnection",
    "HTTPResponseSizeExceededError",
    "HTTPStatusError",
    "IdleTimeoutError",
    "IntegrityError",
    "InvalidURLError",
    "MediaDownloadSizeExceededError",
    "MediaRequestDownloadBudget",
    "MediaRequestDownloadSizeExceededError",
    "OfflineError",
    "ResponseHeadersError",
    "RetryPolicy",
    "SizeLimitExceededError",
    "TooManyRedirectsError",
    "TruncatedBodyError",
    "URLPolicy",
    "__version__",
    "global_http_connection",
]
