"""The documented fleet mirror (docs/fleet/mirror.conf), run by a real nginx on loopback.

The config file is rendered with loopback values into a throwaway prefix and nginx runs in the
foreground (no daemon is left behind). When nginx cannot start, the test fails: nginx is a
requirement of the suite (``.ci/run`` installs it).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "docs" / "fleet" / "mirror.conf"
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found is None:
        raise RuntimeError("nginx is needed by the fleet tests (apt-get install nginx-light); "
                           ".ci/run installs it")
    return found


def render(values: dict[str, str]) -> str:
    """docs/fleet/mirror.conf with every ``@NAME@`` outside comments replaced."""
    lines = []
    for line in CONFIG.read_text().splitlines():
        code, hash_, comment = line.partition("#")
        for name, value in values.items():
            code = code.replace(f"@{name}@", value)
        leftover = _PLACEHOLDER.search(code)
        if leftover:
            raise ValueError(f"no value for {leftover.group()} in {CONFIG.name}")
        lines.append(code + hash_ + comment)
    return "\n".join(lines) + "\n"


class FleetMirror:
    """nginx serving the documented config on ``host``, proxying ``PATH`` to one upstream."""

    def __init__(self, *, upstream_addr: str, upstream_name: str, upstream_scheme: str,
                 upstream_ca: Path, tls_cert: Path, tls_key: Path, tls: bool = False,
                 host: str = "127.0.0.3", path: str = "/hf/") -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="vllm-fetch-fleet-"))
        self.prefix.chmod(0o755)  # workers run as "nobody" when the master is root
        self.host, self.path, self.tls = host, path, tls
        self.port = _free_port(host)
        listen = f"{host}:{self.port}" + (" ssl" if tls else "")
        for name in ("client_body", "proxy_temp", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / name).mkdir()
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(render({
            "PREFIX": str(self.prefix), "CACHE_DIR": str(self.prefix / "cache"),
            "MAX_SIZE": "2g", "LISTEN": listen, "TLS_CERT": str(tls_cert),
            "TLS_KEY": str(tls_key), "PATH": path, "UPSTREAM_ADDR": upstream_addr,
            "UPSTREAM_SCHEME": upstream_scheme, "UPSTREAM_NAME": upstream_name,
            "UPSTREAM_CA": str(upstream_ca),
        }))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The mirror prefix nodes are pointed at (no trailing slash)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}{self.path.rstrip('/')}"

    def start(self) -> FleetMirror:
        proc = subprocess.Popen(
            [nginx_binary(), "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;",
             "-e", str(self.prefix / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.proc = proc
        end = time.monotonic() + 15
        while time.monotonic() < end:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"nginx exited with {proc.returncode}: {err}"
                                   f"{self.error_log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start listening: {self.error_log()}")

    def error_log(self) -> str:
        log = self.prefix / "error.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port
