"""Resolve a host once and check every answer before anything is dialed (shared by both drivers).

Both drivers connect only to addresses :meth:`AddressGuard.resolve` returned, so a second DNS
lookup (DNS rebinding) cannot swap in an address that was never checked. The Host header and
the TLS SNI / certificate check keep the name: only the socket's destination is pinned.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable
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
        return self.resolve_within(host, port, None)

    def resolve_within(self, host: str, port: int, timeout: float | None) -> list[str]:
        """``resolve``, giving up with a TimeoutError after ``timeout`` seconds (the attempt's
        connect timeout, never past the call's deadline) when the lookup has not answered."""
        name = host.strip("[]")
        literal = parse_ip_literal(name)
        if literal is not None:
            answers = [str(literal)]
        else:
            answers = addresses(within(lambda: self.resolver(name, port), timeout, name))
        trusted = self.policy.trusted_hosts
        if not trusted or normalize_host(name) not in trusted:  # a mirror is trusted by name
            self.policy.check_addresses(f"{name}:{port}", answers)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, f"no address for {name}")
        return answers


def within(lookup: Callable[[], Iterable[object]], timeout: float | None,
           name: str) -> Iterable[object]:
    """Run a blocking name lookup, but wait at most ``timeout`` seconds for it.

    ``getaddrinfo`` (or a resolver hook) cannot be interrupted, so it runs in a daemon thread;
    when the time is up the caller gets a TimeoutError at once and the lookup's answer, when it
    comes, is dropped (the thread ends with it).
    """
    if timeout is None:
        return lookup()
    outcome: list[Iterable[object]] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(lookup())
        except BaseException as exc:  # handed to the waiting caller
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="vllm-fetch-dns", daemon=True).start()
    if not done.wait(max(timeout, 0.0)):
        raise TimeoutError(f"the DNS lookup of {name} took longer than {timeout:.3g} s")
    if failure:
        raise failure[0]
    return outcome[0]


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
