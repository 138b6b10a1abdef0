"""The cached body flow stepped by hand, without a network: which effects it yields and what it
makes of the answers sent back (issue 15, stale-while-revalidate through a stored redirect)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vllm_fetch import FetchCache
from vllm_fetch.cache.flows import (
    Disk,
    Effect,
    Fetch,
    Flow,
    Hops,
    Refresh,
    Wait,
    body_flow,
    revalidation_flow,
)
from vllm_fetch.core.address_policy import URLPolicy
from vllm_fetch.core.deadline import Deadline
from vllm_fetch.core.request import FetchRequest
from vllm_fetch.core.results import Body

ORIGIN = "http://origin.test"
HOPS = Hops(max_redirects=10, policy=URLPolicy())
SWR = "max-age=1, stale-while-revalidate=600"


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[FetchCache]:
    store = FetchCache(tmp_path / "cache")
    yield store
    store.close()


def request(path: str) -> FetchRequest:
    return FetchRequest(f"{ORIGIN}{path}", {}, Deadline(None))


def answer(req: FetchRequest, body: bytes, status: int = 200, **headers: str) -> Body:
    lines = [(name.replace("_", "-"), value) for name, value in headers.items()]
    return Body(body, status, lines, req.url)


def drive(flow: Flow, origin: Callable[[FetchRequest], Body]) -> tuple[Any, list[Effect]]:
    """Run ``flow`` to its end: ``origin`` answers each Fetch; the cache's own effects are
    performed as the runner would, and a Refresh is only recorded. (result, effects seen)."""
    seen: list[Effect] = []
    value: Any = None
    while True:
        try:
            effect = flow.send(value)
        except StopIteration as stop:
            return stop.value, seen
        seen.append(effect)
        if isinstance(effect, Fetch):
            value = origin(effect.req)
        elif isinstance(effect, Disk):
            value = effect.work()
        elif isinstance(effect, Wait):
            value = effect.future
        else:
            assert isinstance(effect, Refresh), effect
            value = None


def v1_origin(req: FetchRequest) -> Body:
    """/avatar: a 301 fresh for an hour to /v1; /v1: stale on arrival (Age 5 > max-age 1) but
    inside its stale-while-revalidate window, with an ETag."""
    if req.url.endswith("/avatar"):
        return answer(req, b"", 301, Location=f"{ORIGIN}/v1", Cache_Control="max-age=3600")
    assert req.url.endswith("/v1"), req.url
    return answer(req, b"v1 body", Cache_Control=SWR, Age="5", ETag='"e1"')


def test_a_stale_hop_behind_a_stored_redirect_is_served_and_refreshed_in_the_background(
        cache: FetchCache) -> None:
    first, effects = drive(body_flow(cache, request("/avatar"), offline=False, hops=HOPS),
                           v1_origin)
    assert (first.content, first.from_cache) == (b"v1 body", False)
    assert [e.req.url for e in effects if isinstance(e, Fetch)] == [f"{ORIGIN}/avatar",
                                                                    f"{ORIGIN}/v1"]
    cache.flush()

    def no_network(req: FetchRequest) -> Body:
        raise AssertionError(f"the call itself must not wait for {req.url}")

    stale, effects = drive(body_flow(cache, request("/avatar"), offline=False, hops=HOPS),
                           no_network)
    assert (stale.content, stale.from_cache, stale.url) == (b"v1 body", True, f"{ORIGIN}/v1")
    refreshes = [e for e in effects if isinstance(e, Refresh)]
    assert len(refreshes) == 1 and len(effects) == 1  # the stale hop's, nothing else
    refresh = refreshes[0]
    assert refresh.req.url == f"{ORIGIN}/v1"  # the hop, not the call's first URL
    assert refresh.start.decision.background and refresh.start.decision.stale

    asked: list[dict[str, str]] = []

    def v2_origin(req: FetchRequest) -> Body:
        asked.append(dict(req.headers))
        return answer(req, b"v2 body", Cache_Control="max-age=600", ETag='"e2"')

    refreshed, effects = drive(revalidation_flow(cache, refresh.req), v2_origin)
    assert refreshed.content == b"v2 body"
    assert [e.req.url for e in effects if isinstance(e, Fetch)] == [f"{ORIGIN}/v1"]
    assert asked[0].get("If-None-Match") == '"e1"'  # a conditional refresh of the hop
    cache.flush()

    later, effects = drive(body_flow(cache, request("/avatar"), offline=False, hops=HOPS),
                           no_network)
    assert (later.content, later.from_cache) == (b"v2 body", True)
    assert effects == []  # both hops fresh now: no request, no refresh
    # a second refresh asked by a call that saw the stale copy just before: nothing to do
    assert drive(revalidation_flow(cache, refresh.req), no_network) == (None, [])


@pytest.mark.parametrize(("hop_cc", "age", "refreshed"), [
    (SWR, "5", True),  # stale by 4 s, window 600 s
    ("max-age=600", "0", False),  # fresh: nothing to refresh
    ("max-age=1, stale-while-revalidate=2", "5", False),  # past the window: revalidated now
    (SWR + ", must-revalidate", "5", False),  # must-revalidate: never served stale
])
def test_which_hops_are_refreshed_in_the_background(cache: FetchCache, hop_cc: str, age: str,
                                                    refreshed: bool) -> None:
    def origin(req: FetchRequest) -> Body:
        if req.url.endswith("/avatar"):
            return answer(req, b"", 301, Location=f"{ORIGIN}/v1",
                          Cache_Control="max-age=3600")
        if req.headers.get("If-None-Match") == '"e1"':
            return answer(req, b"", 304, Cache_Control=hop_cc, ETag='"e1"')
        return answer(req, b"v1 body", Cache_Control=hop_cc, Age=age, ETag='"e1"')

    drive(body_flow(cache, request("/avatar"), offline=False, hops=HOPS), origin)
    cache.flush()
    body, effects = drive(body_flow(cache, request("/avatar"), offline=False, hops=HOPS), origin)
    assert body.content == b"v1 body"
    assert any(isinstance(e, Refresh) for e in effects) is refreshed
    fetched = [e.req.url for e in effects if isinstance(e, Fetch)]
    assert fetched == ([] if refreshed or hop_cc == "max-age=600" else [f"{ORIGIN}/v1"])
