"""A throwaway nginx on 127.0.0.1 for benchmarks: its own prefix and config in a temp dir,
never the system one, run in the foreground and stopped on exit (no daemon left behind)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PACKAGES = {"nginx": "nginx-light", "aria2c": "aria2"}
INSTALL_HINT = (
    "nginx (Debian's nginx-light), curl and, for bench_parallel.py, aria2c are needed. Install\n"
    "    sudo apt-get update && sudo apt-get install -y nginx-light curl aria2\n"
    "or run this script as root to let it install them."
)

CONFIG = """\
worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        # the same files at 20 MiB/s per connection (a CDN edge; bench_parallel.py)
        location /capped/ {{ alias {root}/; limit_rate 20m; }}
    }}
}}
"""


def ensure_tools(*tools: str) -> None:
    """Install the Debian packages of missing tools when we are root; else explain."""
    missing = [t for t in tools if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"missing: {', '.join(missing)}\n{INSTALL_HINT}")
    print(f"installing {', '.join(missing)} with apt-get ...", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    packages = [PACKAGES.get(tool, tool) for tool in missing]
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not start listening")


@contextmanager
def loopback_nginx(root: Path, *, workers: int = 1) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (and again, rate-capped per connection, under ``/capped/``);
    yields the base URL (no trailing slash)."""
    ensure_tools("nginx")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    root.chmod(0o755)  # workers run as "nobody" when started by root
    with tempfile.TemporaryDirectory(prefix="vllm-fetch-nginx-") as prefix:
        port = free_port()
        conf = Path(prefix) / "nginx.conf"
        conf.write_text(CONFIG.format(prefix=prefix, port=port, root=root, workers=workers))
        proc = subprocess.Popen([nginx, "-p", prefix, "-c", str(conf), "-e",
                                 f"{prefix}/error.log"], stdin=subprocess.DEVNULL)
        try:
            _wait_listening(port, proc)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
