"""``core.urls.url_to_send``: a caller's own Authorization header wins over URL userinfo."""

from __future__ import annotations

import pytest

from vllm_fetch.core.urls import url_to_send


@pytest.mark.parametrize("name", ["Authorization", "authorization", "AUTHORIZATION"])
def test_a_caller_authorization_drops_the_userinfo(name: str) -> None:
    url = "http://u:p@h.example:8080/a%7e/b?sig=%2F&x=@y#f"
    assert url_to_send(url, {"Accept": "*/*", name: "Bearer t"}) == \
        "http://h.example:8080/a%7e/b?sig=%2F&x=@y#f"  # the rest byte for byte


@pytest.mark.parametrize("url", [
    "https://u@h.example/x",         # a user name alone
    "https://:p@h.example/x",        # a password alone
    "https://@h.example/x",          # empty userinfo
    "https://u:p@[::1]:8443",        # no path
])
def test_every_userinfo_form_goes(url: str) -> None:
    sent = url_to_send(url, {"Authorization": "Bearer t"})
    assert "@" not in sent and sent.startswith("https://") and sent.endswith(url.split("@")[1])


@pytest.mark.parametrize("url", [
    "http://u:p@h.example/a",       # no caller Authorization: userinfo is sent as Basic
    "http://h.example/a",           # nothing to drop
    "http://h.example/a@b?c=@d",    # an @ after the authority is no userinfo
    "http://alice:TOP?SECRET@h/",   # the parsers find no userinfo: left as it is
])
def test_the_url_is_kept_otherwise(url: str) -> None:
    headers = {} if "u:p" in url else {"Authorization": "Bearer t"}
    assert url_to_send(url, headers) is url


def test_other_credential_headers_do_not_drop_it() -> None:
    url = "http://u:p@h.example/a"
    headers = {"Proxy-Authorization": "Basic x", "X-Authorization": "y", "Cookie": "c"}
    assert url_to_send(url, headers) is url
