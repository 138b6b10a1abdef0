"""Which URLs and addresses may be fetched, and which headers survive a redirect (pure).

``block_private_ips`` uses an explicit deny list rather than ``ipaddress.is_global`` alone,
and unwraps every IPv6 form that embeds an IPv4 address (mapped, translated, compatible,
NAT64, 6to4, ISATAP, Teredo) so a private IPv4 address cannot hide inside one. The drivers
resolve a host once, ask :meth:`URLPolicy.check_addresses` about every answer, and dial only a
checked address.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urljoin

import idna

from ..errors import BlockedURLError, InvalidURLError
from .urls import (
    FORBIDDEN_CHARACTERS,
    URL_CACHE_SIZE,
    origin_of,
    origin_prefix,
    parse_problem,
    quote_url,
    redact_url,
    split_url,
    validate_url,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: A DNS hook: ``(host, port) -> addresses`` as strings. Drivers call it once per connection.
Resolver = Callable[[str, int], Sequence[str]]

DENIED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # CGNAT (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/128",  # unspecified
        "::1/128",  # loopback
        "100::/64",  # discard-only
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local (fd00:ec2::254 is AWS metadata)
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"),)
#: RFC 8215 local-use NAT64: operators choose where the IPv4 address sits (RFC 6052 /32../96),
#: so no single position can be checked; nothing in it is a public address.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")
#: RFC 2765 / 6145 IPv4-translated ``::ffff:0:a.b.c.d``.
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
#: ISATAP interface identifiers (RFC 5214): ``…:0:5efe:a.b.c.d`` / ``…:200:5efe:a.b.c.d``.
_ISATAP_IDS = (bytes.fromhex("00005efe"), bytes.fromhex("02005efe"))
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")

#: Caller headers that may follow a redirect to another origin; everything else is dropped there
#: (Authorization, Cookie, Proxy-Authorization, X-Api-Key and any other custom header).
CROSS_ORIGIN_SAFE_HEADERS = frozenset(
    {"user-agent", "accept", "accept-encoding", "accept-language", "range", "if-range"}
)


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries (mapped, translated, compatible, NAT64, 6to4,
    ISATAP, and both the server and the client of a Teredo address); empty for a plain IPv6
    address."""
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    packed = address.packed
    low = ipaddress.IPv4Address(packed[12:])
    if packed[:12] == bytes(12) and int(address) > 1:  # IPv4-compatible ::a.b.c.d
        return (low,)
    if address in _TRANSLATED or any(address in net for net in _NAT64):
        return (low,)
    found: list[ipaddress.IPv4Address] = []
    if packed[8:12] in _ISATAP_IDS:
        found.append(low)
    if address in _SIX_TO_FOUR and address.sixtofour is not None:
        found.append(address.sixtofour)
    if address in _TEREDO and address.teredo is not None:
        found.extend(address.teredo)
    return tuple(found)


