"""URL and address policy, pure: every form of S1 refused, S6 parser differentials, S4 headers.

No network: public literals such as 8.8.8.8 appear only as data here, never dialed.
"""

from __future__ import annotations

import ipaddress

import pytest

from vllm_fetch import BlockedURLError, InvalidURLError
from vllm_fetch.core.address_policy import (
    URLPolicy,
    dialed_host,
    embedded_ipv4,
    headers_for_hop,
    is_denied_address,
    parse_ip_literal,
)
from vllm_fetch.core.redirects import next_hop
from vllm_fetch.errors import TooManyRedirectsError

BLOCK = URLPolicy.build(None, True)
OPEN = URLPolicy()


def teredo(server: str, client: str) -> str:
    """A Teredo address (2001::/32) for a server and an (obfuscated) client IPv4 address."""
    s = int(ipaddress.IPv4Address(server))
    c = int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF
    return str(ipaddress.IPv6Address((0x20010000 << 96) | (s << 64) | (0xFFFF << 32) | c))


# Every spelling of a denied address a URL (or a redirect) might use.
REFUSED_HOSTS = [
    "127.0.0.1", "127.255.255.254", "localhost", "LOCALHOST.", "sub.localhost", "ip6-localhost",
    "169.254.169.254", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::ffff:169.254.169.254]",
    "2130706433", "0x7f000001", "0177.0.0.1", "0x7f.0.0.1", "127.1", "127.0.1", "017700000001",
    "0", "0.0.0.0", "[::]", "100.64.0.1", "100.127.255.255", "[fd00:ec2::254]", "[fc00::1]",
    "[64:ff9b::7f00:1]", "[64:ff9b::127.0.0.1]", "[64:ff9b:1::a9fe:a9fe]", "[2002:7f00:1::]",
    "[2002:a9fe:a9fe::1]", f"[{teredo('8.8.8.8', '127.0.0.1')}]",
    f"[{teredo('10.0.0.1', '8.8.8.8')}]", "[::127.0.0.1]", "[::169.254.169.254]",
    "10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1", "192.0.0.170", "192.0.2.1",
    "198.18.0.1", "198.51.100.7", "203.0.113.9", "192.88.99.1", "224.0.0.1", "239.255.255.250",
    "[ff02::1]", "[ff05::2]", "240.0.0.1", "255.255.255.255", "[fe80::1]", "[fe80::1%25eth0]",
    "[fec0::1]", "[100::1]", "[2001:db8::1]", "[2606:4700::1%25eth0]",  # any zone id is local
    "\uff11\uff12\uff17.\uff10.\uff10.\uff11",  # fullwidth digits: IDNA gives 127.0.0.1
    "ⓛocalhost",  # a circled l: IDNA maps it to localhost
    # IPv4-translated (RFC 2765), local-use NAT64 at any RFC 6052 position, ISATAP
    "[::ffff:0:127.0.0.1]", "[::ffff:0:7f00:1]", "[::ffff:0:a9fe:a9fe]", "[::ffff:0:a00:1]",
    "[64:ff9b:1:7f:0:1::]", "[64:ff9b:1:7f00:1::]", "[64:ff9b:1::8.8.8.8]",
    "[2a00:1450::5efe:7f00:1]", "[2a00:1450::200:5efe:a9fe:a9fe]", "[2606:4700::5efe:10.0.0.1]",
]

ALLOWED_HOSTS = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "[2606:4700:4700::1111]",
                 "[2001:4860:4860::8888]", "example.com", "huggingface.co", "172.32.0.1",
                 "100.128.0.1", "11.0.0.1", "[::ffff:8.8.8.8]", "[64:ff9b::808:808]",
                 "[2002:808:808::1]", f"[{teredo('8.8.8.8', '1.1.1.1')}]", "bücher.example",
                 "[::ffff:0:808:808]", "[2a00:1450::5efe:808:808]"]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_s1_every_denied_form_is_refused(host: str) -> None:
    with pytest.raises(BlockedURLError) as info:
        BLOCK.check_url(f"http://{host}:8080/x?sig=secret")
    assert isinstance(info.value, ValueError)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_s1_the_same_forms_pass_without_the_guard(host: str) -> None:
    assert URLPolicy().check_url(f"http://{host}/") == f"http://{host}/"


@pytest.mark.parametrize("host", ALLOWED_HOSTS)
def test_public_hosts_are_allowed(host: str) -> None:
    assert BLOCK.check_url(f"https://{host}/a") == f"https://{host}/a"


