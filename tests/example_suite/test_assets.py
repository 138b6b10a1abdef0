"""An example user test suite: it fetches a model asset, and must run offline once recorded.

Run by tests/integration/test_pytest_plugin.py in a subprocess (record, then replay).
"""

from __future__ import annotations

import hashlib
import os

from vllm_fetch import global_http_connection


def test_asset_through_fixture(vllm_fetch_connection):  # type: ignore[no-untyped-def]
    data = vllm_fetch_connection.get_bytes(os.environ["EXAMPLE_ASSET_URL"])
    assert hashlib.sha256(data).hexdigest() == os.environ["EXAMPLE_ASSET_SHA256"]


def test_asset_through_global_connection(tmp_path):  # type: ignore[no-untyped-def]
    where = os.environ.get("EXAMPLE_DOWNLOAD_DIR") or tmp_path  # e.g. another filesystem
    target = global_http_connection.download_file(os.environ["EXAMPLE_ASSET_URL"],
                                                  os.path.join(where, "asset.bin"))
    assert hashlib.sha256(target.read_bytes()).hexdigest() == os.environ["EXAMPLE_ASSET_SHA256"]
