"""Fixtures and subprocess helpers for the Hub tests: a fake Hub + CDN, an isolated
HF_HOME/HF_HUB_CACHE, and the real huggingface_hub run in a child process (its settings are
read from the environment at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fake_hub import CDN, FakeHub

COMMIT1 = "1" * 40
COMMIT2 = "2" * 40
REPO = "acme/tiny"


def repo_files(n: int = 1) -> dict[str, bytes]:
    return {
        "config.json": b'{"model_type": "tiny", "v": %d}' % n,
        "README.md": b"# tiny\n" * 10,
        "sub/tokenizer.json": b'{"vocab": [1, 2, 3]}',
        "model-00001-of-00002.safetensors": bytes(range(256)) * 1200 + bytes([n]),
        "model-00002-of-00002.safetensors": b"\x07" * 200_000 + bytes([n]),
    }


LFS = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}


@dataclass
class HubSetup:
    hub: FakeHub
    cdn: CDN
    home: Path
    cache: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE",
                     "TRANSFORMERS_OFFLINE", "HF_TOKEN_PATH"):
            env.pop(name, None)
        env.update(HF_ENDPOINT=self.hub.url(""), HF_HOME=str(self.home),
                   HF_HUB_CACHE=str(self.cache), HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                   NO_PROXY="127.0.0.1,localhost", **extra)
        return env


@pytest.fixture
def hubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubSetup]:
    cdn = CDN().start()
    hub = FakeHub(cdn).start()
    setup = HubSetup(hub, cdn, tmp_path / "hf-home", tmp_path / "hf-home" / "hub")
    for name, value in setup.env().items():
        if name.startswith("HF_"):
            monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield setup
    finally:
        hub.stop()
        cdn.stop()


_HF_SCRIPT = """
import hashlib, json, sys
import huggingface_hub as h
args = json.loads(sys.argv[1])
out = {}
if args["op"] == "snapshot":
    path = h.snapshot_download(args["repo"], revision=args.get("revision", "main"),
                               local_files_only=args.get("local", False))
    out["path"] = path
elif args["op"] == "files":
    for name in args["files"]:
        p = h.hf_hub_download(args["repo"], name, revision=args.get("revision", "main"),
                              local_files_only=args.get("local", False))
        out[name] = hashlib.sha256(open(p, "rb").read()).hexdigest()
print(json.dumps(out))
"""


def run_hf(setup: HubSetup, op: dict[str, object], **env: str) -> dict[str, str]:
    """The real huggingface_hub in a child process; its JSON answer."""
    done = subprocess.run([sys.executable, "-c", _HF_SCRIPT, json.dumps(op)],
                          env=setup.env(**env), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
