"""How workers leave (deploy/gunicorn.conf.py): recycled ones without Python's finalization and losing nothing
(worker_exit); a stop signal that arrives while they warm up is not lost (post_fork).

The finalization is seen through an atexit callback that a sitecustomize.py registers in the master before the
fork, so every worker inherits it: it writes exit-<pid> when, and only when, the process finalizes.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time

import pytest
import requests

from conftest import TUTORIAL_NEURON, GunicornServer, json_log_lines, send_half_a_request

pytestmark = [pytest.mark.live]
MAX_REQUESTS = 20
SENT = 50  # two recycles of the one worker

SITECUSTOMIZE = """
import atexit, os
atexit.register(lambda: open(os.path.join({markers!r}, f"exit-{{os.getpid()}}"), "w").close())
"""


def serve_through_recycles(tmp_path, **env) -> tuple[list[int], list[dict], set[int]]:
    """One worker recycled every MAX_REQUESTS requests: (statuses, the server's JSON log lines, pids that
    finalized)."""
    markers = tmp_path / "markers"
    markers.mkdir()
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE.format(markers=str(markers)))
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = {
        "PYTHONPATH": path,
        "GUNICORN_MAX_REQUESTS": str(MAX_REQUESTS),
        "GUNICORN_MAX_REQUESTS_JITTER": "0",
        "GUNICORN_LOG_LEVEL": "info",
        "LOG_LEVEL": "INFO",
        **env,
    }
    with GunicornServer(workers=1, env=env, log_path=tmp_path / "server.log") as server, requests.Session() as s:
        statuses = [
            s.post(
                server.url + "/v1/gradients", json=TUTORIAL_NEURON, headers={"X-Request-ID": f"r{i}"}, timeout=30
            ).status_code
            for i in range(SENT)
        ]
    lines = json_log_lines((tmp_path / "server.log").read_text())
    finalized = {int(p.name.removeprefix("exit-")) for p in markers.iterdir()}
    return statuses, lines, finalized


def recycled_pids(lines: list[dict]) -> list[int]:
    return [line["pid"] for line in lines if line["message"].startswith("Autorestarting worker")]


def test_a_recycled_worker_skips_finalization_and_loses_nothing(tmp_path):
    statuses, lines, finalized = serve_through_recycles(tmp_path)
    assert statuses == [200] * SENT
    recycled = recycled_pids(lines)
    assert len(recycled) == SENT // MAX_REQUESTS
    assert not finalized & set(recycled)  # left without finalization
    # every request's access line was written, each recycled worker's last one included: the logs were flushed
    answered = [line["request_id"] for line in lines if line.get("route") == "/v1/gradients"]
    assert sorted(answered) == sorted(f"r{i}" for i in range(SENT))
    assert not [line for line in lines if "exited with code" in line["message"]]  # the master saw status 0
    booted = [line["pid"] for line in lines if line["message"].startswith("Booting worker")]
    assert len(booted) == len(recycled) + 1 and set(recycled) < set(booted)  # each one replaced


def test_fast_exit_0_keeps_pythons_finalization(tmp_path):
    statuses, lines, finalized = serve_through_recycles(tmp_path, GUNICORN_FAST_EXIT="0")
    assert statuses == [200] * SENT
    recycled = recycled_pids(lines)
    assert len(recycled) == SENT // MAX_REQUESTS and set(recycled) <= finalized


def test_sigterm_while_workers_warm_up_stops_the_server_at_once(tmp_path):
    """Before gunicorn installs a worker's own handlers (after post_fork, where the warm-up runs), a SIGTERM
    used to be swallowed: the master then waited graceful_timeout and killed the workers."""
    log = tmp_path / "server.log"
    env = {"GUNICORN_LOG_LEVEL": "info", "GUNICORN_GRACEFUL_TIMEOUT": "120"}
    server = GunicornServer(workers=2, env=env, log_path=log)
    try:
        server.spawn()
        deadline = time.monotonic() + 60
        while log.read_text().count("Booting worker") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # into the warm-up (~0.15 s here): past the microseconds between that log line and post_fork's handlers
        time.sleep(0.03)
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = server.proc.wait(60)  # half the graceful_timeout the bug waited for
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM during the warm-up was lost: gunicorn still running 60 s later")
    finally:
        server.stop()
    lines = json_log_lines(log.read_text())
    booted = {line["pid"] for line in lines if line["message"].startswith("Booting worker")}
    exited = {line["pid"] for line in lines if line["message"].startswith("Worker exiting")}
    assert code == 0 and len(booted) == 2 and exited == booted  # each left on its own, none killed


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGINT, False), (signal.SIGQUIT, False), (signal.SIGINT, True)],
    ids=["SIGINT to the master", "SIGQUIT to the master", "Ctrl-C: SIGINT to every process"],
)
def test_every_stop_signal_lets_the_request_under_way_finish(tmp_path, signum, to_group):
    """SIGINT and SIGQUIT ended the worker at once, inside the request (gunicorn's handler calls sys.exit): the
    client got a 500 under a request id not its own, with a SystemExit traceback and no access line; only SIGTERM
    waited. `docker run` forwards Ctrl-C as SIGINT to the master, a terminal sends it to every process of
    `make run`. Now each lets the request finish (a 200 with its own id and access line) and the server exit 0."""
    log = tmp_path / "server.log"
    env = {"GUNICORN_LOG_LEVEL": "info", "LOG_LEVEL": "INFO"}
    body = json.dumps(TUTORIAL_NEURON).encode()
    rid = f"in-flight-at-{signum.name}"
    with GunicornServer(workers=1, env=env, log_path=log) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            deadline = time.monotonic() + 20
            send_half_a_request(conn, server.port, body, rid, deadline)
            if to_group:
                os.killpg(server.proc.pid, signum)
            else:
                server.proc.send_signal(signum)
            handled = f"Handling signal: {signum.name.removeprefix('SIG').lower()}"
            while handled not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.3)  # the master has signalled its worker by now
            conn.send(body[len(body) // 2 :])
            response = conn.getresponse()
            status, headers, answer = response.status, response.headers, response.read()
        finally:
            conn.close()
        code = server.proc.wait(40)  # within graceful_timeout
    assert status == 200, answer[:300]
    assert headers["X-Request-ID"] == rid and round(json.loads(answer)["loss"], 4) == 6.7012
    assert code == 0
    text = log.read_text()
    assert handled in text and "Traceback" not in text and "Error handling request" not in text
    access = [line for line in json_log_lines(text) if line.get("path") == "/v1/gradients"]
    assert [(line["request_id"], line["status"]) for line in access] == [(rid, 200)]
