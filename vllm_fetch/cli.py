"""The ``vllm-fetch`` command. Errors print one line and exit non-zero, never a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .connections import HTTPConnection
from .core.urls import redact_url
from .errors import FetchError
from .manifest import default_name, read_manifest
from .prefetch import PrefetchOutcome, prefetch

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-fetch",
        description="Resilient downloads: retries, resume, verification, a shared cache.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every retry and hit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    get = sub.add_parser("get", help="download one URL to a file")
    get.add_argument("url")
    get.add_argument("-o", "--output", type=Path, help="target path (default: the URL's name)")
    get.add_argument("--sha256", help="expected sha256 of the body (hex)")
    get.add_argument("--timeout", type=float, help="total deadline in seconds")

    pre = sub.add_parser("prefetch", help="download every file a manifest lists")
    pre.add_argument("manifest", type=Path, help="'URL [SHA256] [PATH]' lines, or JSON")
    pre.add_argument("-j", "--jobs", type=_positive_int, default=4, help="files at once (4)")
    pre.add_argument("-d", "--dir", type=Path, default=Path("."), help="download directory")

    sub.add_parser("demo", help="watch retries, resume and verification on a local origin")
    return parser


def cmd_get(args: argparse.Namespace) -> int:
    target = args.output or Path(default_name(args.url))
    started = time.monotonic()
    with HTTPConnection() as conn:
        path = conn.download_file(args.url, target, timeout=args.timeout,
                                  expected_sha256=args.sha256)
    size = path.stat().st_size
    print(f"{redact_url(args.url)} -> {path} ({size:,} bytes in "
          f"{time.monotonic() - started:.2f} s)")
    return 0


def _report(outcome: PrefetchOutcome) -> None:
    if outcome.ok:
        print(f"ok      {outcome.target}")
    else:
        print(f"FAILED  {redact_url(outcome.entry.url)}: {outcome.error}", file=sys.stderr)


def cmd_prefetch(args: argparse.Namespace) -> int:
    entries = read_manifest(args.manifest)
    with HTTPConnection() as conn:
        outcomes = prefetch(conn, entries, args.dir, jobs=args.jobs, on_done=_report)
    failed = sum(not o.ok for o in outcomes)
    print(f"{len(outcomes) - failed} fetched, {failed} failed")
    return EXIT_FAILED if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo()


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "get": cmd_get,
    "prefetch": cmd_prefetch,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="   %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except (FetchError, ValueError, OSError) as exc:
        print(f"vllm-fetch: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("vllm-fetch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