def is_denied_address(address: IPAddress, allowed: Iterable[IPNetwork] = ()) -> bool:
    """True for any address ``block_private_ips`` refuses.

    ``allowed`` exempts networks the caller trusts (an internal model store, say); only the
    address itself is compared with them, never an IPv4 address embedded in it.
    """
    if any(address in net for net in allowed if net.version == address.version):
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id or address in _LOCAL_NAT64:
            return True
        if any(is_denied_address(inner) for inner in embedded_ipv4(address)):
            return True
    return any(address in net for net in DENIED_NETWORKS if net.version == address.version)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a URL host names literally, in any form a resolver would accept.

    ``inet_aton`` (a pure parser, no lookup) accepts the legacy IPv4 spellings that C
    resolvers and curl accept and ``ipaddress`` does not: 2130706433, 0x7f000001, 0177.1, 127.1.
    """
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)  # an IPv6 zone id is kept: scoped addresses are denied
    except ValueError:
        pass
    if ":" in host:
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None


def normalize_host(host: str) -> str:
    """A host name as compared and dialed: lower case, no trailing dot, IDNA (UTS 46) encoded.

    The same mapping yarl and urllib3 apply, so fullwidth digits or circled letters are checked
    as the ``127.0.0.1`` / ``localhost`` they turn into. Raises InvalidURLError when it cannot be
    encoded.
    """
    host = host.strip().rstrip(".").lower()
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii").lower().rstrip(".")
    except (idna.IDNAError, UnicodeError, ValueError):
        raise InvalidURLError("Invalid HTTP URL: the host is not a valid IDNA name") from None


@lru_cache(maxsize=URL_CACHE_SIZE)
def checked_host(url: str) -> str:
    """``validate_url`` then ``dialed_host``: the host to check, remembered per URL (a URL
    asked for again, a cache hit's, costs a lookup) and per origin.

    Both depend only on the scheme and authority once the whole URL has passed the character
    check, so an origin checked once is not parsed again for each of its URLs (every URL an
    inference server fetches is new; its origins are few). A refusal is raised by the check of
    the URL itself, with its own message (exceptions are never cached).
    """
    if isinstance(url, str) and url and FORBIDDEN_CHARACTERS.search(url) is None:
        origin = origin_prefix(url)
        if origin is not None:
            try:
                return _checked_host(origin)
            except InvalidURLError:
                pass
    return _checked_host(url)


@lru_cache(maxsize=URL_CACHE_SIZE)
def _checked_host(url: str) -> str:
    validate_url(url)
    return dialed_host(url)


def dialed_host(url: str) -> str:
    """The normalised host a client will connect to for ``url`` (already validated).

    Refuses the spellings HTTP libraries disagree about (parser differentials): a ``%`` in a
    host name (WHATWG decodes it, RFC 3986 parsers keep it), and more than one ``@`` in the
    authority. A ``%`` is allowed only as the zone id of a bracketed IPv6 address.
    """
    parts, hostname, _ = split_url(url)
    netloc = parts.netloc
    bracketed = netloc.rpartition("@")[2].startswith("[")
    if netloc.count("@") > 1:
        raise InvalidURLError(f"Invalid HTTP URL: more than one '@' in {redact_url(url)}")
    host = hostname or ""
    if "%" in host and not bracketed:
        raise InvalidURLError(f"Invalid HTTP URL: a '%' in the host of {redact_url(url)}")
    if bracketed:
        return host.replace("%25", "%", 1)  # the zone id as clients decode and dial it
    return normalize_host(host)


@dataclass(frozen=True)
class URLPolicy:
    """What a connection may fetch, checked for the first URL and for every redirect hop.

    - ``allowed_domains``: exact host names (case and a trailing dot ignored); subdomains do
      **not** match: ``example.com`` does not allow ``cdn.example.com``. None allows any host.
    - ``block_private_ips``: refuse hosts that are, or resolve to, a denied address
      (:data:`DENIED_NETWORKS`, embedded IPv4 forms included) and local names such as
      ``localhost``. ``allowed_networks`` are exempt from it.
    """

    allowed_domains: frozenset[str] | None = None
    block_private_ips: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    #: Host names the operator configured (mirrors): exempt from both checks, by name.
    trusted_hosts: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        allowed_domains: Iterable[str] | None,
        block_private_ips: bool,
        allowed_networks: Iterable[str] | None = None,
    ) -> URLPolicy:
        for name, value in (("allowed_domains", allowed_domains),
                            ("allowed_networks", allowed_networks)):
            if isinstance(value, str):
                raise TypeError(f"{name} must be an iterable of strings, not a string")
        domains = (
            None if allowed_domains is None
            else frozenset(normalize_host(d) for d in allowed_domains)
        )
        networks = tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks or ())
        return cls(allowed_domains=domains, block_private_ips=block_private_ips,
                   allowed_networks=networks)

    @property
    def restricts(self) -> bool:
        """True when the policy can refuse a URL: then every request URL is checked (raw
        sessions too) and environment proxies are off unless the caller allows them."""
        return self.block_private_ips or self.allowed_domains is not None

    @functools.cached_property
    def cache_scope(self) -> str:
        """Where this policy's responses live in the shared cache: "" (shared by every
        unrestricted connection) or a namespace of their own for a restricting policy.

        The policy is checked on the network path only (each redirect hop, every resolved
        address), so a body stored by a connection that was allowed more (a host name that
        resolves to a private address, a redirect out of ``allowed_domains``) must never be
        served to one that is not: "policy before cache".
        """
        if not self.restricts:
            return ""
        domains = sorted(self.allowed_domains) if self.allowed_domains is not None else None
        networks = sorted(str(n) for n in self.allowed_networks)
        return json.dumps([domains, self.block_private_ips, networks], separators=(",", ":"))

    @property
    def guards_addresses(self) -> bool:
        """True when every resolved address must be checked before it is dialed."""
        return self.block_private_ips

    def check_url(self, url: str) -> str:
        """Validate ``url`` and refuse it if the policy forbids its host. Returns it unchanged."""
        host = checked_host(url)
        if host in self.trusted_hosts or (not self.block_private_ips
                                          and self.allowed_domains is None):
            return url
        safe = redact_url(url)
        if self.allowed_domains is not None and host not in self.allowed_domains:
            raise BlockedURLError(f"{safe} is refused: host not in allowed_domains", url=safe)
        if self.block_private_ips:
            literal = parse_ip_literal(host)
            if literal is not None:
                self.check_addresses(safe, [literal])
            elif host in _LOCAL_NAMES or host.endswith(".localhost"):
                raise BlockedURLError(f"{safe} is refused: a local host name", url=safe)
        return url

    def check_addresses(self, target: str, addresses: Iterable[IPAddress | str]) -> None:
        """Refuse (fail closed) when any resolved address is denied, or when there is none.

        ``target`` names what is being checked in the error (a redacted URL or ``host:port``);
        the addresses themselves are never put in a message a remote user might see.
        """
        if not self.block_private_ips:
            return
        parsed = [ipaddress.ip_address(a) if isinstance(a, str) else a for a in addresses]
        if not parsed:
            raise BlockedURLError(f"{target} resolved to no address", url=target)
        if any(is_denied_address(a, self.allowed_networks) for a in parsed):
            raise BlockedURLError(
                f"{target} is refused: it resolves to a private or reserved address", url=target
            )


def redirect_target(url: str, location: str) -> str:
    """The absolute URL a Location header points to, validated as an http(s) URL (a literal
    space or non-ASCII in its path quoted, as requests and aiohttp quote one).

    A Location urllib cannot even join (an unclosed ``[`` or a bracketed host that is no IPv6
    address: the origin's doing) is an ``InvalidURLError`` like any other bad hop, never the
    bare ValueError ``urljoin`` raises; the message names the redirecting URL, redacted.
    """
    try:
        joined = urljoin(url, location.strip())
    except ValueError as exc:
        safe = redact_url(url)
        raise InvalidURLError(
            f"Invalid HTTP URL: a redirect from {safe} to a URL that cannot be parsed "
            f"({parse_problem(exc)})", url=safe) from None
    return validate_url(quote_url(joined))


def headers_for_hop(
    headers: Mapping[str, str], from_url: str, to_url: str
) -> dict[str, str]:
    """Headers for the next hop: all of them on the same origin; on another origin, or when
    https drops to http, only :data:`CROSS_ORIGIN_SAFE_HEADERS`."""
    source, target = origin_of(from_url), origin_of(to_url)
    downgrade = source[0] == "https" and target[0] == "http"
    if source == target and not downgrade:
        return dict(headers)
    return {k: v for k, v in headers.items() if k.lower() in CROSS_ORIGIN_SAFE_HEADERS}
