"""The sync side's response-head watchdog (fault F12): one thread, bounded bookkeeping."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

from vllm_fetch.drivers.requests_adapter import _Watchdog


def test_disarmed_watches_do_not_pile_up() -> None:
    dog = _Watchdog()
    far = time.monotonic() + 3600
    for _ in range(1000):
        dog.disarm(dog.arm(far, SimpleNamespace(sock=None)))
    assert len(dog._heap) <= 64


def test_it_fires_at_the_deadline_and_shuts_the_socket_down() -> None:
    left, right = socket.socketpair()
    with left, right:
        conn = SimpleNamespace(sock=left)
        watch = _Watchdog().arm(time.monotonic() + 0.05, conn)
        left.settimeout(2)
        started = time.monotonic()
        assert left.recv(1) == b""  # the blocked read returns once the socket is shut down
        assert 0.03 < time.monotonic() - started < 1.0
        assert conn.vllm_fetch_cut and watch.wait(1)


def test_a_disarmed_watch_never_fires() -> None:
    dog = _Watchdog()
    conn = SimpleNamespace(sock=None)
    dog.disarm(dog.arm(time.monotonic() + 0.02, conn))
    time.sleep(0.06)
    assert conn.vllm_fetch_cut is False
