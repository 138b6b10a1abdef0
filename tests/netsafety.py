"""Network safety for the security tests: loopback only, counted, with stub DNS.

- :func:`loopback_only` makes any attempt to dial an address off loopback fail at once (and be
  recorded), so a broken guard shows up as a failed test, never as traffic to 169.254.169.254.
- :class:`CountingListener` accepts and counts connections on a loopback address: "zero
  connections reached it" is what a refused fetch must leave behind.
- :class:`StubResolver` maps made-up names to addresses and records every lookup.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest


class OffLoopbackDial(OSError):
    """A test tried to connect somewhere other than loopback."""


@contextlib.contextmanager
def loopback_only() -> Iterator[list[object]]:
    """Within the block, connecting a socket to a non-loopback address raises and is recorded."""
    attempts: list[object] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(address: Any) -> bool:
        if not isinstance(address, tuple):
            return True  # AF_UNIX and friends
        host = str(address[0]).split("%", 1)[0]
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def connect(self: socket.socket, address: Any) -> None:
        if not allowed(address):
            attempts.append(address)
            raise OffLoopbackDial(f"test tried to dial {address!r}")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not allowed(address):
            attempts.append(address)
            raise OffLoopbackDial(f"test tried to dial {address!r}")
        return real_connect_ex(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    try:
        yield attempts
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign]


@pytest.fixture
def off_loopback() -> Iterator[list[object]]:
    """Use in a test to forbid (and assert there were no) dials off loopback."""
    with loopback_only() as attempts:
        yield attempts
    assert attempts == [], f"dialed off loopback: {attempts}"


class CountingListener:
    """A listening socket that accepts, counts and closes every connection."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="counting-listener")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class StubResolver:
    """``(host, port) -> addresses`` from a table; a list of lists answers successive lookups.

    Names are matched as DNS does: case-insensitive, a trailing dot ignored. Unknown names
    fail like a real resolver does (socket.gaierror).
    """

    def __init__(self, table: dict[str, Sequence[str] | Callable[[int], Sequence[str]]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int) -> list[str]:
        host = host.lower().rstrip(".")
        with self._lock:
            self.calls.append((host, port))
            nth = sum(1 for h, _ in self.calls if h == host)
        answer = self.table.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(answer(nth) if callable(answer) else answer)

    def lookups(self, host: str) -> int:
        return sum(1 for h, _ in self.calls if h == host)
