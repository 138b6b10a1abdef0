from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.origin import Origin

# An example user suite, run in subprocesses by test_pytest_plugin.py, not collected here.
collect_ignore = ["example_suite"]

# Tests never touch the user's environment: no proxies, no real cache dir.
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_var, None)
os.environ["NO_PROXY"] = "127.0.0.1,localhost"


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin().start()
    try:
        yield server
    finally:
        server.stop()
