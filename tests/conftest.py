"""Shared fixtures: an app from the factory, its test client, and a real gunicorn server on a free port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from service import create_app
from service.config import Config

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL_NEURON = {"model": {"kind": "neuron", "loss": "bce"}, "inputs": {"x": 6.7, "y": 0.0, "w": 1.0, "b": 0.0}}


class TestConfig(Config):
    __test__ = False  # a config, not a test class
    TESTING = True
    LOG_LEVEL = "WARNING"  # the in-process app's access log would drown pytest's output


@pytest.fixture(scope="session")
def app():
    return create_app(TestConfig)


@pytest.fixture()
def client(app):
    return app.test_client()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GunicornServer:
    """gunicorn with the repo's deploy config, in its own process group; `url` is its base URL."""

    def __init__(self, workers: int = 2, env: dict | None = None, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "WEB_CONCURRENCY": str(workers),
                    "LOG_LEVEL": "WARNING", **(env or {})}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> GunicornServer:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "service.wsgi:app"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            if self.log_path:
                log.close()  # the child holds its own copy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}")
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:  # not listening yet, or a worker still importing torch
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gunicorn not ready within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """One real gunicorn (2 sync workers, deploy/gunicorn.conf.py) for the whole session."""
    server = GunicornServer(log_path=tmp_path_factory.mktemp("gunicorn") / "server.log").start()
    yield server
    server.stop()
