"""The ``vllm-fetch`` command. Errors print one line and exit non-zero, never a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from .connections import HTTPConnection
from .core.urls import redact_url
from .errors import FetchError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-fetch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("get", help="download one URL to a file")
    get.add_argument("url")
    get.add_argument("-o", "--output", type=Path, help="target path (default: the URL's name)")
    get.add_argument("--sha256", help="expected sha256 of the body")
    get.add_argument("--timeout", type=float, help="total deadline in seconds")
    sub.add_parser("demo", help="watch retries and verification against a built-in local origin")
    return parser


def _default_output(url: str) -> Path:
    name = Path(urlsplit(url).path).name
    return Path(name or "index.html")


def cmd_get(args: argparse.Namespace) -> int:
    target = args.output or _default_output(args.url)
    started = time.monotonic()
    with HTTPConnection() as conn:
        path = conn.download_file(args.url, target, timeout=args.timeout,
                                  expected_sha256=args.sha256)
    size = path.stat().st_size
    print(f"{redact_url(args.url)} -> {path} ({size:,} bytes in "
          f"{time.monotonic() - started:.2f} s)")
    return 0


def cmd_demo(_: argparse.Namespace) -> int:
    from .demo_origin import DemoOrigin

    with DemoOrigin(stall_seconds=30) as origin, tempfile.TemporaryDirectory() as tmp:
        conn = HTTPConnection(idle_timeout=1.0)
        steps = [
            ("/flaky", "origin answers 503 + Retry-After: 1 first -> waits, retries"),
            ("/cut", "connection dropped half way -> retried, verified by sha256"),
            ("/stall", "origin stalls mid-body -> idle timeout (1 s), retried"),
        ]
        for path, story in steps:
            print(f"\n== {path}: {story}")
            started = time.monotonic()
            target = conn.download_file(origin.url(path), Path(tmp) / path.strip("/"),
                                        expected_sha256=origin.sha256)
            print(f"   ok: {target.stat().st_size:,} bytes, sha256 verified, "
                  f"{origin.hits[path]} requests, {time.monotonic() - started:.2f} s")
        conn.close()
    print("\nAll downloads complete and verified.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="   %(levelname)s %(message)s",
                        stream=sys.stderr)
    commands = {"get": cmd_get, "demo": cmd_demo}
    try:
        return commands[args.command](args)
    except (FetchError, ValueError, OSError) as exc:
        print(f"vllm-fetch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vllm-fetch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
