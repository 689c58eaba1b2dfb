"""The hard deadline: every request ends by MAX_WALL_SECONDS as a 503 problem, and the worker lives on.

Live tests run gunicorn with MAX_WALL_SECONDS=2 and a cost budget raised far above the default, so the
bodies below really run into the deadline instead of being refused up front (tests/test_cost.py covers that).
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
import torch
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, TUTORIAL_NEURON, GunicornServer, json_log_lines
from service.engine.deadline import DeadlineInterrupt, check_request, interruptible, request_deadline
from service.engine.limits import Deadline

WALL = 2.0
SLACK = 1.0  # the bound: MAX_WALL_SECONDS + 1 s
PROBLEM = "application/problem+json"


# --- in-process: the mechanism -------------------------------------------------------------------------


def test_timer_interrupts_a_long_torch_loop_promptly():
    x = torch.rand(256, 256)
    start = time.monotonic()
    with pytest.raises(DeadlineInterrupt):
        with request_deadline(0.3):
            for _ in range(10**7):  # minutes of matmuls without the interrupt
                x = torch.tanh(x @ x)
    assert time.monotonic() - start < 0.3 + SLACK


def test_timer_interrupts_a_double_backward_loop():
    x = torch.rand(2000, requires_grad=True)
    start = time.monotonic()
    with pytest.raises(DeadlineInterrupt):
        with request_deadline(0.3):
            for _ in range(10**6):
                (g,) = torch.autograd.grad(torch.sin(torch.cos(x)).sum(), x, create_graph=True)
                torch.autograd.grad(g.sum(), x)
    assert time.monotonic() - start < 0.3 + SLACK


def test_every_deadline_inside_a_request_ends_with_it():
    """A batch job's or a check point's own Deadline cannot outlive the request's."""
    with pytest.raises(DeadlineInterrupt):
        with request_deadline(0.05):
            job = Deadline(60)  # as compute() makes one per job
            time.sleep(0.1)
            job.check()
    Deadline(60).check()  # outside a request only its own budget counts


def test_outside_the_main_thread_the_checks_still_end_the_work():
    """No timer signal in a thread (a threaded dev server): Deadline.check() raises at the request's end."""
    caught: list[BaseException] = []

    def work():
        try:
            with request_deadline(0.05):
                time.sleep(0.1)
                Deadline(60).check()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            caught.append(err)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(5)
    assert len(caught) == 1 and isinstance(caught[0], DeadlineInterrupt)


def test_the_timer_is_disarmed_after_the_request():
    with request_deadline(0.2):
        pass
    time.sleep(0.3)  # a still-armed timer would raise here


def test_an_alarm_between_requests_is_ignored():
    """The handler stays installed between requests (set once per process); an alarm with no request running
    must neither raise nor fall back to SIGALRM's default action, which would kill the worker."""
    import signal

    with request_deadline(5):
        pass
    handler = signal.getsignal(signal.SIGALRM)
    signal.raise_signal(signal.SIGALRM)  # a Python handler runs before raise_signal returns
    with request_deadline(5):
        pass
    assert signal.getsignal(signal.SIGALRM) is handler  # not set and restored around each request


def test_an_alarm_before_the_interruptible_stretch_is_raised_as_it_opens():
    """The HTTP layer's deadline: the timer is held off Flask's context push and raised as the dispatch begins."""
    entered = False
    with pytest.raises(DeadlineInterrupt):
        with request_deadline(0.05, anywhere=False):
            time.sleep(0.1)  # the alarm fires here, and nothing is raised
            with interruptible():
                entered = True
    assert not entered


def test_an_alarm_after_the_interruptible_stretch_is_ignored():
    """After the dispatch the answer is built: neither the timer nor the cooperative check ends the request."""
    with request_deadline(0.05, anywhere=False):
        with interruptible():
            pass
        time.sleep(0.1)  # the alarm fires here
        check_request()


