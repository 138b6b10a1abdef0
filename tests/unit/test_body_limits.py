"""BodyMeter size accounting (pure): reads sized so an oversized body stops at max_bytes + 1."""

from __future__ import annotations

import pytest

from vllm_fetch import SizeLimitExceededError
from vllm_fetch.core.body import BodyMeter


@pytest.mark.parametrize(("max_bytes", "received", "chunk", "expected"), [
    (None, 0, 1 << 20, 1 << 20), (100, 0, 1 << 20, 101), (100, 60, 1 << 20, 41),
    (100, 100, 1 << 20, 1), (100, 0, 10, 10), (0, 0, 1 << 20, 1),
])
def test_read_size(max_bytes: int | None, received: int, chunk: int, expected: int) -> None:
    meter = BodyMeter("u", max_bytes=max_bytes, offset=received)
    assert meter.read_size(chunk) == expected


def test_exactly_max_bytes_is_fine_one_more_is_not() -> None:
    meter = BodyMeter("u", max_bytes=10)
    meter.feed(b"x" * 10)
    meter.finish()
    with pytest.raises(SizeLimitExceededError) as info:
        meter.feed(b"x")
    assert str(info.value) == (  # vLLM's wording, then the URL
        "Maximum file size exceeded: HTTP response exceeded maximum size of 10 bytes "
        f"(received at least 11 bytes) (parameter=audio_filesize_mb, value={11 / (1 << 20)}) "
        "from u")


def test_content_length_over_cap_refused_up_front() -> None:
    with pytest.raises(SizeLimitExceededError) as info:
        BodyMeter("u", expected_length=11, max_bytes=10)
    assert str(info.value).startswith("Maximum file size exceeded: HTTP response exceeded "
                                      "maximum size of 10 bytes (received at least 11 bytes)")
    BodyMeter("u", expected_length=10, max_bytes=10)
