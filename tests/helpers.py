"""Run the same test against the sync and the async side of HTTPConnection."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import termios
import threading
from pathlib import Path
from types import TracebackType
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


def default_sigint() -> None:
    """A child's ``preexec_fn``: SIGINT back to its default before the exec, so the child's
    Python turns Ctrl-C into KeyboardInterrupt even when this test run ignores SIGINT (started
    in the background, or by a CI shell that ignores it: children inherit that), and
    unblocked (a blocked signal mask is inherited too)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def terminal_child() -> None:
    """A child's ``preexec_fn`` after ``start_new_session``: the pty on its stdin becomes its
    controlling terminal (so ^C typed there is SIGINT), with SIGINT at its default."""
    default_sigint()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class TerminalChild:
    """A command run with a pty as its controlling terminal (so ``ctrl_c`` is Ctrl-C as typed
    there); everything it prints is collected in ``seen``. As a context manager, the child
    is killed and reaped and the pty closed on the way out."""

    def __init__(self, argv: list[str], **popen: Any) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, preexec_fn=terminal_child, **popen)
        os.close(slave)
        self.seen = bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.seen.extend(chunk)

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")

    @property
    def text(self) -> str:
        return self.seen.decode(errors="replace")

    def __enter__(self) -> TerminalChild:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.proc.kill()
        self.proc.wait()
        self._reader.join(5)
        os.close(self.master)


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


def stored_bytes(cache: Any, sha256: str) -> bytes:
    """The body with this sha256 exactly as the cache holds it on disk: its own file, or the
    body part of its record in a segment file (``BlobStore.holder``)."""
    held = cache.blobs.holder(sha256)
    assert held is not None, f"the cache holds no body {sha256}"
    path, offset, length = held
    with open(path, "rb") as f:
        f.seek(offset)
        data: bytes = f.read(length)
    return data


def flip_stored_byte(cache: Any, sha256: str, at: int = 0) -> Path:
    """Damage the stored body with this sha256 in place (one bit of its byte ``at``), as bit
    rot or a stray write would, wherever it is held; the file that was changed."""
    cache.flush()
    held = cache.blobs.holder(sha256)
    assert held is not None, f"the cache holds no body {sha256}"
    path, offset, length = held
    assert 0 <= at < length
    mode = path.stat().st_mode
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(offset + at)
        byte = f.read(1)
        f.seek(offset + at)
        f.write(bytes([byte[0] ^ 0x01]))
    path.chmod(mode & 0o777)
    return Path(path)
