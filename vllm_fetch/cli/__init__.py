"""The ``vllm-fetch`` command. Errors print one line and exit non-zero, never a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from ..config import env_flag
from ..connections import HTTPConnection
from ..core.scrub import scrub_error, scrub_text
from ..core.urls import redact_url
from ..errors import FetchError
from .cache import add_cache_parser, cmd_cache
from .hub import add_hub_options, cmd_get_hf, cmd_prefetch_hf, is_hf_url, manifest_or_hf
from .manifest import default_name, parse_sha256, read_manifest, resolve_targets
from .prefetch import PrefetchInterrupted, PrefetchOutcome, prefetch
from .prefetch_bar import PrefetchBar

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _sha256(text: str) -> str:
    try:
        return parse_sha256(text)
    except ValueError as exc:  # argparse names the option: only the reason
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None


def _target(output: str | None, url: str) -> Path:
    """``-o``: a file path, or a directory (existing, or written with a trailing slash) that
    the URL's file name goes into."""
    if output is None:
        return Path(default_name(url))
    path = Path(output)
    if output.endswith(("/", os.sep)) or path.is_dir():
        return path / default_name(url)
    return path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line, as every error of the command is:
    ``vllm-fetch: error: …`` (a query or userinfo quoted from the arguments removed), exit 2.
    Its subcommands' parsers are of this class too (argparse makes them with the parent's)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("vllm-fetch").strip()
        hint = f"vllm-fetch {command} --help" if command else "vllm-fetch --help"
        sys.stderr.write(f"vllm-fetch: error: {command + ': ' if command else ''}"
                         f"{scrub_text(message, None)} (see {hint})\n")
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vllm-fetch",
        description="Resilient downloads: retries, resume, verification, a shared cache.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every retry and hit")
    # -v also after the subcommand: SUPPRESS keeps a -v given before it
    verbose = _Parser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log every retry and hit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    get = sub.add_parser("get", help="download one URL to a file", parents=[verbose])
    get.add_argument("url")
    get.add_argument("-o", "--output",
                     help="target path, or a directory (existing, or ending in /) to save "
                          "into under the URL's name (default: the URL's name)")
    get.add_argument("--sha256", type=_sha256, help="expected sha256 of the body (64 hex "
                                                    "digits, optionally sha256:-prefixed)")
    get.add_argument("--connections", type=_positive_int,
                     help="parallel ranged connections (default: automatic by size)")
    _add_fetch_options(get)

    pre = sub.add_parser("prefetch", help="download every file a manifest lists",
                         parents=[verbose])
    pre.add_argument("manifest", type=manifest_or_hf,
                     help="'URL [SHA256] [PATH]' lines, or JSON; or hf://org/name[@revision]")
    add_hub_options(pre)
    pre.add_argument("-j", "--jobs", type=_positive_int, default=4, help="files at once (4)")
    pre.add_argument("-d", "--dir", type=Path, default=Path("."), help="download directory")
    _add_fetch_options(pre)

    warm = sub.add_parser("warm", help="fill the mirror and the local cache with a manifest's "
                          "files, writing no targets", parents=[verbose])
    warm.add_argument("manifest", type=Path, help="'URL [SHA256] [PATH]' lines, or JSON")
    warm.add_argument("-j", "--jobs", type=_positive_int, default=4, help="files at once (4)")
    _add_fetch_options(warm)

    add_cache_parser(sub, parents=[verbose])
    sub.add_parser("demo", help="watch retries, resume, verification and the cache, offline",
                   parents=[verbose])
    return parser


def _add_fetch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, help="total deadline per file, in seconds")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor fill the cache")
    parser.add_argument("--offline", action="store_true",
                        help="serve only from the cache; never touch the network")


def _connection(args: argparse.Namespace) -> HTTPConnection:
    return HTTPConnection(cache=False if args.no_cache else None,
                          offline=True if args.offline else None)


def cmd_get(args: argparse.Namespace) -> int:
    if is_hf_url(args.url):
        with _connection(args) as conn:
            return cmd_get_hf(conn, args)
    target = _target(args.output, args.url)
    started = time.monotonic()
    with _connection(args) as conn:
        result = conn.fetch_file(args.url, target, timeout=args.timeout,
                                 expected_sha256=args.sha256, connections=args.connections)
    source = "from cache" if result.from_cache else f"{time.monotonic() - started:.2f} s"
    print(f"{redact_url(args.url)} -> {result.path} ({result.size:,} bytes, {source})")
    return 0


