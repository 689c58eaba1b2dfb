"""The repo's nginx gateway (deploy/nginx/render.py, deploy/nginx/nginx.conf.template) in the foreground on a free
127.0.0.1 port: the benchmark's course rows and the gateway tests (tests/test_gateway.py) both run it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from .servers import ROOT, STARTED_GROUPS, free_port

_spec = importlib.util.spec_from_file_location("nginx_render", ROOT / "deploy/nginx/render.py")
nginx_render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nginx_render)


def find_nginx() -> str | None:
    """nginx on PATH, or where Debian installs it (/usr/sbin is not on every user's PATH)."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None)


class Gateway:
    """nginx proxying the API under /grad (`url`) to `upstreams` (host:port); started by the constructor, which
    leaves nothing running if it fails. `prefix_dir` holds nginx.conf and logs/ (a temporary one, removed on
    stop(), when not given); `settings` are render()'s (rate, burst, read_timeout, ...)."""

    def __init__(self, prefix_dir: Path | None, upstreams: list[str], binary: str | None = None, **settings) -> None:
        binary = binary or find_nginx()
        if binary is None:
            raise RuntimeError("nginx is not installed (Debian package: nginx)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/grad"
        self._own_dir = prefix_dir is None
        self.prefix = Path(tempfile.mkdtemp(prefix="gradsvc-nginx-")) if prefix_dir is None else prefix_dir
        text = nginx_render.render(listen=f"127.0.0.1:{self.port}", upstreams=upstreams, **settings)
        conf = nginx_render.write_prefix(self.prefix, text)
        self.proc = subprocess.Popen(
            [binary, "-p", f"{self.prefix}/", "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        STARTED_GROUPS.add(self.proc.pid)  # the test suite checks at its end that none is still alive
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:  # nginx's own liveness: does not depend on a replica answering
                if requests.get(f"http://127.0.0.1:{self.port}/_gateway/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finishes the requests it has
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._own_dir:
            shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
