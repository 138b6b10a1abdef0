"""hf:// in the real ``vllm-fetch`` script (get, prefetch, manifests), and a snapshot killed
with SIGKILL mid-transfer that the next run resumes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.hub_env import COMMIT1, LFS, REPO, HubSetup, hubs, repo_files
from vllm_fetch import HTTPConnection, hub

__all__ = ["hubs"]
SCRIPT = Path(sys.executable).with_name("vllm-fetch")


def cli(setup: HubSetup, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = setup.env(VLLM_FETCH_CACHE_DIR=str(cwd / ".vf-cache"), VLLM_FETCH_MAX_RETRIES="0")
    return subprocess.run([str(SCRIPT), *map(str, args)], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=120, check=False)


def test_get_repo_file_and_prefetch_patterns_local_dir(hubs: HubSetup, tmp_path: Path) -> None:
    files = repo_files()
    hubs.hub.add_commit(REPO, COMMIT1, files, lfs=LFS, refs=("main", "v1"))
    done = cli(hubs, "get", f"hf://{REPO}", cwd=tmp_path)
    snapshot = hubs.cache / "models--acme--tiny" / "snapshots" / COMMIT1
    assert done.returncode == 0, done.stderr
    assert str(snapshot) in done.stdout
    assert all((snapshot / n).read_bytes() == d for n, d in files.items())

    done = cli(hubs, "get", f"hf://{REPO}@v1/sub/tokenizer.json", "-o", tmp_path / "one",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "one/sub/tokenizer.json").read_bytes() == files["sub/tokenizer.json"]

    done = cli(hubs, "prefetch", f"hf://{REPO}", "--include", "*.json", "--exclude",
               "sub/*", "--local-dir", tmp_path / "plain", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = sorted(str(p.relative_to(tmp_path / "plain")) for p in (tmp_path / "plain").iterdir()
                 if p.is_file())
    assert got == ["config.json"]


def test_manifest_with_hf_entries(hubs: HubSetup, tmp_path: Path) -> None:
    files = repo_files()
    hubs.hub.add_commit(REPO, COMMIT1, files, lfs=LFS)
    manifest = tmp_path / "models.txt"
    manifest.write_text(f"hf://{REPO}/config.json\nhf://{REPO} weights\n")
    done = cli(hubs, "prefetch", manifest, "-d", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    snapshot = hubs.cache / "models--acme--tiny" / "snapshots" / COMMIT1
    assert (snapshot / "config.json").read_bytes() == files["config.json"]
    assert all((tmp_path / "out/weights" / n).read_bytes() == d for n, d in files.items())


def test_hf_errors_are_one_line(hubs: HubSetup, tmp_path: Path) -> None:
    hubs.hub.add_commit(REPO, COMMIT1, repo_files(), lfs=LFS, token="hf_secret")
    for args in (("get", "hf://../evil"), ("get", f"hf://{REPO}")):
        done = cli(hubs, *args, cwd=tmp_path)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert len([x for x in done.stderr.splitlines() if x.startswith("vllm-fetch:")]) == 1


_KILLED = """
import sys
from vllm_fetch import HTTPConnection, hub
hub.snapshot(sys.argv[1], http=HTTPConnection(cache=sys.argv[2]), connections=2,
             progress=lambda done, total: print(done, flush=True))
"""


def test_snapshot_killed_with_sigkill_resumes_every_file(hubs: HubSetup, tmp_path: Path) -> None:
    big = {"a.safetensors": os.urandom(3 << 20), "b.safetensors": os.urandom(3 << 20),
           "config.json": b"{}"}
    hubs.hub.add_commit(REPO, COMMIT1, big, lfs={"a.safetensors", "b.safetensors"})
    for blob in hubs.cdn.blobs.values():
        blob.delay = 0.02  # about 3 MiB/s per connection
    total = sum(map(len, big.values()))
    child = subprocess.Popen([sys.executable, "-c", _KILLED, REPO, str(tmp_path / "vf")],
                             env=hubs.env(), stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line or int(line) >= total // 3:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    sent_before = hubs.cdn.bytes_sent
    assert 0 < sent_before < total
    for blob in hubs.cdn.blobs.values():
        blob.delay = 0.0
    first_new = len(hubs.cdn.requests)
    path = hub.snapshot(REPO, http=HTTPConnection(cache=tmp_path / "vf"), connections=2,
                        progress=False)
    for name, data in big.items():
        assert hashlib.sha256((path / name).read_bytes()).digest() == hashlib.sha256(
            data).digest()
    resumed = [s for s in hubs.cdn.requests[first_new:] if s.headers.get("Range", "bytes=0-")
               .split("=")[1].split("-")[0] not in ("0", "")]
    assert resumed, "no request continued a partial"
    assert hubs.cdn.bytes_sent - sent_before < total - sent_before // 2
