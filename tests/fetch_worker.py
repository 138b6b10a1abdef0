"""A download in its own process, for the cross-process tests.

``python -m tests.fetch_worker MODE URL TARGET [SYNC_DIR]``: with SYNC_DIR, announce readiness
(a file named by the pid) and wait for ``SYNC_DIR/go`` so every worker starts at once. Prints
the sha256 of the target as this process saw it right after the call returned.
``FETCH_WORKER_CONNECTIONS`` sets ``connections`` (default 1).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from pathlib import Path

from vllm_fetch import HTTPConnection, RetryPolicy


def main() -> None:
    mode, url, target = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if mode != "sync":  # import the async side first: "ready" must mean ready to start at once
        import vllm_fetch.download.async_runner  # noqa: F401
    if len(sys.argv) > 4:
        sync_dir = Path(sys.argv[4])
        (sync_dir / str(os.getpid())).touch()
        while not (sync_dir / "go").exists():
            time.sleep(0.01)
    connections = int(os.environ.get("FETCH_WORKER_CONNECTIONS", "1"))
    conn = HTTPConnection(retry=RetryPolicy(max_attempts=3, backoff_base=0.01))
    if mode == "sync":
        path = conn.download_file(url, target, connections=connections, progress=False)
    else:
        path = asyncio.run(conn.async_download_file(url, target, connections=connections,
                                                    progress=False))
    print(hashlib.sha256(path.read_bytes()).hexdigest(), flush=True)


if __name__ == "__main__":
    main()
