"""Manifest paths stay under the real ``-d`` directory: a symlink on the way that leads out is
refused with the manifest's line number, and nothing is fetched or written (issue 13, item 6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.origin import Origin, sha256
from vllm_fetch import HTTPConnection, RetryPolicy
from vllm_fetch.cli.manifest import parse_manifest
from vllm_fetch.cli.prefetch import prefetch

SCRIPT = Path(sys.executable).with_name("vllm-fetch")
BODY = b'{"architectures": ["LlamaForCausalLM"]}'


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VLLM_FETCH_CACHE_DIR": str(cwd / ".cache"),
           "VLLM_FETCH_MAX_RETRIES": "0"}
    return subprocess.run([str(SCRIPT), *map(str, args)], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def test_a_symlink_out_of_the_directory_is_refused_with_its_line(origin: Origin,
                                                                 tmp_path: Path) -> None:
    url = origin.serve_bytes("/llama/config.json", BODY)
    ok_url = origin.serve_bytes("/llama/tokenizer.json", b"{}")
    (tmp_path / "outside").mkdir()
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "llama").symlink_to(Path("..") / "outside")
    manifest = tmp_path / "weights.txt"
    manifest.write_text(f"# llama\n{ok_url} - tokenizer.json\n{url} - llama/config.json\n")
    result = run("prefetch", manifest, "-d", tmp_path / "dir", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"{manifest}:3:" in result.stderr and "llama/config.json" in result.stderr
    assert list((tmp_path / "outside").iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["llama"]  # nothing fetched
    assert origin.requests == []


def test_a_symlinked_directory_itself_and_links_inside_it_are_fine(origin: Origin,
                                                                   tmp_path: Path) -> None:
    url = origin.serve_bytes("/llama/config.json", BODY)
    real = tmp_path / "real"
    (real / "shards").mkdir(parents=True)
    (real / "alias").symlink_to("shards")  # stays inside
    (tmp_path / "models").symlink_to(real)  # -d itself may be a link: its target counts
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"{url} {sha256(BODY)} alias/config.json\n")
    result = run("prefetch", manifest, "-d", tmp_path / "models", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sha256((real / "shards" / "config.json").read_bytes()) == sha256(BODY)


def test_a_link_that_appears_after_the_check_fails_that_entry(origin: Origin,
                                                              tmp_path: Path) -> None:
    """The library's prefetch checks each target again right before fetching it."""
    url = origin.serve_bytes("/c.json", BODY)
    (tmp_path / "outside").mkdir()
    directory = tmp_path / "dir"
    directory.mkdir()
    (directory / "llama").symlink_to(tmp_path / "outside")
    entries = parse_manifest(f"{url} - llama/c.json\n", "m.txt")
    with HTTPConnection(cache=False, retry=RetryPolicy.none()) as conn:
        (outcome,) = prefetch(conn, entries, directory)
    assert not outcome.ok and "m.txt:1" in (outcome.error or "")
    assert list((tmp_path / "outside").iterdir()) == []
    assert origin.requests == []
