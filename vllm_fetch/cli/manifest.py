"""Prefetch manifests: which files to fetch, with an optional sha256 and target path each.

Two formats, told apart by the first character:

- **text**: one entry per line, ``URL [SHA256] [PATH]``, separated by white space; ``#`` starts a
  comment; a SHA256 is 64 hex digits, optionally ``sha256:``-prefixed (``-`` for none; a field
  of 32 or more hex digits is taken for a SHA256, so a mistyped one is an error, never a file
  name); PATH defaults to the URL's file name.
- **JSON**: a list of ``{"url": ..., "sha256": ..., "path": ...}`` objects (sha256 and path
  optional), or an object with such a list under ``"files"``.

Target paths are relative to the download directory and may not leave it (no absolute paths,
no ``..``, no symbolic link on the way that leads out of the real directory): a manifest is
input, and input never chooses where outside that directory to write.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from ..core.urls import validate_url

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
#: A field meant as a hash: ``sha256:``-prefixed, or 32 or more hex digits (a file name rarely is).
_HASH_LIKE = re.compile(r"(?i:sha256:).*|[0-9a-fA-F]{32,}")
_COMMENT = re.compile(r"(?:^|\s)#")  # a '#' inside a URL is not a comment


class ManifestError(ValueError):
    """The manifest cannot be read: the message names the line or entry."""


@dataclass(frozen=True)
class ManifestEntry:
    url: str
    path: PurePosixPath
    sha256: str | None = None
    where: str = "manifest"  # "FILE:LINE" or "FILE: entry N", for messages


def resolve_target(directory: Path, entry: ManifestEntry) -> Path:
    """Where ``entry`` is written: under the *real* ``directory``, every symlink on the way
    resolved. ManifestError (naming the entry's line) when one leads outside it. The file name
    itself is not followed: publishing replaces a link there instead of writing through it."""
    root = Path(directory).resolve()
    parent = root.joinpath(*entry.path.parts[:-1]).resolve()
    if parent != root and not parent.is_relative_to(root):
        raise ManifestError(f"{entry.where}: path {entry.path} leads outside {directory} "
                            "(through a symbolic link)")
    return parent / entry.path.name


def resolve_targets(directory: Path, entries: list[ManifestEntry]) -> list[Path]:
    """``resolve_target`` for every entry, before anything is fetched."""
    return [resolve_target(directory, entry) for entry in entries]


def parse_sha256(text: str, where: str = "sha256") -> str:
    """A sha256 as given by a user: exactly 64 hex digits, optionally ``sha256:``-prefixed;
    returned in lower case. Anything else is a ``ManifestError`` naming ``where``."""
    digits = text[7:] if text[:7].lower() == "sha256:" else text
    if not _SHA256.fullmatch(digits):
        raise ManifestError(f"{where}: sha256 must be exactly 64 hex digits (optionally "
                            f"'sha256:'-prefixed), got {len(digits)} characters")
    return digits.lower()


def default_name(url: str) -> str:
    """The last path segment of a URL, if it is a usable file name, else ``index.html``."""
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    unusable = name in ("", ".", "..") or "\x00" in name or "/" in name or "\\" in name
    return "index.html" if unusable else name


def safe_relative_path(raw: str, where: str) -> PurePosixPath:
    """A relative path that stays inside the download directory."""
    path = PurePosixPath(raw.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts or raw.startswith("~"):
        raise ManifestError(f"{where}: path {raw!r} must be relative and stay inside the directory")
    return path


def _entry(url: Any, sha256: Any, path: Any, where: str) -> ManifestEntry:
    if not isinstance(url, str):
        raise ManifestError(f"{where}: 'url' must be a string")
    if url.startswith("hf://"):  # Hugging Face repos and files: vllm_fetch.cli.hub
        from .hub import manifest_entry
        return manifest_entry(url, sha256, path if isinstance(path, str) else None, where)
    try:
        validate_url(url)
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    if sha256 is not None and not isinstance(sha256, str):
        raise ManifestError(f"{where}: sha256 must be a string of 64 hex digits")
    if path is not None and not isinstance(path, str):
        raise ManifestError(f"{where}: 'path' must be a string")
    target = safe_relative_path(path if path else default_name(url), where)
    return ManifestEntry(url=url, path=target,
                         sha256=parse_sha256(sha256, where) if sha256 else None, where=where)


def _parse_line(line: str, where: str) -> ManifestEntry | None:
    fields = _COMMENT.split(line, 1)[0].split()
    if not fields:
        return None
    if len(fields) > 3:
        raise ManifestError(f"{where}: expected 'URL [SHA256] [PATH]', got {len(fields)} fields")
    url, rest = fields[0], fields[1:]
    sha256: str | None = None
    if rest and (_HASH_LIKE.fullmatch(rest[0]) or rest[0] == "-"):
        sha256 = None if rest[0] == "-" else rest[0]
        rest = rest[1:]
    path = rest[0] if rest else None
    if rest and len(rest) > 1:
        raise ManifestError(f"{where}: expected 'URL [SHA256] [PATH]'")
    return _entry(url, sha256, path, where)


def parse_text(text: str, source: str = "manifest") -> list[ManifestEntry]:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = _parse_line(line, f"{source}:{number}")
        if entry is not None:
            entries.append(entry)
    return entries


def parse_json(text: str, source: str = "manifest") -> list[ManifestEntry]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict):
        data = data.get("files")
    if not isinstance(data, list):
        raise ManifestError(f"{source}: expected a list of entries (or {{'files': [...]}})")
    entries = []
    for index, item in enumerate(data):
        where = f"{source}: entry {index}"
        if isinstance(item, str):
            item = {"url": item}
        if not isinstance(item, dict):
            raise ManifestError(f"{where}: expected an object with 'url'")
        entries.append(_entry(item.get("url"), item.get("sha256"), item.get("path"), where))
    return entries


def parse_manifest(text: str, source: str = "manifest") -> list[ManifestEntry]:
    """Entries of a text or JSON manifest; duplicate target paths are an error."""
    stripped = text.lstrip()
    json_like = stripped.startswith(("[", "{"))
    entries = parse_json(text, source) if json_like else parse_text(text, source)
    seen: dict[PurePosixPath, str] = {}
    for entry in entries:
        if entry.path in seen and seen[entry.path] != entry.url:
            raise ManifestError(f"{source}: two URLs write to the same path {entry.path}")
        seen[entry.path] = entry.url
    return entries


def read_manifest(path: Path) -> list[ManifestEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"manifest {path} is not UTF-8 text") from None
    return parse_manifest(text, str(path))
