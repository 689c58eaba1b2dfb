"""Request ids, structured logs, metrics summed across gunicorn workers, and optional API-key auth."""

from __future__ import annotations

import logging
import os
import re
import signal
import time

import pytest
import requests
from pythonjsonlogger.json import JsonFormatter

from conftest import TUTORIAL_NEURON, GunicornServer, TestConfig, json_log_lines
from service import create_app
from service.logformat import JSON_FORMATTER
from service.observability import AccessLog


def test_request_id_is_echoed(client):
    r = client.post("/v1/gradients", json=TUTORIAL_NEURON, headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"


def test_request_id_is_generated_when_missing_or_unsafe(client):
    made = client.get("/healthz").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    replaced = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces; and more"}).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)


def test_problem_bodies_carry_the_request_id(client):
    r = client.get("/nope", headers={"X-Request-ID": "rid-404"})
    assert r.json["request_id"] == "rid-404" and r.headers["X-Request-ID"] == "rid-404"
    r = client.post("/v1/gradients", json={"model": {"kind": "x"}}, headers={"X-Request-ID": "rid-400"})
    assert r.json["request_id"] == "rid-400"


def test_proxy_headers_trusted_only_when_configured():
    class BehindGateway(TestConfig):
        TRUSTED_PROXY_HOPS = 1

    headers = {"X-Forwarded-Prefix": "/grad", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.test"}
    trusted = create_app(BehindGateway).test_client().get("/openapi.json", headers=headers).json
    assert trusted["servers"] == [{"url": "/grad"}]
    direct = create_app(TestConfig).test_client().get("/openapi.json", headers=headers).json
    assert direct["servers"] == [{"url": "/"}]


class KeyedConfig(TestConfig):
    API_KEYS = "alpha, beta"


@pytest.fixture(scope="module")
def keyed_client(tmp_path_factory):
    return create_app(KeyedConfig).test_client()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Basic alpha"}, 401),
        ({"Authorization": "Bearer alpha"}, 200),
        ({"Authorization": "bearer beta"}, 200),
    ],
)
def test_api_keys_guard_v1(keyed_client, headers, status):
    r = keyed_client.post("/v1/gradients", json=TUTORIAL_NEURON, headers=headers)
    assert r.status_code == status
    if status == 401:
        assert r.mimetype == "application/problem+json" and r.json["type"] == "/problems/unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_health_and_metrics_stay_open_with_keys(keyed_client):
    assert keyed_client.get("/healthz").status_code == 200
    assert keyed_client.get("/readyz").status_code == 200
    assert keyed_client.get("/metrics").status_code == 200
    assert keyed_client.get("/v1/models").status_code == 401


def test_api_keys_from_a_secret_file(tmp_path):
    secret = tmp_path / "keys"
    secret.write_text("# one key per line\ngamma\n\n")

    class FileKeys(TestConfig):
        API_KEYS_FILE = str(secret)

    client = create_app(FileKeys).test_client()
    assert client.get("/v1/models", headers={"Authorization": "Bearer gamma"}).status_code == 200
    assert client.get("/v1/models").status_code == 401


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.find("}") + 1]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.live
def test_metrics_add_up_across_workers_and_logs_are_json(tmp_path):
    """2 workers, multiprocess mode: after N requests every scrape (whichever worker answers) counts N."""
    server = GunicornServer(
        workers=2,
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "LOG_LEVEL": "INFO"},
        log_path=tmp_path / "server.log",
    ).start()
    try:
        n = 24
        with requests.Session() as s:
            for i in range(n):
                r = s.post(
                    server.url + "/v1/gradients", json=TUTORIAL_NEURON, headers={"X-Request-ID": f"m-{i}"}, timeout=10
                )
                assert r.status_code == 200
            s.post(server.url + "/v1/gradients", json={"model": {"kind": "nope"}, "inputs": {}}, timeout=10)
            scrapes = [s.get(server.url + "/metrics", timeout=10).text for _ in range(4)]
        for text in scrapes:
            assert metric(text, "gradsvc_http_requests_total", route="/v1/gradients", status="200") == n
            assert metric(text, "gradsvc_http_requests_total", route="/v1/gradients", status="400") == 1
            assert metric(text, "gradsvc_http_request_duration_seconds_count", route="/v1/gradients", status="200") == n
            assert metric(text, "gradsvc_compute_seconds_count", kind="neuron") == n
            assert metric(text, "gradsvc_requests_in_flight") == 1  # the scrape itself
    finally:
        server.stop()
    lines = json_log_lines((tmp_path / "server.log").read_text())
    access = [line for line in lines if line.get("logger") == "gradsvc.access"]
    assert {f"m-{i}" for i in range(24)} <= {line["request_id"] for line in access}
    sample = next(line for line in access if line["request_id"] == "m-0")
    assert sample["status"] == 200 and sample["route"] == "/v1/gradients" and sample["duration_ms"] > 0


