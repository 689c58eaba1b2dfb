"""The repo's nginx gateway (deploy/nginx/render.py) in front of a benchmark server, as deployed."""

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


class Gateway:
    """nginx in the foreground on a free 127.0.0.1 port, proxying `prefix` (/grad) to `upstream` (host:port)."""

    def __init__(self, upstream: str, **settings) -> None:
        self.binary = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstream = upstream
        self.settings = settings
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    def start(self) -> Gateway:
        if self.binary is None:
            raise RuntimeError("nginx is not installed (Debian package: nginx)")
        self.dir = Path(tempfile.mkdtemp(prefix="gradsvc-bench-nginx-"))
        text = nginx_render.render(listen=f"127.0.0.1:{self.port}", upstreams=[self.upstream], **self.settings)
        conf = nginx_render.write_prefix(self.dir, text)
        self.proc = subprocess.Popen(
            [self.binary, "-p", f"{self.dir}/", "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        STARTED_GROUPS.add(self.proc.pid)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:  # nginx's own liveness, independent of the replica
                    if requests.get(self.url + "/_gateway/healthz", timeout=1).status_code == 200:
                        return self
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("nginx did not start")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finishes the requests it has
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
