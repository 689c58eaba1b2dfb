"""The edge through real nginx and gunicorn: slow clients and idle-connection floods from one client address
do not slow another, limit_conn per client, no retry after a timeout, validated request ids, and gunicorn's
HTML error pages replaced by problem+json.  Two clients = two loopback addresses (127.0.0.1, 127.0.0.2)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
import requests
from test_gateway import PROBLEM, Gateway, replica, upstream

from conftest import TUTORIAL_NEURON, free_port

pytestmark = [pytest.mark.gateway, pytest.mark.live]
OTHER_CLIENT = "127.0.0.2"


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    with replica(tmp_path_factory.mktemp("edge"), "app") as server:
        yield server


@pytest.fixture(scope="module")
def gateway(app_server, tmp_path_factory):
    with Gateway(
        tmp_path_factory.mktemp("edge-gw") / "nginx", [upstream(app_server)], rate="1000r/s", burst=1000
    ) as gw:
        yield gw


def connect_from(address: str, port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(address, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class SlowClients:
    """Slowloris from OTHER_CLIENT: connections that send headers (or a body) one piece a second, plus idle ones."""

    def __init__(self, port: int, slow_headers: int, slow_bodies: int, idle: int) -> None:
        self.socks: list[socket.socket] = []
        self.stop = threading.Event()
        head = b"POST /grad/v1/gradients HTTP/1.1\r\nHost: gw\r\n"
        try:
            self.header_socks = [self._open(port, head) for _ in range(slow_headers)]
            body_head = head + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
            self.body_socks = [self._open(port, body_head) for _ in range(slow_bodies)]
            self.idle_socks = [self._open(port, b"") for _ in range(idle)]
        except BaseException:
            self.close()
            raise
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _open(self, port: int, first: bytes) -> socket.socket:
        sock = connect_from(OTHER_CLIENT, port)
        self.socks.append(sock)
        if first:
            sock.sendall(first)
        return sock

    def _drip(self) -> None:
        deadline = time.monotonic() + 60
        while not self.stop.wait(1.0) and time.monotonic() < deadline:
            for sock in self.header_socks:
                self._send(sock, b"X-Slow: 1\r\n")
            for sock in self.body_socks:
                self._send(sock, b" ")

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)
        except OSError:
            pass

    def close(self) -> None:
        self.stop.set()
        for sock in self.socks:
            sock.close()


@pytest.mark.slow
def test_slow_and_idle_clients_do_not_slow_another_client(gateway):
    """4 slowloris connections (2 slow headers, 2 slow bodies) + 300 idle ones from 127.0.0.2 while
    127.0.0.1 sends 200 tutorial requests: every one answered 200, p99 under 1 s."""
    slow = SlowClients(gateway.port, slow_headers=2, slow_bodies=2, idle=300)
    try:
        time.sleep(1.5)  # the slow clients are under way
        latencies, statuses = [], []
        with requests.Session() as s:
            for i in range(200):
                start = time.perf_counter()
                r = s.post(
                    gateway.url + "/v1/gradients",
                    json=TUTORIAL_NEURON,
                    timeout=10,
                    headers={"X-Request-ID": f"fast-{i}"},
                )
                latencies.append(time.perf_counter() - start)
                statuses.append(r.status_code)
        alive = sum(1 for sock in slow.idle_socks if sock.fileno() != -1)
    finally:
        slow.close()
    latencies.sort()
    p99 = latencies[int(0.99 * len(latencies)) - 1]
    print(
        f"200 requests beside 4 slowloris + 300 idle: p50 {latencies[100] * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    assert statuses == [200] * 200, [s for s in statuses if s != 200][:5]
    assert p99 < 1.0
    assert alive == 300


def gateway_with(app_server, tmp_path, **settings) -> Gateway:
    return Gateway(tmp_path / "nginx", [upstream(app_server)], rate="1000r/s", burst=1000, **settings)


def post_from(address: str, port: int, body: bytes) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(address, 0))
    conn.request("POST", "/grad/v1/gradients", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.body = response.read()
    conn.close()
    return response


@pytest.mark.slow
def test_limit_conn_per_client(app_server, tmp_path):
    gw = gateway_with(app_server, tmp_path, conn_per_client=2)
    slow = None
    try:
        slow = SlowClients(gw.port, slow_headers=0, slow_bodies=2, idle=0)  # two requests in progress
        time.sleep(0.5)
        body = json.dumps(TUTORIAL_NEURON).encode()
        third = post_from(OTHER_CLIENT, gw.port, body)
        assert third.status == 429 and third.getheader("Content-Type") == PROBLEM
        problem = json.loads(third.body)
        assert problem["status"] == 429 and problem["request_id"] == third.getheader("X-Request-ID")
        assert problem["instance"] == "/grad/v1/gradients"
        assert post_from("127.0.0.1", gw.port, body).status == 200  # another client is not limited
    finally:
        if slow:
            slow.close()
        gw.stop()


@pytest.mark.slow
def test_large_bodies_at_once_are_limited_per_gateway(app_server, tmp_path):
    """Bodies over 64 KiB go to nginx's temp space: at most large_bodies of them at once, from any clients."""
    gw = gateway_with(app_server, tmp_path, large_bodies=2)
    slow = None
    try:
        slow = SlowClients(gw.port, slow_headers=0, slow_bodies=2, idle=0)  # two 100,000-byte bodies in progress
        time.sleep(0.5)
        small = json.dumps(TUTORIAL_NEURON).encode()
        large = small[:-1] + b" " * 70_000 + b"}"  # the same request, over 64 KiB
        third = post_from("127.0.0.1", gw.port, large)  # another client: its per-client limit is not the reason
        assert third.status == 429 and third.getheader("Content-Type") == PROBLEM
        assert "2 bodies over 64 KiB at once" in json.loads(third.body)["detail"]
        assert post_from("127.0.0.1", gw.port, small).status == 200  # small bodies are not counted
        slow.close()
        slow = None
        time.sleep(0.5)
        assert post_from("127.0.0.1", gw.port, large).status == 200
    finally:
        if slow:
            slow.close()
        gw.stop()