@pytest.mark.parametrize(("literal", "address"), [
    ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"), ("10.1", "10.0.0.1"), ("[::1]", "::1"),
    ("fe80::1%eth0", "fe80::1%eth0"), ("example.com", None), ("1.2.3.4.5", None),
    ("0x1g", None), ("", None), ("a\x00b", None), ("b\u00fccher.example", None),
])
def test_parse_ip_literal_reads_legacy_forms(literal: str, address: str | None) -> None:
    parsed = parse_ip_literal(literal)
    assert (None if parsed is None else str(parsed)) == address


@pytest.mark.parametrize(("address", "embedded"), [
    ("::ffff:10.0.0.1", ("10.0.0.1",)), ("::127.0.0.1", ("127.0.0.1",)),
    ("64:ff9b::a00:1", ("10.0.0.1",)), ("2002:c0a8:101::", ("192.168.1.1",)),
    (teredo("8.8.8.8", "10.0.0.1"), ("8.8.8.8", "10.0.0.1")), ("2606:4700::1", ()), ("::1", ()),
    ("::ffff:0:a00:1", ("10.0.0.1",)), ("2a00:1450::5efe:a00:1", ("10.0.0.1",)),
    ("2a00:1450::200:5efe:a00:1", ("10.0.0.1",)),
])
def test_embedded_ipv4_unwraps_every_transition_form(address: str, embedded: tuple[str]) -> None:
    found = embedded_ipv4(ipaddress.IPv6Address(address))
    assert tuple(str(a) for a in found) == embedded


def test_deny_list_is_not_just_is_global() -> None:
    # 192.88.99.1 (6to4 relay anycast) is "global" to ipaddress, but a relay is not a target
    relay = ipaddress.ip_address("192.88.99.1")
    assert relay.is_global and is_denied_address(relay)


def test_allowed_networks_exempt_exact_addresses_only() -> None:
    policy = URLPolicy.build(None, True, ["127.0.0.2/32", "fd12::/16"])
    policy.check_url("http://127.0.0.2/")
    policy.check_addresses("x", ["127.0.0.2", "fd12::5"])
    for address in ("127.0.0.1", "::ffff:127.0.0.2", "fd13::1"):
        with pytest.raises(BlockedURLError):
            policy.check_addresses("x", [address])
    with pytest.raises(BlockedURLError):
        policy.check_url("http://localhost/")  # a local name is refused by name


@pytest.mark.parametrize("answers", [
    ["8.8.8.8", "127.0.0.1"], ["2606:4700::1", "::ffff:10.0.0.1"], ["1.1.1.1", "fe80::1%eth0"],
    [],
])
def test_s2_mixed_or_empty_answers_fail_closed(answers: list[str]) -> None:
    with pytest.raises(BlockedURLError):
        BLOCK.check_addresses("mixed.test:80", answers)


def test_s2_all_public_answers_pass() -> None:
    BLOCK.check_addresses("public.test:80", ["8.8.8.8", "2606:4700::1"])
    URLPolicy().check_addresses("anything:80", ["127.0.0.1"])  # no guard: nothing checked


# -- allowed_domains -------------------------------------------------------------------------
DOMAINS = URLPolicy.build(["Models.Example.com.", "cdn.test"], False)


@pytest.mark.parametrize("url", ["https://models.example.com/x", "http://MODELS.EXAMPLE.COM./x",
                                 "https://models.example.com:8443/x", "http://cdn.test/"])
def test_allowed_domains_exact_match_case_and_dot_normalised(url: str) -> None:
    assert DOMAINS.check_url(url) == url


@pytest.mark.parametrize("url", [
    "https://example.com/x",  # a parent domain
    "https://sub.models.example.com/x",  # subdomains do not match
    "https://models.example.com.evil.test/",
    "https://evilmodels.example.com/",
    "https://models.example.com@evil.test/",  # the host is evil.test
    "http://127.0.0.1/",
])
def test_allowed_domains_refuses_everything_else(url: str) -> None:
    with pytest.raises(BlockedURLError):
        DOMAINS.check_url(url)


def test_allowed_domains_must_not_be_a_string() -> None:
    with pytest.raises(TypeError):
        URLPolicy.build("example.com", False)


# -- S6: parser differentials ------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "http://evil.com\\@good.com/", "http://good.com\\.evil.com/", "http://good.com\t/",
    "http://go\tod.com/", "http://good.com/\r\nHost: evil", "http://good.com\n.evil/",
    "http://good.com%00.evil/", "http://evil%2ecom/", "http://127.0.0.1%2e/",
    "http://a@b@good.com/", "http://good .com/", "http://good.com\x00/",
    "javascript:alert(1)//http://good.com/",
])
def test_s6_differentials_are_refused(url: str) -> None:
    with pytest.raises(InvalidURLError):
        DOMAINS.check_url(url)
    with pytest.raises(InvalidURLError):
        URLPolicy().check_url(url)


