"""Records every socket connect of this test process, so the caller can prove replay is offline."""

from __future__ import annotations

import os
import sys
from typing import Any

_LOG = os.environ.get("EXAMPLE_CONNECT_LOG")


def _record_connects(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and _LOG:
        with open(_LOG, "a", encoding="utf-8") as log:
            log.write(f"{args[1]!r}\n")


sys.addaudithook(_record_connects)
