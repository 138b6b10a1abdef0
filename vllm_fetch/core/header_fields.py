"""Response header fields as lines (pure): combining repeated lines, what a cache may store.

A response's fields arrive as (name, value) lines, a name possibly repeated. Decisions read
one value per name, the lines combined as RFC 9110 §5.3 says (values joined by ", ", in
order); what is served keeps every line as it arrived.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Fields = tuple[tuple[str, str], ...]

#: RFC 9110 §7.6.1 connection-specific fields (plus the legacy ones), never stored (§3.1).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
    "proxy-authenticate", "proxy-authentication-info", "proxy-authorization", "trailer",
})


def field_lines(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> Fields:
    """Every (name, value) line: a multidict's (aiohttp, urllib3) ``items()`` repeats a name
    once per line; a plain dict has one line per name."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((str(name), str(value)) for name, value in items)


def combine(lines: Iterable[tuple[str, str]]) -> dict[str, str]:
    """One value per lowercase name: repeated lines joined by ", " (RFC 9110 §5.3)."""
    combined: dict[str, str] = {}
    for name, value in lines:
        key = name.lower()
        if key in combined:
            combined[key] = f"{combined[key]}, {value}"
        else:
            combined[key] = value
    return combined


def combined_view(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` with repeated lines combined, original names kept; the mapping itself when
    it holds no repeated name (a plain dict, requests' headers)."""
    if getattr(headers, "getall", None) is None or len(headers) == len(
            {k.lower() for k in headers}):
        return headers
    return joined(headers.items())


def joined(lines: Iterable[tuple[str, str]]) -> dict[str, str]:
    """One value per name, names as first sent: repeated lines joined by ", " (§5.3)."""
    view: dict[str, str] = {}
    names: dict[str, str] = {}
    for name, value in lines:
        first = names.setdefault(name.lower(), name)
        view[first] = f"{view[first]}, {value}" if first in view else value
    return view


def storable_lines(lines: Iterable[tuple[str, str]]) -> Fields:
    """The lines a cache stores (§3.1): not hop-by-hop, not named by ``Connection``, and not
    ``Age`` (a served response gets its current age instead, §5.1)."""
    lines = tuple(lines)
    named = {
        token.strip().lower()
        for name, value in lines if name.lower() == "connection"
        for token in value.split(",")
    }
    return tuple(
        (name, value) for name, value in lines
        if (key := name.lower()) not in HOP_BY_HOP and key not in named and key != "age"
    )


def replace_lines(stored: Fields, update: Fields, keep: frozenset[str]) -> Fields:
    """``stored`` with every name present in ``update`` replaced by its lines there (§3.2),
    except the names in ``keep`` (lowercase), which stay as stored."""
    updated = {name.lower() for name, _ in update} - keep
    kept = tuple((n, v) for n, v in stored if n.lower() not in updated)
    return kept + tuple((n, v) for n, v in update if n.lower() in updated)


__all__ = ["HOP_BY_HOP", "Fields", "combine", "combined_view", "field_lines", "joined",
           "replace_lines", "storable_lines"]