def test_in_process_client_answers_the_deadline_as_a_problem(client, app, monkeypatch):
    """The test client runs in the main thread: the same 503 as under gunicorn, then normal service."""
    monkeypatch.setattr(app.wsgi_app.app, "seconds", 0.3, raising=True)  # MemoryMiddleware -> DeadlineMiddleware
    body = {"model": {"kind": "expression", "formula": "sum(x)"}, "inputs": {"x": [1.0] * 10}, "include": ["numeric"]}
    original = torch.Tensor.sum

    def slow_sum(*args, **kwargs):
        time.sleep(0.05)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "sum", slow_sum)  # numeric: 20 forward passes of 50 ms
    response = client.post("/v1/gradients", json=body)
    monkeypatch.undo()
    assert response.status_code == 503 and response.mimetype == PROBLEM
    assert response.json["type"] == "/problems/deadline-exceeded" and response.headers["Retry-After"]
    assert client.post("/v1/gradients", json=TUTORIAL_NEURON).status_code == 200


def test_a_deadline_while_the_answer_is_encoded_is_an_ordinary_503(client, app, monkeypatch, capsys):
    """Encoding a large answer (~0.2 s for 1 M floats) runs after the view: a deadline there was answered by the
    middleware alone, uncounted, unlogged and without a request id (found by an audit)."""
    from prometheus_client import REGISTRY

    from service import jsonio

    monkeypatch.setattr(app.wsgi_app.app, "seconds", 0.3, raising=True)
    encode = jsonio.dumps_pieces

    def slow_answer(obj):
        if type(obj) is jsonio.Encoded:  # the view's answer, not the problem body
            time.sleep(0.6)
        return encode(obj)

    def count():
        labels = {"route": "/v1/gradients", "method": "POST", "status": "503"}
        return REGISTRY.get_sample_value("gradsvc_http_requests_total", labels) or 0.0

    monkeypatch.setattr(jsonio, "dumps_pieces", slow_answer)
    before = count()
    response = client.post("/v1/gradients", json=TUTORIAL_NEURON, headers={"X-Request-ID": "slow-encode"})
    monkeypatch.undo()
    assert response.status_code == 503 and response.json["type"] == "/problems/deadline-exceeded"
    assert response.headers["X-Request-ID"] == response.json["request_id"] == "slow-encode"
    assert response.headers["Retry-After"] and count() == before + 1
    assert client.post("/v1/gradients", json=TUTORIAL_NEURON).status_code == 200


def test_gunicorn_timeout_must_leave_room_for_the_deadline():
    def conf(**env):
        code = "import runpy; print(runpy.run_path('deploy/gunicorn.conf.py')['timeout'])"
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": "", **env},
            timeout=60,
        )

    default = conf(MAX_WALL_SECONDS="10")
    assert default.returncode == 0 and int(default.stdout.split()[-1]) >= 3 * 10
    assert int(conf(MAX_WALL_SECONDS="40").stdout.split()[-1]) >= 120
    refused = conf(MAX_WALL_SECONDS="30", GUNICORN_TIMEOUT="35")
    assert refused.returncode != 0 and "MAX_WALL_SECONDS" in refused.stderr


# --- live: hostile bodies against gunicorn --------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_server():
    """One worker (so the same process must survive every body), a 2 s deadline, a huge cost budget."""
    with GunicornServer(workers=1, env={"MAX_WALL_SECONDS": str(WALL), "MAX_REQUEST_BYTES": str(2**36)}) as server:
        server.wait_workers(1)
        yield server


def chain(inner: str, depth: int, start: int) -> str:
    for i in range(depth):
        inner = f"{('sin', 'cos')[(i + start) % 2]}({inner})"
    return inner


def post(server, path: str, body: dict) -> tuple[requests.Response, float]:
    start = time.monotonic()
    response = requests.post(server.url + path, json=body, timeout=60)
    return response, time.monotonic() - start


def assert_deadline_problem(response: requests.Response, elapsed: float) -> None:
    assert elapsed < WALL + SLACK, f"took {elapsed:.2f} s"
    assert response.status_code == 503, response.text[:300]
    assert response.headers["Content-Type"] == PROBLEM
    assert response.headers["Retry-After"].isdigit()
    problem = response.json()
    assert problem["type"] == "/problems/deadline-exceeded"
    assert problem["limit"] == {"name": "max_wall_seconds", "value": WALL}


def assert_same_worker_serves(server, pids: list[int]) -> None:
    response = requests.post(server.url + "/v1/gradients", json=TUTORIAL_NEURON, timeout=10)
    assert response.status_code == 200 and response.json()["loss"] == pytest.approx(6.7012, abs=1e-4)
    assert server.worker_pids() == pids, "the worker was killed (gunicorn's timeout?) instead of answering"