def _report(outcome: PrefetchOutcome, bar: PrefetchBar, *, targets: bool = True) -> None:
    bar.file_done()
    if outcome.ok:
        shown = outcome.target if targets else redact_url(outcome.entry.url)
        bar.write(f"{'cached' if outcome.from_cache else 'ok':<8}{shown}")
    else:
        bar.write(f"FAILED  {redact_url(outcome.entry.url)}: {outcome.error}", file=sys.stderr)


def _summary(outcomes: Sequence[PrefetchOutcome]) -> str:
    failed = sum(not o.ok for o in outcomes)
    cached = sum(o.ok and o.from_cache for o in outcomes)
    return f"{len(outcomes) - failed - cached} fetched, {cached} from cache, {failed} failed"


def cmd_prefetch(args: argparse.Namespace) -> int:
    with _connection(args) as conn:
        if is_hf_url(args.manifest):
            return cmd_prefetch_hf(conn, args)
        return _run_manifest(conn, args, args.dir, "prefetch")


def cmd_warm(args: argparse.Namespace) -> int:
    """prefetch into a scratch directory that is removed: the requests (through the mirror,
    when one is configured) fill the mirror and the local cache; no target is written."""
    with _connection(args) as conn:
        cache = conn.cache
        scratch_parent = cache.directory if cache is not None else None  # same filesystem
        with tempfile.TemporaryDirectory(prefix=".warm-", dir=scratch_parent) as scratch:
            return _run_manifest(conn, args, Path(scratch), "warm")


def _run_manifest(conn: HTTPConnection, args: argparse.Namespace, directory: Path,
                  label: str) -> int:
    entries = read_manifest(args.manifest)
    resolve_targets(directory, entries)  # refuse a path leading out before fetching anything
    show_bar = sys.stderr.isatty() and not env_flag("VLLM_FETCH_DISABLE_PROGRESS")
    targets = label != "warm"
    bar = PrefetchBar(len(entries), enabled=show_bar, label=label)
    try:
        outcomes = prefetch(conn, entries, directory, jobs=args.jobs, timeout=args.timeout,
                            on_done=lambda outcome: _report(outcome, bar, targets=targets),
                            progress_for=bar.for_entry)
    except PrefetchInterrupted as stop:
        bar.close()
        print(f"interrupted: {_summary(stop.finished)}, {stop.left} left "
              "(partial downloads kept: run again to resume)", flush=True)
        print("vllm-fetch: interrupted", file=sys.stderr, flush=True)
        # running transfers are threads that cannot be stopped: exit now, as a kill would;
        # every file is published atomically, so a partial is all they leave
        os._exit(EXIT_INTERRUPTED)
    bar.close()
    print(_summary(outcomes))
    return EXIT_FAILED if any(not o.ok for o in outcomes) else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo()


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "get": cmd_get,
    "prefetch": cmd_prefetch,
    "warm": cmd_warm,
    "cache": cmd_cache,
    "demo": cmd_demo,
}


class _NoRetryNotes(logging.Filter):
    """Without -v, a retry that may still succeed is not news: the error, if any, is one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "retrying in" not in str(record.msg)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="   %(levelname)s %(message)s", stream=sys.stderr)
    url = getattr(args, "url", None)  # what no printed line may quote the secrets of
    if not args.verbose and args.command != "demo":  # the demo is there to show its retries
        for handler in logging.getLogger().handlers:
            handler.addFilter(_NoRetryNotes())
    try:
        return COMMANDS[args.command](args)
    except (FetchError, ValueError, OSError) as exc:
        scrub_error(exc, url)
        print(f"vllm-fetch: error: {scrub_text(str(exc), url)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("vllm-fetch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug, not bad input: still one line, the details with -v
        scrub_error(exc, url)
        if args.verbose:
            logging.getLogger("vllm_fetch").exception("internal error")
        print(f"vllm-fetch: internal error: {type(exc).__name__}: {scrub_text(str(exc), url)}"
              f"{'' if args.verbose else ' (run with -v for details)'}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
