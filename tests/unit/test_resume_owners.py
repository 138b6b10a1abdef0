"""Owned partial names, take-over rules and parallel part state (pure)."""

from __future__ import annotations

import json
import os

import pytest

from vllm_fetch.core.partial_names import (
    FOREIGN_PARTIAL_IDLE,
    Owner,
    clip_name,
    is_partial_of,
    may_take_over,
    owned_partial_name,
    partial_owner,
    safe_host,
)
from vllm_fetch.core.resume import PartialState

URL = "https://example.com/model.safetensors"
ME = Owner("node-1", 100, "deadbeef")


def test_owned_name_round_trips_its_owner() -> None:
    name = owned_partial_name("model.bin", URL, ME)
    assert name.startswith(".model.bin.") and name.endswith(".part")
    assert partial_owner(name, "model.bin", URL) == ME
    assert partial_owner(name, "model.bin", URL + "?v=2") is None
    assert partial_owner(name, "other.bin", URL) is None


def test_owned_names_differ_per_owner() -> None:
    other = Owner("node-1", 100, "cafebabe")
    assert owned_partial_name("m", URL, ME) != owned_partial_name("m", URL, other)


def test_owned_name_with_sidecar_stays_under_name_max() -> None:
    longest = Owner("h" * 20, 4194304, "f" * 8)
    assert len(owned_partial_name("x" * 300, URL, longest) + ".json") <= 255


@pytest.mark.parametrize("text", ["", "a~1", "a~b~deadbeef", "a b~1~deadbeef", "a~1~xyz12345"])
def test_owner_parse_refuses_garbage(text: str) -> None:
    assert Owner.parse(text) is None


def test_safe_host() -> None:
    assert safe_host("gpu-07.cluster.local") == "gpu-07-cluster-local"[:20]
    assert safe_host("") == "host"


def test_is_partial_of() -> None:
    name = owned_partial_name("model.bin", URL, ME)
    assert is_partial_of(name, "model.bin")
    assert is_partial_of(name + ".json", "model.bin")
    assert not is_partial_of(name, "model.bi")
    assert not is_partial_of(".model.bin.notahash.node~1~deadbeef.part", "model.bin")
    assert not is_partial_of("model.bin", "model.bin")


@pytest.mark.parametrize(
    ("owner", "alive", "idle", "expected"),
    [
        (Owner("node-1", 100, "aaaaaaaa"), True, 0.0, True),  # this process: caller tracks
        (Owner("node-1", 200, "aaaaaaaa"), True, 1e9, False),  # live writer on this host
        (Owner("node-1", 200, "aaaaaaaa"), False, 0.0, True),  # its process is gone
        (Owner("node-2", 200, "aaaaaaaa"), False, 10.0, False),  # another host, recent
        (Owner("node-2", 200, "aaaaaaaa"), False, FOREIGN_PARTIAL_IDLE + 1, True),
    ],
)
def test_may_take_over(owner: Owner, alive: bool, idle: float, expected: bool) -> None:
    assert may_take_over(owner, host="node-1", pid=100, pid_alive=alive, idle=idle) is expected


def test_parts_round_trip() -> None:
    state = PartialState(0, '"e"', None, 100, URL, parts=((0, 49, 10), (50, 99, 50)))
    assert PartialState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


@pytest.mark.parametrize(
    "parts",
    [
        [[0, 49, 10], [51, 99, 0]],  # a gap
        [[0, 49, 51], [50, 99, 0]],  # more written than the part holds
        [[0, 49, 0]],  # does not reach the total
        [[0, 49, 0], [50, 99, True]],
        "0-99",
    ],
)
def test_bad_parts_are_refused(parts: object) -> None:
    data = {"offset": 0, "url": URL, "total": 100, "parts": parts}
    with pytest.raises(ValueError):
        PartialState.from_dict(data)


def test_partial_names_fit_name_max_in_bytes() -> None:
    """NAME_MAX (255) counts bytes: a partial's sidecar checkpoint of any valid target name
    (here 85 three-byte characters, 255 bytes) stays within it, cut at a character."""
    owner = Owner("h" * 20, 4194304, "f" * 8)
    for name in ("a" * 255, "模" * 85, "é" * 127 + "a"):
        partial = owned_partial_name(name, "http://example.invalid/x", owner)
        assert len(os.fsencode(partial + ".json.tmp")) <= 255
        assert partial_owner(partial, name, "http://example.invalid/x") == owner
        assert is_partial_of(partial, name) and is_partial_of(partial + ".json", name)
    assert clip_name("模" * 85, 150) == "模" * 50
    assert clip_name("short", 150) == "short"
