"""Manifest parsing: text and JSON, checksums, safe target paths."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from vllm_fetch.cli.manifest import ManifestError, default_name, parse_manifest

SHA = "a" * 64


def test_text_lines_with_optional_sha_and_path() -> None:
    entries = parse_manifest(
        "# weights\n"
        "https://h.test/a/model.bin\n"
        f"https://h.test/b.bin {SHA}\n"
        f"https://h.test/c.bin {SHA.upper()} sub/c.bin  # trailing comment\n"
        "https://h.test/d.bin - renamed.bin\n"
        "https://h.test/e.bin#frag e.bin\n"
        "\n"
    )
    assert [(e.url, e.sha256, str(e.path)) for e in entries] == [
        ("https://h.test/a/model.bin", None, "model.bin"),
        ("https://h.test/b.bin", SHA, "b.bin"),
        ("https://h.test/c.bin", SHA, "sub/c.bin"),
        ("https://h.test/d.bin", None, "renamed.bin"),
        ("https://h.test/e.bin#frag", None, "e.bin"),
    ]


def test_json_list_and_files_object() -> None:
    as_list = parse_manifest(f'[{{"url": "http://h.test/x", "sha256": "{SHA}"}}, "http://h.test/y"]')
    assert [(e.url, e.sha256, e.path) for e in as_list] == [
        ("http://h.test/x", SHA, PurePosixPath("x")),
        ("http://h.test/y", None, PurePosixPath("y")),
    ]
    as_object = parse_manifest('{"files": [{"url": "http://h.test/z", "path": "d/z"}]}')
    assert as_object[0].path == PurePosixPath("d/z")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ftp://h.test/x\n", "manifest:1"),
        ("http://h.test/x ../escape\n", "stay inside"),
        ("http://h.test/x /etc/passwd\n", "stay inside"),
        ("http://h.test/x abc def ghi\n", "manifest:1"),
        ("http://h.test/x 1234 p\n", "manifest:1"),
        ('[{"url": 5}]', "entry 0"),
        ('[{"url": "http://h.test/x", "sha256": "zz"}]', "64 hex"),
        ("[not json", "not valid JSON"),
        ('{"nofiles": 1}', "expected a list"),
        ("http://h.test/x same\nhttp://h.test/y same\n", "same path"),
    ],
)
def test_bad_manifests_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://h.test/a/model.bin?sig=1", "model.bin"),
        ("http://h.test/", "index.html"),
        ("http://h.test/a/..", "index.html"),
        ("http://h.test/a/%2e%2e", "index.html"),
        ("http://h.test/a%2f..", "index.html"),
        ("http://h.test/x%00y", "index.html"),
        ("http://h.test/a%5c..%5cb", "index.html"),
    ],
)
def test_default_name_is_always_a_plain_file_name(url: str, name: str) -> None:
    assert default_name(url) == name
