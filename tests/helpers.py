"""Run the same test against the sync and the async side of HTTPConnection."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from vllm_fetch import HTTPConnection

ASYNC_NAMES = {
    "get_bytes": "async_get_bytes",
    "get_text": "async_get_text",
    "get_json": "async_get_json",
    "download_file": "async_download_file",
    "fetch_bytes": "async_fetch_bytes",
    "fetch_file": "async_fetch_file",
}


def call(mode: str, conn: HTTPConnection, name: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``name`` on the sync side, or its async twin inside a fresh ``asyncio.run``."""
    if mode == "sync":
        return getattr(conn, name)(*args, **kwargs)

    async def run() -> Any:
        return await getattr(conn, ASYNC_NAMES[name])(*args, **kwargs)

    return asyncio.run(run())


def leftovers(directory: Path) -> list[str]:
    """Files in a directory (temp files would show up here)."""
    return sorted(p.name for p in directory.iterdir())
