"""pytest plugin: record the assets a test suite fetches once, then replay them offline.

Modes (``--vllm-fetch-mode`` or ``$VLLM_FETCH_TEST_MODE``):

- ``live`` (default): the plugin changes nothing.
- ``record``: every vllm_fetch connection in the test process uses the suite's cache directory
  (``vllm_fetch_cache_dir`` in the ini file, default ``tests/vllm_fetch_cache`` beside the
  rootdir), fetching from the network and storing what it fetched. Commit that directory.
- ``replay``: the same directory, offline: nothing reaches the network, and a URL that was not
  recorded fails the test with a message naming it and how to record it.

The mode is applied to the environment (``VLLM_FETCH_CACHE_DIR``, ``VLLM_FETCH_OFFLINE``) when
pytest configures itself. Connections read both lazily (the cache directory on first use, offline
on every call), so every connection that leaves ``cache`` and ``offline`` at their defaults —
the global one included — follows the mode.
Fixtures: ``vllm_fetch_connection`` (bound to the suite's cache, in the chosen mode) and
``vllm_fetch_empty_cache`` (a connection on a fresh empty cache, for unit tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .config import env_str

MODES = ("live", "record", "replay")
DEFAULT_CACHE_DIR = "tests/vllm_fetch_cache"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vllm_fetch", "record and replay downloads (vllm_fetch)")
    group.addoption("--vllm-fetch-mode", choices=MODES, default=None,
                    help="live (default), record, or replay with no network")
    parser.addini("vllm_fetch_cache_dir", default=DEFAULT_CACHE_DIR,
                  help="cache directory for record/replay, relative to the rootdir")


def _mode(config: pytest.Config) -> str:
    mode = config.getoption("--vllm-fetch-mode") or env_str("VLLM_FETCH_TEST_MODE")
    mode = (mode or "live").strip().lower()
    if mode not in MODES:
        raise pytest.UsageError(f"VLLM_FETCH_TEST_MODE={mode!r}: use one of {', '.join(MODES)}")
    return mode


def _cache_dir(config: pytest.Config) -> Path:
    return Path(config.rootpath, str(config.getini("vllm_fetch_cache_dir")))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    mode = _mode(config)
    config.stash[_MODE_KEY] = mode
    if mode == "live":
        return
    os.environ["VLLM_FETCH_CACHE_DIR"] = str(_cache_dir(config))
    os.environ.pop("VLLM_FETCH_DISABLE_CACHE", None)
    os.environ["VLLM_FETCH_OFFLINE"] = "1" if mode == "replay" else "0"
    if mode == "record":  # the recording holds the bytes: a downloaded file is copied in,
        os.environ["VLLM_FETCH_SHARE_FILES"] = "0"  # never linked to or referred to


_MODE_KEY = pytest.StashKey[str]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    # A fixture that fetches an asset (the common way to share one between tests) fails in
    # setup: the same message as a fetch in the test body.
    return (yield from _replay_failures(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _replay_failures(item))


def _replay_failures(item: pytest.Item) -> Iterator[None]:
    """In replay, an OfflineError (a URL not recorded, or a damaged recording) fails the test
    with the (redacted) URL and the command that records it, instead of a traceback."""
    from .errors import CachedBodyDamagedError, CacheUnreadableError, OfflineError

    try:
        return (yield)
    except OfflineError as exc:
        if item.config.stash.get(_MODE_KEY, "live") != "replay":
            raise
        if isinstance(exc, CachedBodyDamagedError):  # its seal failed: never served
            pytest.fail(
                f"vllm_fetch replay: the recording of {exc.url or 'a URL'} is damaged (its "
                f"bytes fail their check) and was dropped. Record it again with "
                f"`pytest --vllm-fetch-mode=record {item.nodeid}`, then commit "
                f"{_cache_dir(item.config)}.",
                pytrace=False,
            )
        if isinstance(exc, CacheUnreadableError):  # not a miss: nothing could be read
            pytest.fail(
                f"vllm_fetch replay: the recording in {_cache_dir(item.config)} cannot be "
                f"opened, so {exc.url or 'a URL'} cannot be looked up. SQLite writes beside "
                "its index even to read it: replay from a writable copy (a read-only "
                "checkout cannot be read in place). See the warning logged.",
                pytrace=False,
            )
        pytest.fail(
            f"vllm_fetch replay: {exc.url or 'a URL'} was not recorded. Record it with "
            f"`pytest --vllm-fetch-mode=record {item.nodeid}` (network needed once), "
            f"then commit {_cache_dir(item.config)}.",
            pytrace=False,
        )


@pytest.fixture
def vllm_fetch_connection(pytestconfig: pytest.Config) -> Iterator[Any]:
    """An HTTPConnection on the suite's record/replay cache, in the session's mode."""
    from .connections import HTTPConnection

    mode = pytestconfig.stash.get(_MODE_KEY, "live")
    if mode == "live":
        conn = HTTPConnection()
    else:
        conn = HTTPConnection(cache=_cache_dir(pytestconfig), offline=mode == "replay")
    with conn:
        yield conn


@pytest.fixture
def vllm_fetch_empty_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An HTTPConnection on a fresh, empty cache of its own, online in every mode (an empty
    cache has nothing to replay)."""
    from .connections import HTTPConnection

    with HTTPConnection(cache=tmp_path_factory.mktemp("vllm_fetch_cache"), offline=False) as conn:
        yield conn
