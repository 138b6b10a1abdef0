"""What a completed fetch hands back, the same shape from both drivers (plain data)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Body:
    """A complete body in memory, checked against every limit."""

    content: bytes
    status: int
    headers: dict[str, str]
    url: str
    sha256: str | None


@dataclass(frozen=True)
class DownloadResult:
    """A file published at ``path``: its size, sha256 (when hashed) and the final response;
    ``from_cache`` when the bytes came from the disk cache rather than a body transfer."""

    path: Path
    size: int
    sha256: str | None
    status: int
    headers: dict[str, str]
    url: str
    from_cache: bool = False
