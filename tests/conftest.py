from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from tests.origin import Origin

# An example user suite, run in subprocesses by test_pytest_plugin.py, not collected here.
collect_ignore = ["example_suite"]

# Tests never touch the user's environment: no proxies, no real cache dir.
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_var, None)
os.environ["NO_PROXY"] = "127.0.0.1,localhost"
# A bare HTTPConnection() caches by default: point it at a session temp dir, never the user's.
_CACHE_DIR = tempfile.mkdtemp(prefix="vllm-fetch-test-cache-")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
os.environ["VLLM_FETCH_CACHE_DIR"] = _CACHE_DIR
for _var in ("VLLM_FETCH_OFFLINE", "VLLM_FETCH_DISABLE_CACHE", "VLLM_FETCH_CACHE_SIZE",
             "VLLM_FETCH_MEMORY_CACHE_SIZE"):
    os.environ.pop(_var, None)
# Download locks go to a throwaway directory, never the user's cache dir.
os.environ["VLLM_FETCH_LOCK_DIR"] = _LOCKS = tempfile.mkdtemp(prefix="vllm_fetch-test-locks-")
atexit.register(shutil.rmtree, _LOCKS, ignore_errors=True)


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cache_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections made with ``cache=None`` use no cache (``VLLM_FETCH_DISABLE_CACHE=1``)."""
    monkeypatch.setenv("VLLM_FETCH_DISABLE_CACHE", "1")
