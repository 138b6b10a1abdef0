"""A fleet behind the documented mirror config (docs/fleet/mirror.conf), run by a real nginx:
an origin on 127.0.0.2, the nginx mirror on 127.0.0.3, each node a real subprocess pointed at
the mirror by VLLM_FETCH_MIRRORS. The origin counts what it served."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from tests.fleet_mirror import FleetMirror
from tests.origin import Origin, sha256
from tests.ranged import RangeFile
from vllm_fetch.config import CA_BUNDLE_VARIABLES

MIB = 1024 * 1024
BIG = 64 * MIB
NODES = 8
ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    authority = trustme.CA()
    pem = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(pem))
    pem.parent.chmod(0o755)
    pem.chmod(0o644)
    return authority, pem


def cert_files(ca: trustme.CA, name: str, directory: Path) -> tuple[Path, Path]:
    issued = ca.issue_cert(name)
    directory.mkdir(exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(b"".join(p.bytes() for p in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    directory.chmod(0o755)
    cert.chmod(0o644)
    key.chmod(0o644)
    return cert, key


@pytest.fixture
def upstream() -> Iterator[Origin]:
    server = Origin(host="127.0.0.2").start()
    try:
        yield server
    finally:
        server.stop()


def mirror_for(upstream: Origin, ca: tuple[trustme.CA, Path], directory: Path, *,
               name: str | None = None, tls: bool = False) -> FleetMirror:
    cert, key = cert_files(ca[0], "127.0.0.3", directory)
    return FleetMirror(upstream_addr=f"{upstream.host}:{upstream.port}",
                       upstream_name=name or upstream.host,
                       upstream_scheme="https" if upstream.tls else "http",
                       upstream_ca=ca[1], tls_cert=cert, tls_key=key, tls=tls).start()


@pytest.fixture
def mirror(upstream: Origin, ca: tuple[trustme.CA, Path], tmp_path: Path
           ) -> Iterator[FleetMirror]:
    server = mirror_for(upstream, ca, tmp_path / "tls")
    try:
        yield server
    finally:
        server.close()


def node_env(prefix: str, mirror_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CA_BUNDLE_VARIABLES}
    env.update(VLLM_FETCH_MIRRORS=f"{prefix}={mirror_url}", **extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_nodes(urls: list[tuple[str, str]], targets: list[Path], env: dict[str, str]
              ) -> list[dict[str, Any]]:
    """One node process per (mode, url), all at once; their JSON answers."""
    procs = [subprocess.Popen([sys.executable, "-m", "tests.fleet_node", mode, url, str(t)],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for (mode, url), t in zip(urls, targets, strict=True)]
    outputs = []
    try:
        outputs = [proc.communicate(timeout=240) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    answers = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode(errors="replace")[:3000]
        answers.append(json.loads(out.decode().strip().splitlines()[-1]))
    return answers


def modes(n: int) -> list[str]:
    return ["sync" if i % 2 == 0 else "async" for i in range(n)]


@pytest.mark.parametrize("connections", [1, 8])
def test_eight_nodes_one_fill(connections: int, upstream: Origin, mirror: FleetMirror,
                              tmp_path: Path) -> None:
    data = os.urandom(BIG)
    url = RangeFile(data).mount(upstream, "/model.bin")
    env = node_env(upstream.url(""), mirror.url, FLEET_CONNECTIONS=str(connections),
                   FLEET_SHA256=sha256(data), VLLM_FETCH_DISABLE_CACHE="1")
    targets = [tmp_path / f"node{i}" / "model.bin" for i in range(NODES)]
    answers = run_nodes([(m, url) for m in modes(NODES)], targets, env)
    assert [a["sha256"] for a in answers] == [sha256(data)] * NODES
    assert {a["source"] for a in answers} == {"mirror"}
    ratio = upstream.bytes_sent / BIG
    print(f"connections={connections}: origin served {ratio:.3f}x for {NODES} nodes")
    assert ratio <= 1.05, f"the origin served {ratio:.2f}x the file"
    ranges = {s.headers.get("Range") for s in upstream.seen("/model.bin")}
    assert ranges <= {f"bytes={i * 16 * MIB}-{(i + 1) * 16 * MIB - 1}" for i in range(4)}


def test_a_stopped_mirror_falls_back_and_offline_replay_hits(
    upstream: Origin, mirror: FleetMirror, tmp_path: Path
) -> None:
    data = os.urandom(MIB)
    url = RangeFile(data).mount(upstream, "/a.bin")
    other = RangeFile(data[::-1]).mount(upstream, "/b.bin")
    cache = tmp_path / "cache"
    env = node_env(upstream.url(""), mirror.url, VLLM_FETCH_CACHE_DIR=str(cache))
    first = run_nodes([("sync", url)], [tmp_path / "first.bin"], env)
    assert first[0]["source"] == "mirror" and first[0]["sha256"] == sha256(data)
    mirror.stop()
    served = upstream.bytes_sent
    fallen = run_nodes([("sync", other), ("async", other)],
                       [tmp_path / "b1.bin", tmp_path / "b2.bin"],
                       node_env(upstream.url(""), mirror.url, VLLM_FETCH_DISABLE_CACHE="1"))
    assert [a["source"] for a in fallen] == ["origin", "origin"]
    assert [a["sha256"] for a in fallen] == [sha256(data[::-1])] * 2
    # the mirror is gone from the configuration too: keys are origin URLs
    offline = {k: v for k, v in env.items() if k != "VLLM_FETCH_MIRRORS"}
    offline["VLLM_FETCH_OFFLINE"] = "1"
    replay = run_nodes([("sync", url), ("async", url)],
                       [tmp_path / "r1.bin", tmp_path / "r2.bin"], offline)
    assert [a["source"] for a in replay] == ["cache", "cache"]
    assert [a["sha256"] for a in replay] == [sha256(data)] * 2
    assert upstream.bytes_sent == served + 2 * MIB


def test_a_mirror_serving_a_flipped_byte_is_caught(
    upstream: Origin, mirror: FleetMirror, tmp_path: Path
) -> None:
    data = os.urandom(MIB)
    bad = bytearray(data)
    bad[4321] ^= 0x01
    served = RangeFile(bytes(bad))

    def fix(number: int) -> None:  # the mirror filled from a bad copy; the origin is fixed
        if number >= 1:
            served.data = data

    served.before = fix
    url = served.mount(upstream, "/flip.bin")
    env = node_env(upstream.url(""), mirror.url, FLEET_SHA256=sha256(data),
                   VLLM_FETCH_DISABLE_CACHE="1")
    answers = run_nodes([("sync", url), ("async", url)],
                        [tmp_path / "s.bin", tmp_path / "a.bin"], env)
    assert [a["source"] for a in answers] == ["origin", "origin"]
    assert [a["sha256"] for a in answers] == [sha256(data)] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "s.bin", "tls"]


def test_an_https_origin_behind_a_tls_mirror_with_one_ca_variable(
    ca: tuple[trustme.CA, Path], tmp_path: Path
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca[0].issue_cert("origin.test").configure_cert(context)
    origin = Origin(host="127.0.0.2", tls=context).start()
    try:
        data = os.urandom(2 * MIB)
        RangeFile(data).mount(origin, "/m.bin")
        mirror = mirror_for(origin, ca, tmp_path / "tls", name="origin.test", tls=True)
        try:
            url = f"https://origin.test:{origin.port}/m.bin"  # never dialed: the mirror serves
            for variable in ("SSL_CERT_FILE", "VLLM_FETCH_CA_BUNDLE"):
                env = node_env(f"https://origin.test:{origin.port}", mirror.url,
                               VLLM_FETCH_DISABLE_CACHE="1", **{variable: str(ca[1])})
                answers = run_nodes([("sync", url), ("async", url)],
                                    [tmp_path / f"{variable}-s", tmp_path / f"{variable}-a"], env)
                assert [a["source"] for a in answers] == ["mirror", "mirror"]
                assert [a["sha256"] for a in answers] == [sha256(data)] * 2
            assert origin.bytes_sent == len(data)
            assert {s.headers.get("Host") for s in origin.requests} == {"origin.test"}
        finally:
            mirror.close()
    finally:
        origin.stop()


def test_image_revalidation_through_the_mirror_keeps_304s(
    upstream: Origin, mirror: FleetMirror, tmp_path: Path
) -> None:
    image = os.urandom(50_000)
    statuses: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"ETag": '"img-1"', "Cache-Control": "max-age=0"}
        if request.headers.get("If-None-Match") == '"img-1"':
            statuses.append(304)
            return web.Response(status=304, headers=headers)
        statuses.append(200)
        upstream.count_sent(len(image))
        return web.Response(body=image, headers=headers)

    url = upstream.route("/cat.png", handler)
    env = node_env(upstream.url(""), mirror.url, VLLM_FETCH_CACHE_DIR=str(tmp_path / "c"),
                   FLEET_BYTES="4")
    answers = run_nodes([("sync", url)], [tmp_path / "unused"], env)
    assert answers[0]["sources"] == ["mirror", "cache", "cache", "cache"]
    assert answers[0]["sha256"] == sha256(image)
    assert statuses == [200, 304, 304, 304]
    assert upstream.bytes_sent == len(image)
