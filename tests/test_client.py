"""The gradsvc client and CLI against a real gunicorn: outputs, exit codes, and retries across a restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from conftest import ROOT, TUTORIAL_NEURON, GunicornServer, free_port
from gradsvc import Client, ClientError, RequestError, ServiceUnavailable
from gradsvc.cli import read_jobs

pytestmark = [pytest.mark.live]
CHECK = {
    "model": {"kind": "expression", "name": "square"},
    "inputs": {"x": 3.0},
    "submission": {"gradients": {"x": 6.0}},
}


def gradsvc(*args, url, timeout=60, **env):
    """Run the console script's code as a subprocess; returns (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "gradsvc", "--url", url, "--backoff", "0.05", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture()
def files(tmp_path):
    def write(name, obj):
        path = tmp_path / name
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return str(path)

    return write


def test_compute(live_server, files):
    code, out, _ = gradsvc("compute", files("spec.json", TUTORIAL_NEURON), url=live_server.url)
    assert code == 0 and round(json.loads(out)["gradients"]["w"], 4) == 6.6918


def test_check_exit_codes_and_gradescope_output(live_server, files):
    code, out, _ = gradsvc("check", files("ok.json", CHECK), "--format", "gradescope", url=live_server.url)
    assert code == 0 and json.loads(out)["tests"][0]["status"] == "passed"
    wrong = {**CHECK, "submission": {"gradients": {"x": 5.0}}}
    code, out, _ = gradsvc("check", files("wrong.json", wrong), url=live_server.url)
    assert code == 1 and json.loads(out)["score"] == 0
    code, out, _ = gradsvc("check", files("wrong.json", wrong), "--format", "prairielearn", url=live_server.url)
    assert code == 1 and json.loads(out)["score"] == 0.0


def test_batch_jsonl(live_server, files):
    jobs = "\n".join(json.dumps(j) for j in [TUTORIAL_NEURON, {"check": CHECK}, {"model": {"kind": "neuron"}}]) + "\n"
    code, out, _ = gradsvc("batch", files("jobs.jsonl", jobs), "--chunk-size", "2", url=live_server.url)
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and len(lines) == 3  # the third job is invalid: exit 1, its error in place
    assert "gradients" in lines[0] and lines[1]["passed"] is True and lines[2]["error"]["status"] == 400


def test_usage_and_input_errors_exit_2(live_server, files):
    assert gradsvc("check", files("bad.json", "{not json"), url=live_server.url)[0] == 2
    assert gradsvc("check", "/nonexistent/file.json", url=live_server.url)[0] == 2
    assert gradsvc("frobnicate", url=live_server.url)[0] == 2
    code, _, err = gradsvc("compute", files("invalid.json", {"model": {"kind": "neuron"}}), url=live_server.url)
    assert code == 2 and "inputs" in err


def test_unreachable_service_exits_3_after_bounded_retries():
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "gradsvc", "--url", url, "--retries", "2", "--backoff", "0.05", "batch", "-"],
        input=json.dumps(CHECK),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 3
    assert "unavailable after 3 attempt(s)" in proc.stderr  # 1 try + 2 retries, then it stops


class FakeResponse:
    def __init__(self, status, body=None, headers=None):
        self.status_code, self._body, self.headers, self.text = status, body or {}, headers or {}, json.dumps(body)

    def json(self):
        return self._body


class FakeSession:
    """Answers from a script: exceptions are raised, responses returned."""

    def __init__(self, script):
        self.script, self.calls = list(script), []

    def post(self, url, **kwargs):
        self.calls.append((url, kwargs))
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def test_client_retries_429_502_503_504_and_connection_errors_with_backoff():
    sleeps = []
    session = FakeSession(
        [
            requests.ConnectionError("refused"),
            FakeResponse(503, headers={"Retry-After": "1"}),
            FakeResponse(429, headers={"Retry-After": "1"}),  # the gateway's limits: retry after it says
            FakeResponse(502),
            FakeResponse(504),
            FakeResponse(200, {"ok": True}),
        ]
    )
    client = Client(
        "http://svc", api_key="k", retries=5, backoff=0.5, max_backoff=3, session=session, sleep=sleeps.append
    )
    assert client.compute({}) == {"ok": True}
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]  # doubled, Retry-After respected, capped
    assert session.calls[0][1]["headers"]["Authorization"] == "Bearer k"
    assert session.calls[0][1]["timeout"] == 30.0


