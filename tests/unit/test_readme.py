"""The README's examples stay true: its code compiles, its commands parse, its manifests load."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from vllm_fetch.cli import _parser
from vllm_fetch.cli.manifest import parse_manifest

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^ *```(\w+)\n(.*?)^ *```", README, flags=re.S | re.M)


def blocks(language: str) -> list[str]:
    found = [body for lang, body in BLOCKS if lang == language]
    assert found, f"no {language} blocks in the README"
    return found


def test_python_examples_compile() -> None:
    for body in blocks("python"):
        compile(body.replace("…", ""), "README.md", "exec", flags=0x2000)  # top-level await ok


def command_lines() -> list[str]:
    lines = []
    for body in blocks("bash"):
        for line in body.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("vllm-fetch ") and "|" not in line and "[" not in line:
                lines.append(line)
    return lines


@pytest.mark.parametrize("line", command_lines())
def test_documented_commands_parse(line: str) -> None:
    _parser().parse_args(shlex.split(line)[1:])


def test_documented_manifests_load() -> None:
    text_manifest = next(b for b in blocks("text") if "weights.txt" in b)
    assert len(parse_manifest(text_manifest)) == 3
    assert len(parse_manifest(blocks("json")[0])) == 1


def test_documented_plugin_names_exist() -> None:
    from vllm_fetch import pytest_plugin

    assert f"--vllm-fetch-mode={pytest_plugin.MODES[1]}" in README
    assert pytest_plugin.DEFAULT_CACHE_DIR in README
    assert "vllm_fetch_cache_dir" in README