HESSIAN = {
    "model": {
        "kind": "expression",
        "formula": "sum(" + " + ".join(chain("x*y" if k % 2 else "x+y", 11, k) for k in range(4)) + ")",
    },
    "inputs": {"x": [[0.01 * i] for i in range(100)], "y": [[0.001 * j for j in range(3000)]]},
    "wrt": ["x"],
    "include": ["hessian"],
}
# ~400 scalar ops per job, 1000 jobs: each job is quick, the batch is not
JOB = {
    "model": {
        "kind": "expression",
        "formula": "sum(" + " + ".join(f"sin(x * {i} + y) * cos(y - {i})" for i in range(28)) + ")",
    },
    "inputs": {"x": [0.5] * 50, "y": 0.25},
    "include": ["intermediates"],
}
LONG_CHECK = {
    "model": {"kind": "expression", "formula": "sum(" + chain("x", 30, 0) + " * " + chain("x", 30, 1) + ")"},
    "inputs": {"x": [0.5] * 40_000},
    "domain": {"x": [-1.0, 1.0]},
    "n_points": 50,
    "submission": {"gradient_formulas": {"x": chain("x", 40, 1)}},
}

# 50 problems, each a tenth of LONG_CHECK's work (a small body): the deadline covers them together
LONG_GRADE = {
    "problem": {
        "problems": [
            {
                "key": f"p{i}",
                **{k: LONG_CHECK[k] for k in ("model", "domain", "n_points")},
                "inputs": {"x": [0.5] * 4000},
                "checks": {"gradient_formulas.x": {}},
            }
            for i in range(50)
        ]
    },
    "answers": {f"p{i}": LONG_CHECK["submission"] for i in range(50)},
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/gradients", HESSIAN),
        ("/v1/batch", {"jobs": [JOB] * 1000}),
        ("/v1/check", LONG_CHECK),
        ("/v1/grade?format=prairielearn", LONG_GRADE),
    ],
    ids=["hessian-of-nested-chains", "long-batch", "long-check", "long-problem-file"],
)
def test_long_work_ends_as_a_503_problem_and_the_worker_lives(slow_server, path, body):
    pids = slow_server.worker_pids()
    response, elapsed = post(slow_server, path, body)
    assert_deadline_problem(response, elapsed)
    assert_same_worker_serves(slow_server, pids)


@pytest.mark.slow
def test_slow_body_upload_ends_as_a_408_problem(slow_server):
    """A client trickling its body: the deadline covers reading it, and the answer (the client's delay, 408, not a
    computation's 503) arrives on the connection."""
    pids = slow_server.worker_pids()
    head = (
        f"POST /v1/gradients HTTP/1.1\r\nHost: 127.0.0.1:{slow_server.port}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    start = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=10) as sock:
        sock.sendall(head + b'{"model": {"kind": "neuron"}, "inputs": {"x": [')
        while time.monotonic() - start < WALL + 5:
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            elif not answer:
                sock.sendall(b"1, ")  # a few bytes every 0.2 s: never done within the deadline
    elapsed = time.monotonic() - start
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), answer[:300]
    assert elapsed < WALL + SLACK + 0.5  # + the last 0.2 s poll and the close
    assert b"content-type: application/problem+json" in headers.lower()
    assert b"/problems/body-timeout" in payload
    assert_same_worker_serves(slow_server, pids)


# --- live: the deadline firing outside a view ---------------------------------------------------------


