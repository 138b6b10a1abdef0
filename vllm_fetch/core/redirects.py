"""Redirects are followed by vllm_fetch, hop by hop, with the URL policy re-checked (pure)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import TooManyRedirectsError
from .address_policy import URLPolicy, headers_for_hop, redirect_target
from .body import header
from .responses import REDIRECT_STATUSES, is_redirect
from .urls import redact_url

if TYPE_CHECKING:
    from .request import FetchRequest, TransportOptions


@dataclass(frozen=True)
class Hop:
    """The next request of a redirect chain."""

    url: str
    headers: dict[str, str]


def next_hop(
    url: str,
    status: int,
    response_headers: Mapping[str, str],
    request_headers: Mapping[str, str],
    *,
    hops_done: int,
    follow: bool,
    max_redirects: int,
    policy: URLPolicy,
) -> Hop | None:
    """Where a redirect leads, or None when this response is the final one.

    Raises TooManyRedirectsError past the cap, and InvalidURLError / BlockedURLError when the
    target is not an http(s) URL or is refused by the policy. A refused hop is never dialed.
    """
    location = header(response_headers, "Location")
    if not follow or not is_redirect(status) or not location:
        return None
    if hops_done >= max_redirects:
        raise TooManyRedirectsError(
            f"more than {max_redirects} redirects fetching {redact_url(url)}", url=redact_url(url)
        )
    target = redirect_target(url, location)
    policy.check_url(target)
    return Hop(url=target, headers=headers_for_hop(request_headers, url, target))


class Chain:
    """One request's redirect chain, for both drivers: the URL and headers to send next, and
    whether an answer is the final one (a redirect's response is closed, never read)."""

    __slots__ = ("follow", "headers", "hops", "options", "url")

    def __init__(self, req: FetchRequest, options: TransportOptions) -> None:
        self.url, self.headers = req.send_url or req.url, req.headers
        self.follow, self.options = req.allow_redirects, options
        self.hops = 0

    def arrived(self, status: int, headers: Mapping[str, str], close: Callable[[], object]
                ) -> bool:
        """True for the final answer; else step to the next hop (or raise) and ``close()``
        this one."""
        if status not in REDIRECT_STATUSES:
            return True  # what next_hop says of any non-redirect, without asking it per fetch
        try:
            hop = next_hop(self.url, status, headers, self.headers, hops_done=self.hops,
                           follow=self.follow, max_redirects=self.options.max_redirects,
                           policy=self.options.policy)
        except BaseException:
            close()
            raise
        if hop is None:
            return True
        close()
        self.url, self.headers, self.hops = hop.url, hop.headers, self.hops + 1
        return False
