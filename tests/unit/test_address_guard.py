"""AddressGuard with a stub resolver: one lookup, every answer checked, only addresses dialed."""

from __future__ import annotations

import socket

import pytest

from tests.netsafety import StubResolver
from vllm_fetch import BlockedURLError
from vllm_fetch.core.address_policy import URLPolicy
from vllm_fetch.core.request import TransportOptions
from vllm_fetch.drivers.address_guard import AddressGuard, address_guard

BLOCK = URLPolicy.build(None, True)


def test_one_lookup_answers_deduplicated_in_order() -> None:
    resolver = StubResolver({"cdn.test": ["8.8.4.4", "8.8.8.8", "8.8.4.4", "2001:4860::8888"]})
    guard = AddressGuard(BLOCK, resolver)
    assert guard.resolve("cdn.test", 443) == ["8.8.4.4", "8.8.8.8", "2001:4860::8888"]
    assert resolver.calls == [("cdn.test", 443)]


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "2130706433", "0x7f.1"])
def test_literals_are_never_looked_up(host: str) -> None:
    resolver = StubResolver({})
    with pytest.raises(BlockedURLError):
        AddressGuard(BLOCK, resolver).resolve(host, 80)
    assert AddressGuard(URLPolicy(), resolver).resolve(host, 80) in (["127.0.0.1"], ["::1"])
    assert resolver.calls == []


@pytest.mark.parametrize("answers", [["8.8.8.8", "10.0.0.1"], ["::ffff:169.254.169.254"],
                                     ["100.64.0.1"]])
def test_any_denied_answer_refuses(answers: list[str]) -> None:
    with pytest.raises(BlockedURLError) as info:
        AddressGuard(BLOCK, StubResolver({"mixed.test": answers})).resolve("mixed.test", 80)
    assert not any(a in str(info.value) for a in answers)  # no internal address disclosed


@pytest.mark.parametrize("answers", [[], ["evil.example"], ["8.8.8.8", "not an address"]])
def test_empty_or_non_address_answers_fail_the_lookup(answers: list[str]) -> None:
    for policy in (BLOCK, URLPolicy()):
        guard = AddressGuard(policy, StubResolver({"odd.test": answers}))
        with pytest.raises((socket.gaierror, BlockedURLError)):
            guard.resolve("odd.test", 80)


def test_resolver_errors_propagate() -> None:
    with pytest.raises(socket.gaierror):
        AddressGuard(BLOCK, StubResolver({})).resolve("nowhere.test", 80)


def test_guard_only_when_needed() -> None:
    plain = TransportOptions(user_agent="x", policy=URLPolicy())
    assert address_guard(plain) is None
    assert address_guard(TransportOptions(user_agent="x", policy=BLOCK)) is not None
    hooked = TransportOptions(user_agent="x", policy=URLPolicy(), resolver=StubResolver({}))
    guard = address_guard(hooked)
    assert guard is not None and guard.resolver is hooked.resolver
