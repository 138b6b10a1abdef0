"""Human sizes and durations for the ``vllm-fetch cache`` commands."""

from __future__ import annotations

import argparse

import pytest

from vllm_fetch.cli.cache import human_size, parse_duration


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"),
                                         (205_000, "205.0 kB"), (1_500_000_000, "1.5 GB"),
                                         (3 * 10**15, "3000.0 TB")])
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("45m", 2700),
                                               ("12h", 43200), ("7d", 604800), ("2w", 1209600),
                                               ("1.5h", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-1d", "7y", "d"])
def test_bad_duration(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_unexpected_error_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from vllm_fetch import cli

    def broken(_: argparse.Namespace) -> int:
        raise RuntimeError("something nobody expected")

    monkeypatch.setitem(cli.COMMANDS, "demo", broken)
    assert cli.main(["demo"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "internal error: RuntimeError: something nobody expected" in err