@pytest.mark.parametrize(("url", "host"), [
    ("http://good.com#@evil.com/", "good.com"),  # the fragment, not userinfo
    ("http://good.com?@evil.com/", "good.com"),  # the query, not userinfo
    ("http://user:pw@good.com:81/", "good.com"),
    ("http://GOOD.com./", "good.com"),
    ("http://[::1]:80/", "::1"),
    ("http://[fe80::1%25eth0]/", "fe80::1%eth0"),
    ("http://xn--bcher-kva.example/", "xn--bcher-kva.example"),
    ("http://bücher.example/", "xn--bcher-kva.example"),
    ("http://127.0.0.1%2f@x/", "x"),  # the '%2f' is in the userinfo: x is dialed
    ("http://good.com%2f@evil/x", "evil"),
    ("http://ex\u00adample.com\u3002/", "example.com"),  # UTS 46 drops the soft hyphen
])
def test_s6_validated_host_is_the_dialed_host(url: str, host: str) -> None:
    assert dialed_host(url) == host


def test_s6_ambiguous_host_is_refused_with_allowed_domains_too() -> None:
    policy = URLPolicy.build(["good.com"], True)
    policy.check_url("http://good.com#@127.0.0.1/")
    with pytest.raises(BlockedURLError):
        policy.check_url("http://good.com@127.0.0.1/")


# -- S4: headers across redirects --------------------------------------------------------------
SECRET_HEADERS = {
    "Authorization": "Bearer t0ken", "Cookie": "sid=1", "Proxy-Authorization": "Basic eA==",
    "X-Api-Key": "k3y", "X-Custom-Tenant": "acme",
}
SAFE_HEADERS = {"User-Agent": "vLLM/1", "Accept": "*/*", "Accept-Encoding": "identity"}


@pytest.mark.parametrize(("source", "target"), [
    ("http://a.test/x", "http://b.test/y"),  # another host
    ("http://a.test/x", "http://a.test:8080/y"),  # another port
    ("https://a.test/x", "http://a.test/y"),  # https -> http on the same host
    ("http://a.test/x", "https://a.test/y"),  # another scheme is another origin
    ("http://a.test/x", "http://A.test.evil/y"),
])
def test_s4_credentials_dropped_cross_origin(source: str, target: str) -> None:
    kept = headers_for_hop({**SECRET_HEADERS, **SAFE_HEADERS}, source, target)
    assert kept == SAFE_HEADERS


@pytest.mark.parametrize(("source", "target"), [
    ("http://a.test/x", "http://a.test/y"), ("http://a.test/x", "http://A.TEST:80/z"),
    ("https://a.test/x", "https://a.test:443/y"),
])
def test_s4_everything_kept_same_origin(source: str, target: str) -> None:
    headers = {**SECRET_HEADERS, **SAFE_HEADERS}
    assert headers_for_hop(headers, source, target) == headers


# -- redirects (F18, F19, S5), decided by next_hop ----------------------------------------------
def hop(location: str, policy: URLPolicy = OPEN, *, done: int = 0, status: int = 302,
        url: str = "http://a.test/x") -> str | None:
    found = next_hop(url, status, {"Location": location}, {"Authorization": "x"},
                     hops_done=done, follow=True, max_redirects=3, policy=policy)
    return None if found is None else found.url


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://a.test/x", "gopher://a.test/",
                                      "data:text/plain,hi", "javascript:alert(1)", "dict://a/"])
def test_f19_redirects_to_other_schemes_refused(location: str) -> None:
    with pytest.raises(InvalidURLError):
        hop(location)


def test_f18_hop_cap() -> None:
    assert hop("/y", done=2) == "http://a.test/y"
    with pytest.raises(TooManyRedirectsError):
        hop("/y", done=3)


@pytest.mark.parametrize("location", ["http://127.0.0.1/", "http://[::1]/", "http://0x7f000001/",
                                      "http://localhost:9/", "//169.254.169.254/latest"])
def test_s1_redirect_hop_checked(location: str) -> None:
    with pytest.raises(BlockedURLError):
        hop(location, BLOCK)


def test_s5_redirect_leaving_allowed_domains_refused() -> None:
    policy = URLPolicy.build(["a.test"], False)
    assert hop("/next", policy) == "http://a.test/next"
    with pytest.raises(BlockedURLError):
        hop("http://b.test/", policy)


def test_non_redirects_and_unfollowed_redirects_end_the_chain() -> None:
    assert hop("/y", status=200) is None
    assert next_hop("http://a.test/", 302, {"Location": "/y"}, {}, hops_done=0, follow=False,
                    max_redirects=3, policy=URLPolicy()) is None
