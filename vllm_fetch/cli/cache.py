"""``vllm-fetch cache …``: look after the shared cache (sizes in human units)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

from ..cache.fetch_cache import FetchCache, default_cache_dir
from ..cache.housekeeping import PruneReport
from ..config import parse_size
from ..download import registry

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def human_size(n: int) -> str:
    """Bytes in decimal units, as disk sizes are sold: 1.5 GB, 320 kB, 12 B."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def parse_duration(text: str) -> float:
    """``90``, ``45m``, ``12h``, ``7d``, ``2w`` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90s, 45m, 12h, 7d)")
    return float(match.group(1)) * _SECONDS[match.group(2).lower()]


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_cache_parser(sub: argparse._SubParsersAction[Any],
                     parents: list[argparse.ArgumentParser]) -> None:
    cache = sub.add_parser("cache", help="inspect and clean the shared download cache",
                           parents=parents)
    cache.add_argument("--dir", help="cache directory (default: $VLLM_FETCH_CACHE_DIR or the "
                                     "user cache dir)")
    what = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    what.add_parser("info", help="where the cache is, how many entries, how many bytes",
                    parents=parents)
    ls = what.add_parser("ls", parents=parents,
                         help="every entry, most recently used first, and how its body is held "
                              "(copy, shared with the downloaded file, reference)")
    ls.add_argument("--partials", action="store_true",
                    help="list the partial downloads on this machine instead")
    verify = what.add_parser("verify", help="re-hash every blob; remove corrupt ones",
                             parents=parents)
    verify.add_argument("--keep", action="store_true", help="report corrupt blobs, keep them")
    prune = what.add_parser("prune", help="remove old or least recently used entries",
                            parents=parents)
    prune.add_argument("--max-size", type=_size, help="keep at most this much (e.g. 5GB)")
    prune.add_argument("--older-than", type=parse_duration,
                       help="remove what was not used for this long (e.g. 7d, 12h); partial "
                            "downloads and unheld lock files untouched this long (default 7d) "
                            "always go")
    what.add_parser("clear", help="remove every entry and blob", parents=parents)


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def cmd_cache(args: argparse.Namespace) -> int:
    directory = Path(args.dir) if args.dir else default_cache_dir()
    if args.cache_command == "ls" and args.partials:
        return _ls_partials()
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is not a directory, so it is no cache")
    if not directory.is_dir():  # looking never creates it
        if args.cache_command in ("info", "ls", "verify"):
            return _nothing(directory, args)
        if args.cache_command == "prune":
            return _report_prune(PruneReport(), registry.prune(args.older_than))
        raise ValueError(f"no cache at {directory}")
    if not _writable(directory):
        raise OSError(f"the cache at {directory} is read-only: its index cannot be opened")
    try:
        cache = FetchCache(directory)
    except (OSError, sqlite3.Error) as exc:
        raise OSError(f"cannot open the cache at {directory}: {_reason(exc)}") from None
    try:
        return ACTIONS[args.cache_command](cache, args)
    finally:
        cache.close()


def _writable(directory: Path) -> bool:
    """Whether the cache's index can be opened (diskcache opens it for writing)."""
    index = directory / "index"
    paths = [directory, index, *(index / n for n in ("cache.db", "cache.db-wal"))]
    return all(os.access(p, os.W_OK) for p in paths if p.exists())


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or \
        type(exc).__name__


def _nothing(directory: Path, args: argparse.Namespace) -> int:
    """What looking at a cache that does not exist shows (and it is not created)."""
    if args.cache_command == "info":
        print(f"directory  {directory} (none yet)")
        print("entries    0")
        _print_partials()
    elif args.cache_command == "verify":
        print("0 blobs checked, 0 corrupt, 0 entries removed")
    return 0


def _info(cache: FetchCache, _: argparse.Namespace) -> int:
    info = cache.info()
    print(f"directory  {info.directory}")
    print(f"entries    {info.entries}")
    print(f"blobs      {info.blobs}" + (f" ({info.references} by reference to downloaded "
                                         "files)" if info.references else ""))
    print(f"size       {human_size(info.bytes)} of {human_size(info.size_limit)}")
    _print_partials()
    return 0


def _print_partials() -> None:
    found = list(registry.partials())
    print(f"partials   {len(found)} ({human_size(sum(p.on_disk for p in found))} on disk; "
          "`cache ls --partials` lists them)")


def _ls_partials() -> int:
    for partial in registry.partials():
        print(f"{human_size(partial.size):>10}  {human_size(partial.on_disk):>10} on disk  "
              f"{_when(partial.mtime)}  {partial.path}")
    return 0


def _ls(cache: FetchCache, _: argparse.Namespace) -> int:
    for item in cache.entries():
        print(f"{human_size(item.size):>10}  {_when(item.last_used)}  {item.sha256[:12]}  "
              f"{item.stored_as:<9} {item.url}")
    return 0


def _verify(cache: FetchCache, args: argparse.Namespace) -> int:
    report = cache.verify(remove=not args.keep)
    for sha256 in report.corrupt:
        print(f"corrupt  {sha256}{'' if args.keep else '  (removed)'}")
    print(f"{report.checked} blobs checked, {len(report.corrupt)} corrupt, "
          f"{report.removed_entries} entries removed")
    return 1 if report.corrupt and args.keep else 0


def _prune(cache: FetchCache, args: argparse.Namespace) -> int:
    report = PruneReport()
    if args.max_size is not None or args.older_than is not None:
        report = cache.prune(max_size=args.max_size, older_than=args.older_than)
    return _report_prune(report, registry.prune(args.older_than, cache.directory / "locks"))


def _report_prune(report: PruneReport, cleaned: registry.Cleaned) -> int:
    print(f"removed {report.removed_entries} entries and {report.removed_blobs} blobs, "
          f"freed {human_size(report.freed_bytes)}; removed {cleaned.partials} abandoned "
          f"partial downloads ({human_size(cleaned.partial_bytes)}) and {cleaned.locks} stale "
          "lock files")
    return 0


def _clear(cache: FetchCache, _: argparse.Namespace) -> int:
    before = cache.info()
    cache.clear()
    print(f"cleared {before.entries} entries, {human_size(before.bytes)}")
    return 0


ACTIONS = {"info": _info, "ls": _ls, "verify": _verify, "prune": _prune, "clear": _clear}
