"""Through the real gateway: Debian's nginx with the repo's config in front of real gunicorn replicas.

Covers the prefix, request ids, the prefixed OpenAPI server URL, the gateway's own problem+json errors
(404, 413, 429), and two faults under bounded load: kill -9 of a worker, SIGTERM to a master.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests

from bench import gateway as bench_gateway
from conftest import TUTORIAL_NEURON, GunicornServer, json_log_lines, require_binary, send_half_a_request

pytestmark = [pytest.mark.gateway, pytest.mark.live]
PROBLEM = "application/problem+json"


class Gateway(bench_gateway.Gateway):
    """The repo's nginx gateway (bench/gateway.py) as the tests need it: without nginx on PATH the test skips,
    naming the Debian package (a failure under CI)."""

    def __init__(self, prefix_dir: Path, upstreams: list[str], **settings) -> None:
        super().__init__(prefix_dir, upstreams, binary=require_binary("nginx", package="nginx"), **settings)


def replica(tmp_path: Path, name: str) -> GunicornServer:
    """A replica, not started yet: `with` (or ExitStack.enter_context) starts it and always stops it."""
    env = {"TRUSTED_PROXY_HOPS": "1", "GUNICORN_LOG_LEVEL": "info", "LOG_LEVEL": "INFO"}
    return GunicornServer(workers=2, env=env, log_path=tmp_path / f"{name}.log")


def upstream(server: GunicornServer) -> str:
    return server.url.removeprefix("http://")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two gunicorn replicas of 2 sync workers each, trusting one proxy hop."""
    require_binary("nginx", package="nginx")  # before starting replicas nobody could use
    tmp = tmp_path_factory.mktemp("replicas")
    with ExitStack() as stack:  # a replica that started is stopped even if the next one fails to start
        yield [stack.enter_context(replica(tmp, name)) for name in ("a", "b")]


