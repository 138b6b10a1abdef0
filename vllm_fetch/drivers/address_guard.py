"""Resolve a host once and check every answer before anything is dialed (shared by both drivers).

Both drivers connect only to addresses :meth:`AddressGuard.resolve` returned, so a second DNS
lookup (DNS rebinding) cannot swap in an address that was never checked. The Host header and
the TLS SNI / certificate check keep the name: only the socket's destination is pinned.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from ..core.address_policy import Resolver, URLPolicy, normalize_host, parse_ip_literal
from ..core.request import TransportOptions


def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answers for ``host`` (``socket.getaddrinfo``), in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class AddressGuard:
    """One lookup per connection through ``resolver``, every answer checked by ``policy``."""

    policy: URLPolicy
    resolver: Resolver = system_resolver

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to dial for ``host``, all of them allowed (fail closed on any other).

        IP literals (in any legacy spelling) are answered without a lookup. A failed lookup
        raises the resolver's OSError; a refused answer raises BlockedURLError.
        """
        name = host.strip("[]")
        literal = parse_ip_literal(name)
        answers = [str(literal)] if literal is not None else addresses(self.resolver(name, port))
        trusted = self.policy.trusted_hosts
        if not trusted or normalize_host(name) not in trusted:  # a mirror is trusted by name
            self.policy.check_addresses(f"{name}:{port}", answers)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, f"no address for {name}")
        return answers


def addresses(answers: Iterable[object]) -> list[str]:
    """A resolver's answers as unique IP address strings, in order.

    Anything that is not an IP address fails the lookup: dialing it would mean a second,
    unchecked name resolution.
    """
    try:
        return list(dict.fromkeys(str(ipaddress.ip_address(str(a))) for a in answers))
    except ValueError:
        raise socket.gaierror(socket.EAI_FAIL, "the resolver returned a non-address") from None


def address_guard(options: TransportOptions) -> AddressGuard | None:
    """The guard a driver pins connections with, or None to let the HTTP library resolve.

    vllm_fetch resolves names itself when ``block_private_ips`` is on or a ``resolver`` was
    given; otherwise requests and aiohttp resolve (and dial) as they always do.
    """
    if options.resolver is None and not options.policy.guards_addresses:
        return None
    return AddressGuard(options.policy, options.resolver or system_resolver)
