"""Pure pieces of issue 13: URL redaction with delimiter-laden passwords, scrubbing an error
chain, the credential material of a request, and what cache entries are charged."""

from __future__ import annotations

import pytest

from vllm_fetch.cache.costs import BLOCK, blob_cost
from vllm_fetch.cache.seal import matches, seal_of
from vllm_fetch.core.scrub import RedactedError, scrub_error, scrub_text, secret_fragments
from vllm_fetch.core.tenancy import (
    credential_material,
    is_credential_field,
    policy_headers,
    url_userinfo,
)
from vllm_fetch.core.urls import redact_url, validate_url
from vllm_fetch.errors import FetchConnectionError, InvalidURLError

SECRET = "S3CRETz"


@pytest.mark.parametrize("sep", ["?", "#", "/", "@", "%", "%2F"])
def test_redact_hides_everything_before_the_last_at(sep: str) -> None:
    url = f"http://alice:1234{sep}{SECRET}@models.example.com/w.bin?sig=x"
    shown = redact_url(url)
    assert SECRET not in shown and "1234" not in shown and "alice" not in shown
    assert "models.example.com" in shown and "sig" not in shown


def test_redact_of_plain_urls_is_unchanged() -> None:
    assert redact_url("https://u:p@h.example/a/b?q=1#f") == "https://h.example/a/b?…"
    assert redact_url("https://h.example:8443/a") == "https://h.example:8443/a"


@pytest.mark.parametrize("url", [f"http://alice:TOP?{SECRET}@h/", f"http://alice:TOP#{SECRET}@h/",
                                 f"http://alice:TOP/{SECRET}@h/", "http://h:99999/?sig=" + SECRET])
def test_invalid_url_errors_quote_nothing_and_carry_no_context(url: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        validate_url(url)
    assert SECRET not in str(info.value) and "TOP" not in str(info.value)
    assert info.value.__context__ is None and info.value.__cause__ is None


def test_secret_fragments_and_scrub_text() -> None:
    url = f"http://alice:TOP?{SECRET}@h/x?X-Amz-Signature=SIG123#frag"
    fragments = secret_fragments(url)
    assert f"alice:TOP?{SECRET}" in fragments and SECRET in fragments and "TOP" in fragments
    text = ("pool(host='alice', port=TOP): url: /x?X-Amz-Signature=SIG123 via "
            "http://bob:pw@proxy/ and https://other/?token=abc")
    cleaned = scrub_text(text, url)
    for leaked in ("TOP", "SIG123", "bob:pw", "token=abc"):
        assert leaked not in cleaned
    assert scrub_text("cannot fetch http://h/x?…: ConnectionError", None) == \
        "cannot fetch http://h/x?…: ConnectionError"


def test_scrub_error_replaces_library_links_and_keeps_their_type() -> None:
    url = f"http://h/w.bin?sig={SECRET}"
    try:
        try:
            raise OSError(f"Max retries exceeded with url: /w.bin?sig={SECRET}")
        except OSError as inner:  # as the drivers do: the library's error as the cause
            raise FetchConnectionError("cannot fetch http://h/w.bin?…",
                                       url="http://h/w.bin?…") from inner
    except FetchConnectionError as exc:
        error = exc
    scrub_error(error, url)
    for link in (error.__cause__, error.__context__):
        assert isinstance(link, RedactedError) and link.original_type == "OSError"
        assert SECRET not in str(link) and link.__context__ is None
    assert error.__suppress_context__  # "from inner" stays as it was


def test_credential_material() -> None:
    assert credential_material("http://h/", {"User-Agent": "x", "Accept": "*/*"}) == b""
    one = credential_material("http://h/", {"authorization": "Bearer a"})
    assert one == credential_material("http://h/", {"Authorization": "Bearer a"})
    assert one != credential_material("http://h/", {"Authorization": "Bearer b"})
    both = credential_material("http://u:p@h/", {"Cookie": "c", "X-Api-Key": "k"})
    assert both == credential_material("http://u:p@h/", {"X-Api-Key": "k", "Cookie": "c"})
    assert credential_material("http://u:p@h/", {}) != credential_material("http://u:q@h/", {})
    assert url_userinfo("http://h/a@b") == ""  # an @ in the path is no userinfo


@pytest.mark.parametrize("name", [
    "authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-auth-token",
    "private-token", "x-goog-api-key", "ocp-apim-subscription-key", "x-amz-security-token",
    "x-session-id", "x-client-secret", "x-signature", "x-csrf-token", "x-password",
    "x-functions-key", "x-access-key", "x-master-key", "x-key", "api_key", "X_API_KEY",
    "x-apikey", "x-passphrase"])
def test_fields_named_like_credentials_are_credentials(name: str) -> None:
    assert is_credential_field(name)
    assert credential_material("http://h/", {name.title(): "v"}) != b""


@pytest.mark.parametrize("name", [
    "user-agent", "accept", "accept-encoding", "accept-language", "range", "if-none-match",
    "if-modified-since", "cache-control", "x-request-id", "content-type", "keep-alive",
    "x-keyword", "traceparent", "x-amzn-trace-id", "openai-organization"])
def test_ordinary_fields_are_not_credentials(name: str) -> None:
    assert not is_credential_field(name)


def test_policy_headers_mark_url_credentials() -> None:
    assert policy_headers("http://h/", {"A": "1"}) == {"A": "1"}
    marked = policy_headers("http://u:p@h/", {"A": "1"})
    assert "authorization" in marked and "p" not in marked["authorization"]


def test_seal_and_costs() -> None:
    data = b"weights" * 1000
    assert matches(data, "", seal_of(data)) and not matches(data + b"!", "", seal_of(data))
    assert blob_cost(0) == BLOCK and blob_cost(10) == BLOCK and blob_cost(BLOCK + 1) == 2 * BLOCK