def test_client_gives_up_and_does_not_retry_4xx():
    client = Client("http://svc", retries=2, session=FakeSession([FakeResponse(503)] * 3), sleep=lambda s: None)
    with pytest.raises(ServiceUnavailable, match="3 attempt"):
        client.compute({})
    session = FakeSession([FakeResponse(400, {"title": "Invalid request", "errors": {"x": ["bad"]}})])
    with pytest.raises(ClientError) as info:
        Client("http://svc", session=session, sleep=lambda s: None).compute({})
    assert info.value.status == 400 and info.value.problem["errors"] == {"x": ["bad"]} and len(session.calls) == 1


@contextmanager
def cutting_server(cut: int):
    """A real HTTP server on 127.0.0.1 whose first `cut` responses stop after their headers (what a client behind a
    gateway gets when the worker writing the body is killed: the gateway cannot retry a response it has begun);
    then it answers whole. Yields (url, list of the request lines it read)."""
    body = json.dumps({"ok": True}).encode()
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(self.requestline)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if len(seen) > cut:
                self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(15)


def test_client_retries_a_response_cut_off_mid_body():
    """A real connection whose response stops after the headers: retried like no answer, never a raw requests error."""
    with cutting_server(cut=2) as (url, seen):
        sleeps = []
        assert Client(url, retries=2, sleep=sleeps.append).compute({}) == {"ok": True}
    assert seen == ["POST /v1/gradients HTTP/1.1"] * 3 and sleeps == [0.5, 1.0]
    with cutting_server(cut=2) as (url, seen):
        with pytest.raises(ServiceUnavailable, match="2 attempt.*ChunkedEncodingError"):
            Client(url, retries=1, sleep=lambda s: None).compute({})
    assert len(seen) == 2


def test_cli_exits_3_when_every_response_is_cut_off(files):
    with cutting_server(cut=2) as (url, seen):
        code, _, err = gradsvc("--retries", "1", "check", files("check.json", CHECK), url=url)
    assert code == 3 and "ChunkedEncodingError" in err and "Traceback" not in err and len(seen) == 2


def test_read_jobs_accepts_jsonl_arrays_and_objects(tmp_path):
    for text in ('{"jobs": [1, 2]}', "[1, 2]", "1\n\n2\n"):
        (tmp_path / "j").write_text(text)
        assert read_jobs(str(tmp_path / "j")) == [1, 2]


@pytest.mark.slow
def test_cli_survives_a_server_restart(tmp_path, files):
    """Start, stop, run the CLI with retries while the server is down, start again on the same port: it succeeds."""
    server = GunicornServer(workers=1, log_path=tmp_path / "server.log")
    port = server.port
    server.start()
    server.stop()
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradsvc",
            "--url",
            server.url,
            "--retries",
            "12",
            "--backoff",
            "0.25",
            "--timeout",
            "10",
            "check",
            files("check.json", CHECK),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        time.sleep(0.5)
        assert cli.poll() is None  # still retrying
        restarted = GunicornServer(workers=1, log_path=tmp_path / "server2.log")
        restarted.port, restarted.url = port, server.url
        restarted.env["PORT"] = str(port)
        restarted.start()
        try:
            out, err = cli.communicate(timeout=60)
        finally:
            restarted.stop()
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(5)
    assert cli.returncode == 0, err
    assert json.loads(out)["passed"] is True


def test_a_body_json_cannot_carry_is_a_request_error_not_a_raw_requests_error():
    """inf (what Python makes of 1e400): requests' InvalidJSONError before anything is sent, and not retried."""
    for body in ({"x": float("inf")}, {"x": [float("nan")]}):
        with pytest.raises(RequestError, match="cannot be sent as JSON"):
            Client(f"http://127.0.0.1:{free_port()}", retries=3, sleep=lambda s: pytest.fail("retried")).compute(body)