def stalling_server(tmp_path_factory, wall_seconds: str, name: str):
    """The service plus hooks that stall on request (tests/stalling_hooks_app.py), one worker, access lines on."""
    server = GunicornServer(
        workers=1,
        env={"MAX_WALL_SECONDS": wall_seconds, "LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT / "tests")},
        log_path=tmp_path_factory.mktemp(name) / "server.log",
    )
    server.target = "stalling_hooks_app:app"
    with server:
        server.wait_workers(1)
        yield server


@pytest.fixture(scope="module")
def stalling_hooks_server(tmp_path_factory):
    """The stalling app with a 1 s deadline."""
    yield from stalling_server(tmp_path_factory, "1", "stalling")


def requests_counted(server) -> dict[tuple[str, str, str], float]:
    """gradsvc_http_requests_total by (route, method, status), read from the server's /metrics."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    return {
        (sample.labels["route"], sample.labels["method"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "gradsvc_http_requests_total"
    }


@pytest.mark.parametrize("given_id", [True, False])
@pytest.mark.parametrize(("where", "method"), [("before", "POST"), ("after", "POST"), ("before", "DELETE")])
def test_a_deadline_outside_a_view_keeps_the_request_id_and_its_access_line(
    stalling_hooks_server, where, method, given_id
):
    """A hook that runs past the deadline is answered by the middleware: the 503 carried no request id unless the
    client sent one, and had no access line (an audit: one /v1/check in ~1000 at MAX_WALL_SECONDS=0.05). Now
    it carries the id the request was given, in the header and the body, and one access line says so; /metrics
    counts it once (a second audit: past the access line it was counted as a 200 and a 503), under its route
    (a wrong method's too, as a 405 is labelled)."""
    server = stalling_hooks_server
    given_id = f"stall-{where}-{method}" if given_id else None
    headers = {"X-Stall": where, **({"X-Request-ID": given_id} if given_id else {})}
    counted = requests_counted(server)
    start = time.monotonic()
    response = requests.request(method, server.url + "/v1/gradients", json=TUTORIAL_NEURON, headers=headers, timeout=60)
    elapsed = time.monotonic() - start
    assert elapsed < 1 + SLACK, f"took {elapsed:.2f} s"
    assert response.status_code == 503 and response.headers["Content-Type"] == PROBLEM
    problem = response.json()
    assert problem["type"] == "/problems/deadline-exceeded"
    rid = response.headers["X-Request-ID"]
    assert problem["request_id"] == rid and (rid == given_id if given_id else len(rid) == 32)
    lines = [line for line in json_log_lines(server.log_path.read_text()) if line.get("request_id") == rid]
    access = [line for line in lines if line["logger"] == "gradsvc.access"]
    assert len(access) == 1, lines
    # before the view: the middleware's line, the 503; after the access line: that line stays (the status the
    # app meant to send), and the middleware's warning, under the same id, says the 503 replaced it
    assert access[0]["status"] == (503 if where == "before" else 200)
    assert access[0]["route"] == "/v1/gradients" and access[0]["path"] == "/v1/gradients"
    after = requests_counted(server)
    grown = {key: after[key] - counted.get(key, 0.0) for key in after if after[key] != counted.get(key, 0.0)}
    grown.pop(("/metrics", "GET", "200"), None)  # the first read of /metrics
    assert grown == {("/v1/gradients", method, str(access[0]["status"])): 1.0}
    assert any("outside a view" in line["message"] for line in lines), lines
    assert_same_worker_serves(server, server.worker_pids())


# --- live: what goes on the wire when the deadline fires near the end of a request ------------------------------

TUTORIAL_BODY = json.dumps(TUTORIAL_NEURON).encode()


def raw_post(server, headers: dict[str, str], timeout: float = 30) -> tuple[int, list[tuple[str, str]], bytes]:
    """POST the tutorial neuron over a bare socket and read until the server closes: (status, headers, body) as
    they came on the wire, so a second set of headers cannot hide behind a client library."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request = (
        f"POST /v1/gradients HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n{head}"
        f"Content-Length: {len(TUTORIAL_BODY)}\r\n\r\n"
    ).encode()
    data = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request + TUTORIAL_BODY)
        stop_at = time.monotonic() + timeout
        while time.monotonic() < stop_at:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin1").split("\r\n")
    fields = [(name.strip().lower(), value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    return int(status_line.split()[1]), fields, payload


def assert_one_response(status: int, fields: list[tuple[str, str]], payload: bytes) -> dict:
    """One well-formed HTTP response: each header once (a second start_response appended a second Content-Length
    and Content-Type, and clients read a truncated body), the body as long as its Content-Length, JSON."""
    names = [name for name, _ in fields]
    assert len(names) == len(set(names)), fields
    headers = dict(fields)
    assert len(payload) == int(headers["content-length"]), (status, fields)
    body = json.loads(payload)
    if status == 200:
        assert headers["content-type"] == "application/json" and round(body["loss"], 4) == 6.7012
    else:
        assert status == 503 and headers["content-type"] == PROBLEM, (status, fields, payload[:300])
        assert body["type"] == "/problems/deadline-exceeded" and body["request_id"] == headers["x-request-id"]
    return headers


def post_stalled(server, where: str, seconds: float, rid: str) -> int:
    """POST a request the app stalls at `where` for `seconds` (tests/stalling_hooks_app.py), carrying `rid`: one
    whole response, with that id; its status."""
    status, fields, payload = raw_post(server, {"X-Stall": where, "X-Stall-Seconds": str(seconds), "X-Request-ID": rid})
    assert assert_one_response(status, fields, payload)["x-request-id"] == rid
    return status


def log_of(server, rid: str) -> list[dict]:
    return [line for line in json_log_lines(server.log_path.read_text()) if line.get("request_id") == rid]


def test_a_deadline_after_start_response_leaves_the_answer_whole(stalling_hooks_server):
    """The app had called start_response when the deadline fired (here in a teardown function; in an audit while
    Flask sent the answer or popped its context): the middleware's 503 went out under the 200's headers, two
    Content-Lengths, and the client read a truncated body while the access line and the metrics said 200. Past
    the point where the answer is built, nothing interrupts the request: the 200 goes out whole."""
    server = stalling_hooks_server
    counted = requests_counted(server)
    rid = "stall-teardown"
    assert post_stalled(server, "teardown", 1.3, rid) == 200
    lines = log_of(server, rid)
    assert [line["status"] for line in lines if line["logger"] == "gradsvc.access"] == [200]
    assert not any("outside a view" in line["message"] for line in lines), lines
    after = requests_counted(server)
    assert after[("/v1/gradients", "POST", "200")] == counted.get(("/v1/gradients", "POST", "200"), 0.0) + 1


def test_a_deadline_while_flask_pushes_the_context_is_a_503_not_a_500(stalling_hooks_server):
    """The deadline fired inside Flask's context push (an audit, at MAX_WALL_SECONDS=0.0001): popping the half-pushed
    context raised LookupError, gunicorn answered a 500 with a traceback, and the app context stayed pushed. The
    alarm waits until the request's dispatch begins, which it then ends: the usual 503, id and access line."""
    server = stalling_hooks_server
    rid = "stall-push"
    assert post_stalled(server, "push", 1.3, rid) == 503
    lines = log_of(server, rid)
    assert [line["status"] for line in lines if line["logger"] == "gradsvc.access"] == [503]
    text = server.log_path.read_text()
    assert "Error handling request" not in text and "Traceback" not in text
    assert_same_worker_serves(server, server.worker_pids())


@pytest.fixture(scope="module")
def floor_deadline_server(tmp_path_factory):
    """The stalling app at the lowest deadline the service accepts, for requests that end right at it."""
    yield from stalling_server(tmp_path_factory, "0.1", "floor")


def test_requests_ending_around_the_deadline_are_each_one_whole_response(floor_deadline_server):
    """A stall of 70-130 ms at each place a request can be when a 0.1 s deadline fires (context push, before the
    view, after the access line, teardown after start_response): whichever side of the deadline it ends on, the
    client gets one well-formed 200 or 503 (an audit saw 2 corrupt answers in 75 requests straddling 10 ms), each
    request has one access line, and nothing is answered by gunicorn's 500."""
    server = floor_deadline_server
    stop_at = time.monotonic() + 60
    seen: dict[str, int] = {}
    for i, (where, ms) in enumerate(
        (w, ms) for ms in range(70, 131, 6) for w in ("push", "before", "after", "teardown")
    ):
        if time.monotonic() > stop_at:
            break
        rid = f"near-{where}-{ms}-{i}"
        status = post_stalled(server, where, ms / 1000, rid)
        seen[f"{where} {status}"] = seen.get(f"{where} {status}", 0) + 1
    text = server.log_path.read_text()
    assert "Error handling request" not in text and "Traceback" not in text
    access = [line["request_id"] for line in json_log_lines(text) if line["logger"] == "gradsvc.access"]
    near = [rid for rid in access if rid.startswith("near-")]
    assert len(near) == len(set(near)) == sum(seen.values()) >= 20, seen
    assert seen.get("teardown 200") and seen.get("before 503"), seen  # both sides of the deadline were reached
