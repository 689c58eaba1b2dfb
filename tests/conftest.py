"""Shared fixtures: an app from the factory, its test client, and a real gunicorn server on a free port."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.servers import ROOT, Server, free_port  # noqa: F401 - ROOT and free_port are re-exported for tests
from service import create_app
from service.config import Config

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


class GunicornServer(Server):
    """The service under deploy/gunicorn.conf.py on a free 127.0.0.1 port, in its own process group
    (bench.servers.Server, which the benchmark uses too); quiet logs unless a test asks for them."""

    def __init__(self, workers: int = 2, env: dict | None = None, log_path: Path | None = None) -> None:
        super().__init__("service", workers=workers, env={"LOG_LEVEL": "WARNING", **(env or {})})
        self.log_path = log_path


class ExternalServer:
    """A server started by someone else: GRADSVC_LIVE_URL, e.g. the container of scripts/image-test.sh."""

    def __init__(self, url: str) -> None:
        self.url, self.proc = url.rstrip("/"), None


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """One real gunicorn (2 sync workers, deploy/gunicorn.conf.py) for the whole session, or GRADSVC_LIVE_URL."""
    if os.environ.get("GRADSVC_LIVE_URL"):
        yield ExternalServer(os.environ["GRADSVC_LIVE_URL"])
        return
    server = GunicornServer(log_path=tmp_path_factory.mktemp("gunicorn") / "server.log").start()
    yield server
    server.stop()
