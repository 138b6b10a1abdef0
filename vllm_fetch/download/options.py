"""What a download_file call asks of the engine, beyond the request itself (plain data)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.retry import RetryPolicy
from .progress import ProgressSpec


@dataclass(frozen=True)
class DownloadOptions:
    """Engine settings for one download.

    - ``resume``: keep a partial after a failure and continue it (Range + If-Range) later.
    - ``connections``: ranged connections; None picks automatically (``core.ranges.
      auto_connections``: 1 under 64 MiB, then one per 32 MiB up to 8); 1 forces one stream.
    - ``progress``: see :mod:`vllm_fetch.download.progress`.
    """

    retry: RetryPolicy
    resume: bool = True
    connections: int | None = None
    progress: ProgressSpec = None

    def __post_init__(self) -> None:
        if self.connections is not None and self.connections < 1:
            raise ValueError(f"connections must be >= 1, got {self.connections}")
