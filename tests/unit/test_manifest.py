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


@pytest.mark.parametrize("field", ["a" * 63, "a" * 65, "sha256:" + "a" * 63, "sha256:", "b" * 40])
def test_a_sha256_that_is_not_64_hex_digits_is_an_error_with_its_line(field: str) -> None:
    text = f"https://h.test/ok.bin\nhttps://h.test/m.bin {field} m.bin\n"
    with pytest.raises(ManifestError, match=r"m\.txt:2: sha256 must be exactly 64 hex"):
        parse_manifest(text, "m.txt")
    with pytest.raises(ManifestError, match=r"m\.txt:2: sha256"):
        parse_manifest(f"https://h.test/ok.bin\nhttps://h.test/m.bin {field}\n", "m.txt")


def test_a_sha256_prefix_is_accepted_in_both_formats() -> None:
    [text] = parse_manifest(f"https://h.test/m.bin sha256:{SHA.upper()}\n")
    [as_json] = parse_manifest(f'[{{"url": "https://h.test/m.bin", "sha256": "sha256:{SHA}"}}]')
    assert text.sha256 == as_json.sha256 == SHA
    [named] = parse_manifest("https://h.test/m.bin deadbeef.bin\n")  # a short hex name: a path
    assert (named.sha256, str(named.path)) == (None, "deadbeef.bin")