def test_invalid_request_id_is_replaced_and_logged_as_answered(gateway, app_server):
    for bad in ["x" * 6000, 'a"b', "with space", "é"]:
        r = requests.get(gateway.url + "/v1/models", headers={"X-Request-ID": bad.encode("utf-8")}, timeout=10)
        rid = r.headers["X-Request-ID"]
        assert len(rid) == 32 and int(rid, 16) >= 0
    time.sleep(0.3)  # nginx writes its access log line after the answer
    nginx_log = (gateway.prefix / "logs" / "access.log").read_text()
    assert f"rid={rid}" in nginx_log
    app_log = app_server.log_path.read_text()
    assert f'"request_id": "{rid}"' in app_log
    kept = requests.get(gateway.url + "/healthz", headers={"X-Request-ID": "ok-id.1:2"}, timeout=10)
    assert kept.headers["X-Request-ID"] == "ok-id.1:2"


def test_gateway_problems_carry_request_id_and_instance(gateway):
    r = requests.get(
        gateway.url.removesuffix("/grad") + "/elsewhere?q=1", headers={"X-Request-ID": "gw-404"}, timeout=10
    )
    assert r.status_code == 404 and r.headers["Content-Type"] == PROBLEM
    assert r.json()["request_id"] == "gw-404" and r.json()["instance"] == "/elsewhere"


