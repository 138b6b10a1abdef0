"""Partial file naming and ownership (pure): which temp name a download writes, who owns it.

Each writer has its own partial, named for the target, a hash of the URL and an owner tag, so a
later process finds the partial of the same download and never another URL's bytes; the rules
here say when an abandoned partial may be taken over or is too old to resume.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

#: Partials older than this are deleted instead of resumed (seconds; 7 days).
STALE_PARTIAL_AGE: float = 7 * 24 * 3600.0
# Keep partial names under NAME_MAX (255 bytes) however long the target name is.
_MAX_TARGET_IN_NAME = 200


def clip_name(name: str, max_bytes: int) -> str:
    """The longest prefix of ``name`` whose file-system encoding (UTF-8 on Linux) takes at most
    ``max_bytes``: NAME_MAX counts bytes, and a name of 85 CJK characters is 255 of them."""
    if len(os.fsencode(name)) <= max_bytes:
        return name
    low, high = 0, min(len(name), max_bytes)
    while low < high:  # the longest prefix that fits (encoded length grows with the prefix)
        middle = (low + high + 1) // 2
        if len(os.fsencode(name[:middle])) <= max_bytes:
            low = middle
        else:
            high = middle - 1
    return name[:low]


def should_discard_stale(mtime: float, now: float, max_age: float = STALE_PARTIAL_AGE) -> bool:
    """True when a partial last written at ``mtime`` is older than ``max_age`` seconds."""
    return now - mtime > max_age


def partial_name(target_name: str, url: str) -> str:
    """Deterministic temp file name for the resumable partial of ``target_name`` from ``url``.

    ``target_name`` is a base name (no directory). The URL hash makes the name distinct per URL,
    so a later process finds the partial of the same download and never another URL's bytes.
    """
    if not target_name or "/" in target_name or "\\" in target_name:
        raise ValueError(f"partial_name needs a base name, got {target_name!r}")
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f".{clip_name(target_name, _MAX_TARGET_IN_NAME)}.{digest}.part"


def sidecar_name(partial: str) -> str:
    """Name of the JSON sidecar holding the :class:`PartialState` of ``partial``."""
    return f"{partial}.json"


#: Partials written on another host (a shared filesystem) are taken over after this long idle.
FOREIGN_PARTIAL_IDLE: float = 3600.0
_OWNER = re.compile(r"([A-Za-z0-9-]{1,64})~([0-9]{1,10})~([0-9a-f]{8,32})")


@dataclass(frozen=True)
class Owner:
    """Who writes a partial: host name, process id and a random token (unique per writer).

    Each writer has its own partial file, so two writers never share bytes even when the
    machine lock does nothing (NFS, Lustre, or locks disabled).
    """

    host: str
    pid: int
    token: str

    def __str__(self) -> str:
        return f"{self.host}~{self.pid}~{self.token}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        match = _OWNER.fullmatch(text)
        return cls(match[1], int(match[2]), match[3]) if match else None


def safe_host(hostname: str) -> str:
    """A host name reduced to the characters allowed in an owner tag (20 at most)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", hostname)[:20] or "host"


# Owned names add an owner tag (up to 40 bytes), the URL hash and ".part.json.tmp" (the
# sidecar's checkpoint): 73 bytes besides the target's share, which NAME_MAX leaves 182 of.
_MAX_TARGET_IN_OWNED = 150
#: The target's share of a temp file's name beside it (``files.create_temp``: NAME_MAX less
#: the dots, mkstemp's 8 random characters and ".tmp", with room to spare).
TEMP_NAME_BYTES = _MAX_TARGET_IN_OWNED
_URL_HASH = re.compile(r"[0-9a-f]{16}")


def _owned_prefix(target_name: str, url: str) -> str:
    digest = partial_name(target_name, url)[-len("0123456789abcdef.part"):-len(".part")]
    return f".{clip_name(target_name, _MAX_TARGET_IN_OWNED)}.{digest}."


def owned_partial_name(target_name: str, url: str, owner: Owner) -> str:
    """The partial of ``target_name`` from ``url`` written by ``owner``."""
    return f"{_owned_prefix(target_name, url)}{owner}.part"


def partial_owner(name: str, target_name: str, url: str) -> Owner | None:
    """The owner encoded in ``name`` if it is a partial of this target and URL, else None."""
    prefix = _owned_prefix(target_name, url)
    if not (name.startswith(prefix) and name.endswith(".part")):
        return None
    return Owner.parse(name[len(prefix):-len(".part")])


def is_partial_of(name: str, target_name: str) -> bool:
    """Whether ``name`` is a partial (or its sidecar) of ``target_name`` from any URL."""
    if name.endswith(".part.json"):
        name = name[:-len(".json")]
    prefix = f".{clip_name(target_name, _MAX_TARGET_IN_OWNED)}."
    if not (name.startswith(prefix) and name.endswith(".part")):
        return False
    digest, _, owner = name[len(prefix):-len(".part")].partition(".")
    return _URL_HASH.fullmatch(digest) is not None and Owner.parse(owner) is not None


def may_take_over(
    owner: Owner, *, host: str, pid: int, pid_alive: bool, idle: float,
    foreign_idle: float = FOREIGN_PARTIAL_IDLE,
) -> bool:
    """Whether a partial written by ``owner`` is abandoned, so this writer may continue it.

    ``host``/``pid`` are this process's; ``pid_alive`` says whether ``owner.pid`` runs on this
    host; ``idle`` is seconds since the partial was last written. Partials of this process are
    handed over by the caller only when no live writer holds them (it tracks its own writers).
    """
    if owner.host != host:
        return idle > foreign_idle
    return owner.pid == pid or not pid_alive


__all__ = [
    "FOREIGN_PARTIAL_IDLE",
    "STALE_PARTIAL_AGE",
    "TEMP_NAME_BYTES",
    "Owner",
    "clip_name",
    "is_partial_of",
    "may_take_over",
    "owned_partial_name",
    "partial_name",
    "partial_owner",
    "safe_host",
    "should_discard_stale",
    "sidecar_name",
]
