"""One fleet node in its own process: ``python -m tests.fleet_node MODE URL TARGET``.

The mirror comes from ``VLLM_FETCH_MIRRORS`` (and CA variables, cache dir) in the environment;
``FLEET_CONNECTIONS`` sets ``connections``, ``FLEET_SHA256`` the expected digest;
``FLEET_BYTES=N`` makes N ``fetch_bytes`` calls instead of a download. Prints one
JSON line: the sha256 of the target as this process saw it, and where the bytes came from.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path

from vllm_fetch import HTTPConnection, RetryPolicy


def main() -> None:
    mode, url, target = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    connections = int(os.environ.get("FLEET_CONNECTIONS", "1"))
    expected = os.environ.get("FLEET_SHA256") or None
    conn = HTTPConnection(retry=RetryPolicy(max_attempts=3, backoff_base=0.05))
    repeats = int(os.environ.get("FLEET_BYTES", "0"))
    if repeats:  # fetch_bytes N times instead of a download (revalidation through the mirror)
        bodies = [conn.fetch_bytes(url) for _ in range(repeats)]
        print(json.dumps({"sha256": bodies[-1].sha256,
                          "sources": [b.source for b in bodies]}), flush=True)
        return
    kwargs = {"connections": connections, "expected_sha256": expected, "progress": False}
    if mode == "sync":
        result = conn.fetch_file(url, target, **kwargs)  # type: ignore[arg-type]
    else:
        result = asyncio.run(conn.async_fetch_file(url, target, **kwargs))  # type: ignore[arg-type]
    digest = hashlib.sha256(result.path.read_bytes()).hexdigest()
    print(json.dumps({"sha256": digest, "source": result.source}), flush=True)


if __name__ == "__main__":
    main()