def raw_exchange(port: int, head: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send bytes no HTTP library would send; return the status line, the headers and the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"\r\nHost: gw\r\nConnection: close\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (chunk := sock.recv(65536)):
            data += chunk
    head_text, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head_text.decode("latin1").split("\r\n")
    return status, {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}, body


@pytest.mark.parametrize(
    "head, status",
    [
        (b"GET /grad/v1/mo dels HTTP/1.1", 400),  # a malformed request line: nginx refuses it itself
        (b"AB /grad/v1/models HTTP/1.1", 405),  # a method gunicorn would refuse (< 3 characters)
        (b"ABCDEFGHIJKLMNOPQRSTUVWXYZ /grad/healthz HTTP/1.1", 405),  # ... or > 20 characters
        (b"GET /grad/v1/models HTTP/1.1\r\nX-Odd: a\x01b", 400),  # nginx forwards it, gunicorn refuses it
        (b"GET /grad/v1/models HTTP/9.9", 505),
        (b"POST /grad/v1/gradients HTTP/1.1\r\nTransfer-Encoding: gzip, chunked", 501),
    ],
)
def test_no_html_reaches_a_client_through_the_gateway(gateway, head, status):
    line, headers, body = raw_exchange(gateway.port, head)
    assert line.split()[1] == str(status) and headers["content-type"] == PROBLEM, (line, body[:200])
    problem = json.loads(body)
    assert problem["status"] == status and len(problem["request_id"]) == 32 and b"<html" not in body


def test_gunicorn_answers_its_own_errors_as_problems(app_server):
    """Direct to gunicorn (as `make run` serves): its refusals are problem+json too, with a logged id."""
    line, headers, body = raw_exchange(app_server.port, b"AB / HTTP/1.1")
    problem = json.loads(body)
    assert line.startswith("HTTP/1.1 400") and headers["content-type"] == PROBLEM
    assert problem["status"] == 400 and "Invalid HTTP method" in problem["detail"]
    assert headers["x-request-id"] == problem["request_id"]
    time.sleep(0.3)
    assert f'"request_id": "{problem["request_id"]}"' in app_server.log_path.read_text()


def test_a_chunked_body_over_the_limit_is_a_gateway_problem(app_server, tmp_path):
    """A chunked body has no Content-Length to check up front; nginx counts it in the proxy location."""
    gw = gateway_with(app_server, tmp_path, max_body_bytes=1000)
    try:
        chunks = (b" " * 1000 for _ in range(5))
        r = requests.post(
            gw.url + "/v1/gradients",
            data=chunks,
            timeout=10,
            headers={"Content-Type": "application/json", "X-Request-ID": "chunked-1"},
        )
        assert r.status_code == 413 and r.headers["Content-Type"] == PROBLEM
        problem = r.json()
        assert problem["limit"] == {"name": "max_body_bytes", "value": 1000}
        assert problem["request_id"] == "chunked-1" and problem["instance"] == "/grad/v1/gradients"
    finally:
        gw.stop()


def test_gunicorn_html_errors_become_problems_but_app_problems_pass(gateway):
    headers = {f"X-Extra-{i}": "v" for i in range(120)}  # > gunicorn's limit_request_fields (100)
    r = requests.get(gateway.url + "/healthz", headers={**headers, "X-Request-ID": "many-headers"}, timeout=10)
    assert r.status_code == 431 and r.headers["Content-Type"] == PROBLEM
    # gunicorn refused the request before reading its id: the problem carries the id gunicorn logged
    assert len(r.json()["request_id"]) == 32 and "<html>" not in r.text
    long_uri = requests.get(gateway.url + "/" + "a" * 5000, timeout=10)
    assert long_uri.status_code == 414 and long_uri.headers["Content-Type"] == PROBLEM
    # the app's own problems are not intercepted: its detail survives
    app_400 = requests.post(
        gateway.url + "/v1/gradients",
        data=b'{"a": 1, "a": 2}',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert app_400.status_code == 400 and "The key 'a' appears more than once" in app_400.json()["detail"]
    app_415 = requests.post(
        gateway.url + "/v1/gradients", json=TUTORIAL_NEURON, headers={"Content-Encoding": "gzip"}, timeout=10
    )
    assert app_415.status_code == 415 and "Content-Encoding 'gzip'" in app_415.json()["detail"]
    app_413 = requests.post(
        gateway.url + "/v1/gradients",
        timeout=10,
        json={"model": {"kind": "expression", "formula": "sum(x)"}, "inputs": {"x": [0] * 200}, "include": ["hessian"]},
    )
    assert app_413.status_code == 413 and app_413.json()["limit"]["name"] == "max_hessian_elements"
    app_404 = requests.get(gateway.url + "/v1/nothing", timeout=10)
    assert app_404.status_code == 404 and "requested URL was not found" in app_404.json()["detail"]


class Blackhole:
    """A TCP listener that accepts and never answers: a replica stuck in a computation."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.mark.slow
def test_a_post_is_not_retried_after_a_timeout(tmp_path):
    holes = [Blackhole(), Blackhole()]
    gw = None
    try:
        gw = Gateway(tmp_path / "nginx", [h.address for h in holes], read_timeout="1s")
        r = requests.post(
            gw.url + "/v1/gradients", json=TUTORIAL_NEURON, headers={"X-Request-ID": "slow-1"}, timeout=20
        )
        assert r.status_code == 504 and r.headers["Content-Type"] == PROBLEM and r.json()["request_id"] == "slow-1"
        time.sleep(0.3)
        assert sum(len(h.accepted) for h in holes) == 1  # one replica tried, not both
    finally:
        if gw:
            gw.stop()
        for h in holes:
            h.close()


def test_a_post_is_retried_when_the_connection_is_refused(app_server, tmp_path):
    gw = Gateway(tmp_path / "nginx", [f"127.0.0.1:{free_port()}", upstream(app_server)], rate="1000r/s", burst=1000)
    try:
        statuses = [
            requests.post(gw.url + "/v1/gradients", json=TUTORIAL_NEURON, timeout=10).status_code for _ in range(4)
        ]
        assert statuses == [200] * 4
    finally:
        gw.stop()


def test_the_app_and_the_gateway_name_the_same_instance(gateway):
    """With TRUSTED_PROXY_HOPS=1 the app's problems said /v1/gradients while the gateway's own said
    /grad/v1/gradients: the app now adds the forwarded prefix, as it does to the OpenAPI `servers`."""
    from_gateway = requests.request("AB", gateway.url + "/v1/gradients?q=1", timeout=10)  # a method nginx refuses
    from_app = requests.get(gateway.url + "/v1/gradients?q=1", timeout=10)  # one the app refuses on this route
    assert from_gateway.status_code == from_app.status_code == 405
    assert from_gateway.json()["detail"] == "The gateway does not accept this method."
    assert from_app.json()["detail"] != from_gateway.json()["detail"]
    assert from_app.json()["instance"] == from_gateway.json()["instance"] == "/grad/v1/gradients"
