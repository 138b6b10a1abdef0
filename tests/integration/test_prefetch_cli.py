"""``vllm-fetch prefetch`` / ``get`` as a new user meets them (issue 14, item 4)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tests.helpers import TerminalChild
from tests.origin import Origin
from tests.ranged import RangeFile

SCRIPT = Path(sys.executable).parent / "vllm-fetch"
BODY = os.urandom(2 * 1024 * 1024)


def test_ctrl_c_stops_prefetch_at_once_keeping_partials(origin: Origin, tmp_path: Path) -> None:
    urls = [RangeFile(BODY, delay=0.2).mount(origin, f"/f{n}.bin") for n in range(4)]  # ~7 s each
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("".join(f"{url}\n" for url in urls))
    out_dir = tmp_path / "out"
    env = {**os.environ, "VLLM_FETCH_CACHE_DIR": str(tmp_path / "cache")}
    with TerminalChild([str(SCRIPT), "prefetch", str(manifest), "-j", "2", "-d",
                        str(out_dir)], env=env) as child:
        deadline = time.monotonic() + 30
        while origin.bytes_sent < 2 * 64 * 1024 * 2:  # both running transfers under way
            assert time.monotonic() < deadline, bytes(child.seen)
            time.sleep(0.02)
        child.ctrl_c()  # Ctrl-C, as typed
        started = time.monotonic()
        code = child.proc.wait(timeout=20)
        stopped_in = time.monotonic() - started
    text = child.text
    assert code == 130, text
    assert stopped_in < 5, stopped_in  # not after the transfers (~7 s each) finish
    assert "4 left" in text and "interrupted" in text, text
    assert "Traceback" not in text, text
    assert sorted(origin.count(f"/f{n}.bin") for n in range(4)) == [0, 0, 1, 1]  # queued: never
    names = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    assert not any(name.endswith(".bin") and not name.startswith(".") for name in names), names
    partials = [name for name in names if name.endswith(".part")]
    assert len(partials) == 2, names  # kept for the next run to resume
