"""Shared fixtures: an app from the factory, its test client, and a real gunicorn server on a free port.

Also the two rules every test here follows: a test that needs a system binary skips with the Debian package
to install (`require_binary`) unless GRADSVC_REQUIRE_ALL=1 (set by .ci/run) makes that a failure, and the
run fails if any process a test started is still alive when it ends (`pytest_sessionfinish`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from bench.servers import ROOT, STARTED_GROUPS, Server, free_port  # noqa: F401 - ROOT, free_port re-exported for tests
from service import create_app
from service.config import Config
from service.engine.values import NON_FINITE

REQUIRE_ALL = os.environ.get("GRADSVC_REQUIRE_ALL") == "1"

TUTORIAL_NEURON = {"model": {"kind": "neuron", "loss": "bce"}, "inputs": {"x": 6.7, "y": 0.0, "w": 1.0, "b": 0.0}}


def kind_walked_from_the_end(value) -> type | None:
    """The non-number a walk from the end meets first, an item at a time: the oracle values.last_non_number (which
    reads whole levels with C loops) is tested against."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif type(item) not in (int, float) and not (isinstance(item, str) and item in NON_FINITE):
            return type(item)
    return None


def json_log_lines(text: str) -> list[dict]:
    """The JSON lines of a server log (gunicorn's and the app's), skipping anything else written there."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def accepted(server_port: int, client: socket.socket) -> bool:
    """Whether a worker has accept()ed this connection: until then the kernel lists its server side in
    /proc/net/tcp with inode 0 (a socket in the listen queue has no file yet)."""
    client_port = client.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            return inode != "0"
    return False


def send_half_a_request(conn, server_port: int, body: bytes, request_id: str, deadline: float) -> None:
    """POST half of `body` to /v1/gradients on `conn` and wait (until `deadline`) for a worker to accept it: from
    then on a request is surely in flight, its worker inside it, reading."""
    conn.putrequest("POST", "/v1/gradients")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(body)))
    conn.putheader("X-Request-ID", request_id)
    conn.endheaders(body[: len(body) // 2])
    while not accepted(server_port, conn.sock) and time.monotonic() < deadline:
        time.sleep(0.005)


class TestConfig(Config):
    __test__ = False  # a config, not a test class
    TESTING = True
    LOG_LEVEL = "WARNING"  # the in-process app's access log would drown pytest's output


def balanced_sum(terms: list[str]) -> str:
    """The terms summed as a balanced tree: a long formula of few levels (x*1 ... x*125: 499 nodes, 887 chars)."""
    while len(terms) > 1:
        terms = [
            f"({a}+{b})" if b else a for a, b in zip(terms[::2], terms[1::2] + [""] * (len(terms) % 2), strict=True)
        ]
    return terms[0]


def openapi_validator(document: dict, schema: str):
    """A JSON Schema validator for one of the OpenAPI document's component schemas, its $refs resolved within
    the document (what a generated client checks a body against)."""
    import jsonschema  # schemathesis's dependency; only the tests that validate bodies need it

    reference = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    return jsonschema.Draft202012Validator(reference)


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
    try:
        yield server
    finally:
        server.stop()


# --- system binaries ---------------------------------------------------------------------------------


def require_binary(name: str, package: str) -> str:
    """The path of a system binary; without it the test skips naming the Debian package (CI: a failure)."""
    found = shutil.which(name)
    if found:
        return found
    reason = f"`{name}` not on PATH (Debian package: {package})"
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (GRADSVC_REQUIRE_ALL=1: CI runs every test)", pytrace=False)
    pytest.skip(reason)


# --- nothing left running ----------------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, command name) of every process on the machine, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, _, tail = (entry / "stat").read_text().rpartition(")")
            fields = tail.split()
            if fields[0] != "Z":  # a zombie has exited; only its parent's wait() is missing
                found[int(entry.name)] = (int(fields[1]), int(fields[2]), head.partition("(")[2])
        except (OSError, IndexError, ValueError):
            continue
    return found


def leftover_processes() -> dict[int, str]:
    """Processes the tests started that are still alive: descendants of pytest, and members of their groups."""
    procs = _processes()
    groups = STARTED_GROUPS  # every gunicorn and nginx the tests or the bench started leads its own group
    me = os.getpid()
    left = {}
    for pid, (_, pgid, name) in procs.items():
        ancestor, hops = procs.get(pid, (0,))[0], 0
        while ancestor not in (0, 1, me) and hops < 64:
            ancestor, hops = procs.get(ancestor, (0,))[0], hops + 1
        if pid != me and (ancestor == me or pgid in groups):
            left[pid] = name
    return left


@pytest.hookimpl(trylast=True)  # after pytest's own sessionfinish has torn down the session fixtures
def pytest_sessionfinish(session):
    left = leftover_processes()
    if not left:
        return
    listing = ", ".join(f"{pid} ({name})" for pid, name in sorted(left.items()))
    session.config.get_terminal_writer().line(
        f"\nERROR: processes started by the tests are still running: {listing}", red=True
    )
    for pid in left:  # report, then clean up, so the machine is not left with them either
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def python_steps(call) -> int:
    """Lines, calls and returns of Python code run by `call()` (sys.settrace): a count that grows with a value's
    items only when something walks them one Python step each."""
    steps = 0

    def trace(frame, event, arg):
        nonlocal steps
        steps += 1
        return trace

    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(None)
    return steps
