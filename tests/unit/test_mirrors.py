"""Mirror decisions (core/mirrors.py): prefix rewrites, headers, when to fall back."""

from __future__ import annotations

import pytest

from vllm_fetch.core.deadline import Deadline
from vllm_fetch.core.mirrors import Mirrors, falls_back, mirror_request, parse_mirrors
from vllm_fetch.core.request import FetchRequest
from vllm_fetch.errors import (
    BlockedURLError,
    ChecksumMismatchError,
    FetchConnectionError,
    HTTPStatusError,
    IdleTimeoutError,
    SizeLimitExceededError,
    TooManyRedirectsError,
    TruncatedBodyError,
)

HF = Mirrors.build({"https://huggingface.co": "https://cache.internal/hf",
                    "https://huggingface.co/big": "http://10.0.0.9:8080/big-mirror/"})


def test_rewrite_keeps_path_and_query_under_the_mirror_prefix() -> None:
    assert HF.rewrite("https://huggingface.co/org/m/resolve/main/x.bin?download=1") == (
        "https://cache.internal/hf/org/m/resolve/main/x.bin?download=1")
    assert HF.rewrite("HTTPS://HuggingFace.CO/a") == "https://cache.internal/hf/a"
    assert HF.rewrite("https://huggingface.co") == "https://cache.internal/hf"


def test_the_longest_origin_prefix_wins() -> None:
    assert HF.rewrite("https://huggingface.co/big/w.bin") == "http://10.0.0.9:8080/big-mirror/w.bin"


@pytest.mark.parametrize(("origin", "mirror"), [
    ("https://h.example/", "https://m.example/mir"),
    ("https://h.example", "https://m.example/mir/"),
    ("https://h.example/", "https://m.example/mir/"),
    ("https://h.example/hf/", "https://m.example/mir"),
])
def test_a_trailing_slash_on_either_prefix_still_joins_at_one_slash(origin: str,
                                                                    mirror: str) -> None:
    mirrors = Mirrors.build({origin: mirror})
    path = "/hf/f" if "/hf" in origin else "/f"
    sent = mirrors.rewrite("https://h.example" + path)
    assert sent == "https://m.example/mir" + path.removeprefix("/hf"), sent
    route = mirrors.route("https://h.example" + path)
    assert route is not None and mirrors.restore(sent, route) == "https://h.example" + path


@pytest.mark.parametrize("url", [
    "https://huggingface.co.evil.example/x",  # not the same host
    "https://huggingface.co:8443/x",  # another port
    "http://huggingface.co/x",  # another scheme
    "https://user:pw@huggingface.co/x",  # userinfo: never rewritten
    "https://example.com/https://huggingface.co/x",
])
def test_urls_outside_a_prefix_are_not_rewritten(url: str) -> None:
    assert HF.rewrite(url) is None


def test_a_path_prefix_matches_at_a_segment_boundary_only() -> None:
    mirrors = Mirrors.build({"https://h.example/hf": "https://m.example/x"})
    assert mirrors.rewrite("https://h.example/hf/a") == "https://m.example/x/a"
    assert mirrors.rewrite("https://h.example/hf?q=1") == "https://m.example/x?q=1"
    assert mirrors.rewrite("https://h.example/hfx/a") is None


def test_restore_names_the_origin_url_and_leaves_other_hosts_alone() -> None:
    route = HF.route("https://huggingface.co/a")
    assert route is not None
    assert HF.restore("https://cache.internal/hf/a/b", route) == "https://huggingface.co/a/b"
    assert HF.restore("https://cdn.example/a", route) == "https://cdn.example/a"


def test_mirror_hosts_are_normalized() -> None:
    assert Mirrors.build({"https://a.example": "https://Cache.Internal./x"}).hosts == {
        "cache.internal"}
    assert not Mirrors.build({})
    assert Mirrors.build(None).rewrite("https://a.example/") is None


@pytest.mark.parametrize("bad", [
    {"ftp://a.example": "https://m.example"},
    {"https://a.example": "file:///srv/mirror"},
    {"https://a.example": "https://user:pw@m.example"},
    {"https://a.example?x=1": "https://m.example"},
    {"https://a.example": "https://m.example/#frag"},
    {"not a url": "https://m.example"},
])
def test_bad_prefixes_are_refused_without_their_credentials(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError) as err:
        Mirrors.build(bad)
    assert "pw" not in str(err.value)


def test_a_string_is_not_a_mapping() -> None:
    with pytest.raises(TypeError):
        Mirrors.build("https://a=https://b")  # type: ignore[arg-type]


def test_parse_mirrors_env() -> None:
    assert parse_mirrors(" https://a.example=https://m.example/a , https://b.example=http://m/b,") \
        == {"https://a.example": "https://m.example/a", "https://b.example": "http://m/b"}
    assert parse_mirrors(None) == {}
    with pytest.raises(ValueError, match="origin=mirror"):
        parse_mirrors("https://a.example")


def _req(url: str, **kw: object) -> FetchRequest:
    headers = {"User-Agent": "t", "Authorization": "Bearer s3cret", "Cookie": "a=b",
               "X-Api-Key": "k", "X-Auth-Token": "t0k", "Api-Key": "az",
               "If-None-Match": '"v1"', "Range": "bytes=0-9"}
    return FetchRequest(url=url, headers=headers, deadline=Deadline(None), **kw)  # type: ignore[arg-type]


def test_mirror_request_keeps_the_identity_and_strips_credentials() -> None:
    routed = mirror_request(_req("https://huggingface.co/a"), HF)
    assert routed is not None
    sent, route = routed
    assert sent.url == "https://huggingface.co/a"  # cache key, partials, locks
    assert sent.send_url == "https://cache.internal/hf/a"
    assert route.mirror == "https://cache.internal/hf"
    assert {k.lower() for k in sent.headers} == {"user-agent", "if-none-match", "range"}
    assert mirror_request(_req("https://other.example/a"), HF) is None


def test_mirror_credentials_on_sends_them() -> None:
    mirrors = Mirrors.build({"https://huggingface.co": "https://m.example"}, credentials=True)
    routed = mirror_request(_req("https://huggingface.co/a"), mirrors)
    assert routed is not None and routed[0].headers["Authorization"] == "Bearer s3cret"


def test_a_hop_by_hop_cache_request_lets_the_driver_follow_a_mirror_redirect() -> None:
    routed = mirror_request(_req("https://huggingface.co/a", redirect_answers=True,
                                 allow_redirects=False), HF)
    assert routed is not None
    assert routed[0].allow_redirects and not routed[0].redirect_answers


@pytest.mark.parametrize(("error", "expected"), [
    (FetchConnectionError("x"), True),
    (IdleTimeoutError("x"), True),
    (TruncatedBodyError("x"), True),
    (ChecksumMismatchError("x"), True),
    (HTTPStatusError(404, "u"), True),
    (HTTPStatusError(500, "u"), True),
    (HTTPStatusError(503, "u"), True),
    (HTTPStatusError(403, "u"), False),
    (HTTPStatusError(401, "u"), False),
    (BlockedURLError("x"), False),
    (TooManyRedirectsError("x"), False),
    (SizeLimitExceededError("x"), False),
])
def test_falls_back(error: BaseException, expected: bool) -> None:
    assert falls_back(error) is expected