@pytest.mark.live
def test_metrics_survive_a_sighup_reload(tmp_path):
    """gunicorn loads its config file again on SIGHUP; the config emptied the metrics directory every time it was
    loaded, so a reload dropped every counter to zero while the server kept serving (found by an audit)."""
    prom = tmp_path / "prom"
    log = tmp_path / "server.log"
    server = GunicornServer(
        workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(prom), "LOG_LEVEL": "INFO"}, log_path=log
    ).start()
    try:
        with requests.Session() as s:
            for _ in range(10):
                assert s.post(server.url + "/v1/gradients", json=TUTORIAL_NEURON, timeout=10).status_code == 200
            old_workers = set(server.worker_pids())
            os.kill(server.proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the old workers leave, two new ones are up and answer
                workers = set(server.worker_pids())
                if len(workers) == 2 and not workers & old_workers:
                    if s.get(server.url + "/readyz", timeout=10).status_code == 200:
                        break
                time.sleep(0.2)
            else:
                pytest.fail("no reload within 60 s")
            assert "Handling signal: hup" in log.read_text()
            for _ in range(5):
                assert s.post(server.url + "/v1/gradients", json=TUTORIAL_NEURON, timeout=10).status_code == 200
            text = s.get(server.url + "/metrics", timeout=10).text
        assert metric(text, "gradsvc_http_requests_total", route="/v1/gradients", status="200") == 15
        assert metric(text, "gradsvc_build_info") == 1
    finally:
        server.stop()


@pytest.mark.live
def test_every_worker_reports_its_memory_before_its_first_request(tmp_path):
    """The per-worker RSS gauge read 0 until the worker had answered a request (found by an audit)."""
    server = GunicornServer(workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}).start()
    try:
        server.wait_workers(2)
        workers = server.worker_pids()
        text = requests.get(server.url + "/metrics", timeout=10).text
        for pid in workers:
            assert metric(text, "gradsvc_process_resident_memory_bytes", pid=str(pid)) > 50 * 2**20, pid
    finally:
        server.stop()


def test_check_and_batch_are_timed_by_kind(client):
    from prometheus_client import REGISTRY

    def count(kind):
        return REGISTRY.get_sample_value("gradsvc_compute_seconds_count", {"kind": kind}) or 0.0

    before_batch, before_neuron = count("batch"), count("neuron")
    assert client.post("/v1/batch", json={"jobs": [TUTORIAL_NEURON]}).status_code == 200
    assert client.post("/v1/check", json={**TUTORIAL_NEURON, "submission": {"loss": 6.7012}}).status_code == 200
    assert count("batch") == before_batch + 1
    assert count("neuron") == before_neuron + 1


def test_access_line_is_what_the_logging_formatter_writes(capsys):
    """The access log skips logging's machinery for speed (AccessLog), yet writes the line the JSON formatter of
    service/logformat.py would: same keys in the same order, same separators and escapes; time ISO 8601 UTC."""
    fields = {
        "method": "GET",
        "path": "/v1/é",
        "route": "unmatched",
        "status": 404,
        "duration_ms": 1.5,
        "bytes": None,
        "remote_addr": "127.0.0.1",
    }
    logger = logging.getLogger("gradsvc.access")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        AccessLog(logger).write("rid-1", fields)
    finally:
        logger.setLevel(old_level)
    ours = capsys.readouterr().out
    settings = {k: v for k, v in JSON_FORMATTER.items() if k != "()"}
    formatter = JsonFormatter(**{**settings, "fmt": settings["fmt"] + " %(request_id)s"})
    record = logger.makeRecord(
        "gradsvc.access", logging.INFO, __file__, 1, "request", (), None, extra={**fields, "request_id": "rid-1"}
    )
    theirs = formatter.format(record) + "\n"
    stamp = re.compile(r'"time": "(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00)"')
    assert stamp.search(ours) and stamp.search(theirs)
    assert stamp.sub('"time": "T"', ours) == stamp.sub('"time": "T"', theirs)


def test_resident_bytes_reads_the_calling_process_also_after_a_fork():
    """The statm descriptor is kept open; a forked worker must read its own RSS, not its master's."""
    import os

    from service.process_metrics import resident_bytes

    parent = resident_bytes()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child grows by 256 MiB and reports what resident_bytes() sees
        try:
            ballast = bytearray(256 << 20)
            ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page
            with open("/proc/self/statm", "rb") as f:
                fresh = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            os.write(write, f"{resident_bytes()} {fresh}".encode())
        finally:
            os._exit(0)
    os.close(write)
    child, fresh = map(int, os.read(read, 64).split())
    os.close(read)
    os.waitpid(pid, 0)
    assert abs(child - fresh) < (16 << 20)  # what a newly opened statm says in the child
    assert child > parent + (128 << 20) > resident_bytes() + (64 << 20)


def test_ensure_sync_passes_plain_and_unhashable_callables_through(app):
    """App.ensure_sync remembers Flask's answer per function; a callable it cannot key is still served."""

    def view():
        return "ok"

    class Unhashable:
        __hash__ = None

        def __call__(self):
            return "ok"

    unhashable = Unhashable()
    assert app.ensure_sync(view) is view and app.ensure_sync(view) is view
    assert app.ensure_sync(unhashable) is unhashable
