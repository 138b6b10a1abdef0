"""A Hugging Face repo snapshot: vllm_fetch.hub.snapshot vs huggingface_hub.snapshot_download.

The fake Hub of the tests (``tests/fake_hub.py``: the revision/tree API, ``resolve`` with
X-Repo-Commit / X-Linked-Etag / X-Linked-Size, LFS files 302-redirected to a second loopback
"CDN" origin with signed query strings) runs in its own process and serves a repo of 4
safetensors shards plus small files (``--size-mib``, 1024 by default); the CDN is capped at
``--cap-mib`` (20) MiB/s per connection. Each tool runs in its own subprocess into a fresh
``HF_HUB_CACHE`` (vllm_fetch also into a fresh cache of its own), timed inside the child
around the call; the order alternates every round. huggingface_hub runs with its defaults
(``HF_ENDPOINT`` = the fake Hub, 8 workers, hf_xet off since the fake Hub speaks no Xet);
hf_transfer is not measured: huggingface_hub >= 1.0 no longer uses it
(``HF_HUB_ENABLE_HF_TRANSFER`` is deprecated and ignored).

Run: ``.venv/bin/python benchmarks/bench_hub.py [--rounds 3] [--size-mib 1024]``. Only
loopback is used; nothing is committed. Not run by the tests.

Measured 2026-12-01 on the loaded 2-core dev VM, 1026 MiB, 3 rounds, median:

    huggingface_hub   17.27 s    59.4 MiB/s  1.00x huggingface_hub
    vllm_fetch        10.05 s   102.1 MiB/s  0.58x huggingface_hub
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPO = "bench/model"
COMMIT = "c0ffee" + "0" * 34

SERVER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    from tests.fake_hub import CDN, FakeHub
    size, cap = int(sys.argv[2]) << 20, float(sys.argv[3]) * (1 << 20)
    cdn = CDN(delay=64 * 1024 / cap).start()  # one 64 KiB block per delay: cap per connection
    hub = FakeHub(cdn).start()
    shard = size // 4
    files = {f"model-{i:05d}-of-00004.safetensors": os.urandom(shard) for i in range(1, 5)}
    files.update({"config.json": b'{"model_type": "bench"}', "README.md": b"# bench\\n",
                  "tokenizer.json": os.urandom(2 << 20).hex().encode()[: 2 << 20],
                  "generation_config.json": b"{}",
                  "model.safetensors.index.json": b'{"weight_map": {}}'})
    lfs = {n for n in files if n.endswith(".safetensors")}
    hub.add_commit(sys.argv[4], sys.argv[5], files, lfs=lfs)
    print(hub.url(""), sum(map(len, files.values())), flush=True)
    sys.stdin.read()
""")

CLIENT = textwrap.dedent("""
    import json, sys, time
    tool, repo = sys.argv[1], sys.argv[2]
    if tool == "huggingface_hub":
        import huggingface_hub
        start = time.perf_counter()
        path = huggingface_hub.snapshot_download(repo)
    else:
        from vllm_fetch import hub
        start = time.perf_counter()
        path = hub.snapshot(repo, progress=False)
    print(json.dumps({"seconds": time.perf_counter() - start, "path": str(path)}))
""")


def run_client(tool: str, endpoint: str, scratch: Path) -> float:
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(scratch / "home"),
               HF_HUB_CACHE=str(scratch / "hub"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               VLLM_FETCH_CACHE_DIR=str(scratch / "vf-cache"),
               VLLM_FETCH_LOCK_DIR=str(scratch / "locks"), VLLM_FETCH_DISABLE_PROGRESS="1",
               NO_PROXY="127.0.0.1,localhost")
    done = subprocess.run([sys.executable, "-c", CLIENT, tool, REPO], env=env, text=True,
                          capture_output=True, timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tool} failed: {done.stderr[-2000:]}")
    seconds: float = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--cap-mib", type=float, default=20.0)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(ROOT), str(args.size_mib), str(args.cap_mib), REPO,
         COMMIT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdin is not None
    endpoint, total = server.stdout.readline().split()
    tools = ["huggingface_hub", "vllm_fetch"]
    times: dict[str, list[float]] = {t: [] for t in tools}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
            for round_ in range(args.rounds):
                for tool in tools if round_ % 2 == 0 else reversed(tools):
                    seconds = run_client(tool, endpoint, Path(tmp) / tool)
                    times[tool].append(seconds)
                    print(f"round {round_ + 1} {tool:<16} {seconds:6.2f} s", flush=True)
    finally:
        server.stdin.close()
        server.wait(30)
        server.stdout.close()
    mib = int(total) / (1 << 20)
    print(f"\n{mib:.0f} MiB repo, CDN capped at {args.cap_mib:g} MiB/s per connection, "
          f"{args.rounds} rounds, median:")
    best_other = statistics.median(times["huggingface_hub"])
    for tool in tools:
        median = statistics.median(times[tool])
        print(f"    {tool:<16} {median:6.2f} s  {mib / median:6.1f} MiB/s  "
              f"{median / best_other:4.2f}x huggingface_hub")


if __name__ == "__main__":
    main()