@pytest.fixture(scope="module")
def gateway(replicas, tmp_path_factory):
    """The gateway with a generous rate limit."""
    with Gateway(
        tmp_path_factory.mktemp("gw") / "nginx", [upstream(s) for s in replicas], rate="1000r/s", burst=1000
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
def strict_gateway(replicas, tmp_path_factory):
    """A second gateway with a tiny rate limit and a 64 KiB body limit."""
    with Gateway(
        tmp_path_factory.mktemp("strict") / "nginx",
        [upstream(s) for s in replicas],
        rate="2r/s",
        burst=2,
        max_body_bytes=65536,
    ) as gw:
        yield gw


def test_tutorial_through_the_prefix(gateway):
    r = requests.post(gateway.url + "/v1/gradients", json=TUTORIAL_NEURON, timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert [round(body["loss"], 4), round(body["gradients"]["w"], 4), round(body["gradients"]["b"], 4)] == [
        6.7012,
        6.6918,
        0.9988,
    ]


def test_request_id_kept_or_generated(gateway):
    kept = requests.post(
        gateway.url + "/v1/gradients", json=TUTORIAL_NEURON, headers={"X-Request-ID": "grader-42"}, timeout=10
    )
    assert kept.headers["X-Request-ID"] == "grader-42"
    made = requests.get(gateway.url + "/healthz", timeout=10).headers["X-Request-ID"]
    assert len(made) == 32 and int(made, 16) >= 0
    problem = requests.post(
        gateway.url + "/v1/gradients",
        json={"model": {"kind": "nope"}},
        headers={"X-Request-ID": "grader-43"},
        timeout=10,
    )
    assert problem.status_code == 400 and problem.json()["request_id"] == "grader-43"
    assert problem.headers["X-Request-ID"] == "grader-43"


def test_openapi_names_the_prefixed_server(gateway):
    doc = requests.get(gateway.url + "/openapi.json", timeout=10).json()
    assert doc["servers"] == [{"url": "/grad"}]


@pytest.mark.parametrize("path", ["/metrics", "/../metrics"])
def test_metrics_are_not_published_through_the_gateway(gateway, path):
    r = requests.get(gateway.url + path, timeout=10)
    assert r.status_code == 404 and r.headers["Content-Type"] == PROBLEM
    if path == "/metrics":  # not "the API lives under /grad/": the path asked is under it
        assert r.json()["detail"].startswith("Metrics are not published through the gateway"), r.json()
        assert r.json()["instance"] == "/grad/metrics" and r.json()["request_id"] == r.headers["X-Request-ID"]


def test_outside_the_prefix_is_a_problem_404(gateway):
    r = requests.get(gateway.url.removesuffix("/grad") + "/v1/models", timeout=10)
    assert r.status_code == 404 and r.headers["Content-Type"] == PROBLEM and r.json()["status"] == 404


def test_the_bare_prefix_redirects_to_the_playground(gateway):
    """`/grad` (no slash) was a problem 404; the page and its relative URLs live at `/grad/`."""
    r = requests.get(gateway.url, timeout=10, allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"] == "/grad/"
    page = requests.get(gateway.url, timeout=10)
    assert page.status_code == 200 and page.url.endswith("/grad/") and "text/html" in page.headers["Content-Type"]


def test_gateway_413_is_problem_json(strict_gateway):
    r = requests.post(
        strict_gateway.url + "/v1/gradients",
        data=b"[" + b"0," * 50_000 + b"0]",
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 413 and r.headers["Content-Type"] == PROBLEM
    assert r.json()["limit"] == {"name": "max_body_bytes", "value": 65536}
    assert r.json()["hint"].startswith("send a smaller body")  # as the app's own 413s: every 413 says what to do


@pytest.mark.parametrize(
    ("headers", "path", "status", "title"),
    [
        ({}, "/v1/models?q=" + "a" * 9000, 414, "URI Too Long"),
        ({"X-Big": "a" * 9000}, "/v1/models", 431, "Request Header Fields Too Large"),
    ],
)
def test_gateway_414_and_431_are_plain_http_problems(gateway, headers, path, status, title):
    """Not /problems/limit-exceeded, which is the app's 413 with a `limit` member: an HTTP status of its own, as
    gunicorn's own 414 and 431 (deploy/gunicorn.conf.py) and the app's 404 and 405 are: `about:blank`."""
    r = requests.get(gateway.url + path, headers={**headers, "X-Request-ID": "long-1"}, timeout=10)
    assert (r.status_code, r.headers["Content-Type"]) == (status, PROBLEM)
    problem = r.json()
    assert (problem["type"], problem["title"], problem["status"]) == ("about:blank", title, status)
    assert "limit" not in problem and problem["request_id"] == r.headers["X-Request-ID"]


def test_a_stalled_body_is_cut_off_by_the_gateway_without_an_answer(replicas, tmp_path, monkeypatch):
    """nginx ends a request whose body stalls for client_body_timeout (1 s here, not 30) by resetting the
    connection (reset_timedout_connection), never with a page: on a timeout it sends no 408 at all, so its
    /_problem/408 (the app's body-timeout type, test_deploy_static.py) is there only for an nginx that would."""
    render = bench_gateway.nginx_render.render
    assert "client_body_timeout 30s;" in render()

    def quick(**settings):
        return render(**settings).replace("client_body_timeout 30s;", "client_body_timeout 1s;")

    monkeypatch.setattr(bench_gateway.nginx_render, "render", quick)
    head = (
        b"POST /grad/v1/gradients HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\nX-Request-ID: stalled-1\r\n\r\n{"
    )
    with Gateway(tmp_path / "nginx", [upstream(s) for s in replicas]) as gw:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(head)  # and nothing more
            start, answer = time.monotonic(), b""
            try:
                while time.monotonic() - start < 10 and (chunk := sock.recv(65536)):
                    answer += chunk
            except ConnectionResetError:
                pass
            waited = time.monotonic() - start
    assert answer == b"" and waited < 9  # closed after about a second, without a byte (and never the app's 408)


def test_gateway_429_is_problem_json(strict_gateway):
    time.sleep(1.5)  # let the bucket refill after other tests
    statuses, bodies = [], []
    with requests.Session() as s:
        for _ in range(12):
            r = s.get(strict_gateway.url + "/v1/models", timeout=10)
            statuses.append(r.status_code)
            if r.status_code == 429:
                bodies.append(r)
    assert 200 in statuses and 429 in statuses
    assert all(
        b.headers["Content-Type"] == PROBLEM and b.json()["status"] == 429 and b.headers["Retry-After"] for b in bodies
    )


SLOW_JOB = {  # ~tens of ms of real work, so requests are in flight when the fault hits
    "model": {"kind": "expression", "formula": "sum(sin(x)**2 * exp(-x))"},
    "inputs": {"x": [i / 50 for i in range(200)]},
    "include": ["numeric"],
    "dtype": "float64",
}


# a response that stopped after its headers: nginx had forwarded them when the worker writing the body died, so
# it could not retry it (the gradsvc client does: tests/test_client.py)
CUT_OFF = "cut off mid-body"


def load(url: str, fault, threads: int = 4, max_requests: int = 160, max_seconds: float = 40) -> list:
    """Bounded load from `threads` clients; `fault()` runs once the load is under way."""
    results: list = []
    lock = threading.Lock()
    stop_at = time.monotonic() + max_seconds

    def client():
        with requests.Session() as session:
            while time.monotonic() < stop_at:
                with lock:
                    if len(results) >= max_requests:
                        return
                try:
                    r = session.post(url + "/v1/gradients", json=SLOW_JOB, timeout=30)
                    outcome = r.status_code if r.status_code != 200 or "gradients" in r.json() else "bad body"
                except requests.exceptions.ChunkedEncodingError:
                    outcome = CUT_OFF
                except requests.RequestException as err:
                    outcome = repr(err)
                with lock:
                    results.append(outcome)

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for t in pool:
        t.start()
    while len(results) < 20 and time.monotonic() < stop_at:
        time.sleep(0.05)
    fault()
    for t in pool:
        t.join(max_seconds + 5)
    return results


def workers_of(server: GunicornServer) -> list[int]:
    master = server.proc.pid
    return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def replicas_behind_a_gateway(stack: ExitStack, tmp_path: Path) -> tuple[GunicornServer, GunicornServer, Gateway]:
    """Two fresh replicas and a gateway, each stopped by `stack` even if a later one fails to start."""
    require_binary("nginx", package="nginx")
    a, b = (stack.enter_context(replica(tmp_path, name)) for name in ("a", "b"))
    gw = stack.enter_context(Gateway(tmp_path / "nginx", [upstream(a), upstream(b)], rate="1000r/s", burst=1000))
    return a, b, gw


def test_kill_9_of_a_worker_cuts_off_at_most_the_response_being_written(tmp_path):
    with ExitStack() as stack:
        a, _, gw = replicas_behind_a_gateway(stack, tmp_path)
        victim = workers_of(a)[0]
        results = load(gw.url, lambda: os.kill(victim, signal.SIGKILL))
        assert len(results) >= 60
        # killed computing: nginx retries the request on the other replica. Killed between writing the headers
        # and the body (a window a loaded machine widens to a scheduler slice): that one response is cut off,
        # which the client sees (Content-Length) and may retry. Never a 5xx, a refusal or a wrong body.
        lost = [r for r in results if r != 200]
        assert lost in ([], [CUT_OFF]), lost[:5]
        deadline = time.monotonic() + 20
        while (len(workers_of(a)) < 2 or victim in workers_of(a)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert victim not in workers_of(a) and len(workers_of(a)) == 2  # gunicorn replaced it


IN_FLIGHT_ID = "in-flight-at-sigterm"


def test_sigterm_to_a_master_completes_in_flight_requests(tmp_path):
    with ExitStack() as stack:
        a, _, gw = replicas_behind_a_gateway(stack, tmp_path)
        body = json.dumps(TUTORIAL_NEURON).encode()
        conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
        stack.callback(conn.close)

        def term_during_a_request():
            """SIGTERM while a request is surely in flight on `a` (the gateway's load alone may leave a moment
            with none there): one whose body is half sent, once a worker has accepted it."""
            deadline = time.monotonic() + 20
            send_half_a_request(conn, a.port, body, IN_FLIGHT_ID, deadline)
            a.proc.send_signal(signal.SIGTERM)
            # the rest once the master has acted on the signal (it logs it, then signals its workers)
            log = tmp_path / "a.log"
            while "Handling signal: term" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.2)
            conn.send(body[len(body) // 2 :])

        results = load(gw.url, term_during_a_request)
        assert len(results) >= 60
        assert results == [200] * len(results), [r for r in results if r != 200][:5]
        response = conn.getresponse()
        assert response.status == 200 and round(json.loads(response.read())["loss"], 4) == 6.7012
        assert a.proc.wait(40) == 0  # a graceful exit, within graceful_timeout
        log = (tmp_path / "a.log").read_text()
        assert "Handling signal: term" in log and "Shutting down: Master" in log
        after_term = log.split("Handling signal: term", 1)[1]
        answered = json_log_lines(after_term)
        assert any(
            line.get("request_id") == IN_FLIGHT_ID and line.get("status") == 200 for line in answered
        )  # accepted before SIGTERM, answered after the master acted on it
