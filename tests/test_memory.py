"""Bounded memory: a hostile battery against a live 2-worker server with default limits, and the RSS ceiling.

Every body below is a variant of the issue's hostile table (each once took gigabytes or tens of seconds).
With default limits each one must end within MAX_WALL_SECONDS + 1 s as a 200 or a 4xx/503 problem+json,
no worker may grow more than 512 MiB over its idle RSS while serving it (polled every 10 ms from a thread),
and after the battery and 3 s idle every worker must be back within 128 MiB of its idle size.
"""

from __future__ import annotations

import re
import threading
import time

import pytest
import requests

from bench.servers import proc_mib
from conftest import TUTORIAL_NEURON, GunicornServer, json_log_lines

WALL = 10.0  # the default MAX_WALL_SECONDS
PEAK_MIB = 512
SETTLED_MIB = 128
MAX_RESPONSE_BYTES = 100_000_000


def rss_mib(pid: int) -> float | None:
    return proc_mib(pid, "status", "VmRSS:")


class RssWatch:
    """Polls every worker's VmRSS from a thread; growth is measured against each pid's first (idle) reading."""

    def __init__(self, server) -> None:
        self.server = server
        self.idle: dict[int, float] = {}
        self.peak: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.server.worker_pids():
                rss = rss_mib(pid)
                if rss is not None:
                    self.idle.setdefault(pid, rss)
                    self.peak[pid] = max(self.peak.get(pid, 0.0), rss)
            time.sleep(0.01)

    def growth(self) -> dict[int, float]:
        return {pid: self.peak[pid] - self.idle[pid] for pid in self.peak}

    def __enter__(self) -> RssWatch:
        for pid in self.server.worker_pids():
            self.idle[pid] = rss_mib(pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def minus_chain(k: int) -> str:
    return "-" * 33 + f"(x*y+{k})"


def trig_chain(inner: str, depth: int, start: int) -> str:
    for i in range(depth):
        inner = f"{('sin', 'cos')[(i + start) % 2]}({inner})"
    return inner


def column(n: int) -> list[list[float]]:
    return [[0.001 * i] for i in range(n)]


def row(n: int) -> list[list[float]]:
    return [[0.001 * j for j in range(n)]]


MINUS_12 = "sum(" + " + ".join(minus_chain(k) for k in range(12)) + ")"
TRIG_4 = "sum(" + " + ".join(trig_chain("x*y" if k % 2 else "x+y", 11, k) for k in range(4)) + ")"
OPERATORS = "sum(" + " + ".join(f"maximum(x/(y+{k}), (x-y)**2) * exp(-x*y)" for k in range(8)) + ")"


def expression(formula: str, inputs: dict, **extra) -> dict:
    return {"model": {"kind": "expression", "formula": formula}, "inputs": inputs, **extra}


BATTERY: list[tuple[str, str, dict]] = [
    ("minus-chains-1000x1000", "/v1/gradients", expression(MINUS_12, {"x": column(1000), "y": row(1000)}, wrt=["x"])),
    (
        "minus-chains-intermediates",
        "/v1/gradients",
        expression(MINUS_12, {"x": column(200), "y": row(1000)}, wrt=["x"], include=["intermediates"]),
    ),
    (
        "trig-chains-hessian",
        "/v1/gradients",
        expression(TRIG_4, {"x": column(100), "y": row(6000)}, wrt=["x"], include=["hessian"]),
    ),
    (
        "trig-chains-numeric-1000",
        "/v1/gradients",
        expression(TRIG_4, {"x": column(1000), "y": row(100)}, wrt=["x"], include=["numeric"]),
    ),
    (
        "operators-graph-dot",
        "/v1/gradients",
        expression(OPERATORS, {"x": column(1000), "y": row(1000)}, include=["graph", "dot", "intermediates"]),
    ),
    (
        "check-student-formulas",
        "/v1/check",
        {
            "model": {"kind": "expression", "formula": MINUS_12},
            "points": [{"x": column(500), "y": row(1000)}] * 2,
            "submission": {"gradient_formulas": {"x": MINUS_12.replace("sum(", "(", 1), "y": TRIG_4}},
        },
    ),
    (
        "check-domain-draws",
        "/v1/check",
        {
            "model": {"kind": "expression", "formula": "sum(x*y)"},
            "inputs": {"x": [0.0] * 1_000_000, "y": 1.0},
            "domain": {"x": [-1.0, 1.0]},
            "n_points": 100,
            "submission": {"gradient_formulas": {"x": "y"}},
        },
    ),
    ("400k-scalar-inputs", "/v1/gradients", expression("x*x", {"x": 1.0, **{f"v{i}": 0.0 for i in range(400_000)}})),
    ("3M-empty-lists", "/v1/gradients", expression("sum(x)", {"x": [[]] * 3_000_000})),
    (
        "empty-manual",
        "/v1/gradients",
        {"model": {"kind": "expression", "name": "mean_square"}, "inputs": {"x": []}, "include": ["manual"]},
    ),
    ("empty-hessian", "/v1/gradients", expression("sum(x)", {"x": []}, include=["hessian"])),
    (
        "batch-of-hostile-jobs",
        "/v1/batch",
        {
            "jobs": [
                expression(MINUS_12, {"x": column(1000), "y": row(1000)}, wrt=["x"]),
                expression(TRIG_4, {"x": column(100), "y": row(6000)}, wrt=["x"], include=["hessian"]),
                {
                    "check": {
                        "model": {"kind": "expression", "formula": MINUS_12},
                        "points": [{"x": column(500), "y": row(1000)}] * 2,
                        "submission": {"gradient_formulas": {"x": TRIG_4}},
                    }
                },
            ]
            * 4
        },
    ),
    # just under the cost budget: these run, and must still give their memory back
    ("minus-chains-in-budget", "/v1/gradients", expression(MINUS_12, {"x": column(100), "y": row(300)}, wrt=["x"])),
    (
        "trig-hessian-in-budget",
        "/v1/gradients",
        expression(TRIG_4, {"x": column(10), "y": row(2000)}, wrt=["x"], include=["hessian"]),
    ),
    (
        "operators-numeric-in-budget",
        "/v1/gradients",
        expression(OPERATORS, {"x": column(200), "y": 0.5}, wrt=["x"], include=["numeric", "intermediates"]),
    ),
    (
        "many-mid-jobs",
        "/v1/batch",
        {"jobs": [expression(MINUS_12, {"x": column(100), "y": row(300)}, include=["intermediates"])] * 200},
    ),
]


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    """make run's config: 2 workers, every limit at its default."""
    server = GunicornServer(workers=2, log_path=tmp_path_factory.mktemp("memory") / "server.log")
    try:
        server.start()
        server.wait_workers(2)
        yield server
    finally:
        server.stop()


def assert_bounded_answer(name: str, response: requests.Response, elapsed: float) -> None:
    assert elapsed < WALL + 1, f"{name}: {elapsed:.1f} s"
    assert len(response.content) <= MAX_RESPONSE_BYTES, f"{name}: {len(response.content)} bytes"
    if response.status_code != 200:
        assert 400 <= response.status_code < 500 or response.status_code == 503, f"{name}: {response.status_code}"
        assert response.headers["Content-Type"] == "application/problem+json", f"{name}: {response.text[:200]}"
        assert response.json()["status"] == response.status_code


def tutorial_is_right(server) -> None:
    for _ in range(4):  # both workers, whichever gets which
        response = requests.post(server.url + "/v1/gradients", json=TUTORIAL_NEURON, timeout=10)
        assert response.status_code == 200
        assert response.json()["loss"] == pytest.approx(6.7012, abs=1e-4)
        assert response.json()["gradients"]["w"] == pytest.approx(6.6918, abs=1e-4)


@pytest.mark.slow
def test_hostile_battery_stays_within_time_and_memory(default_server):
    with requests.Session() as http:  # warm the client side: the first request should not pay for it
        http.get(default_server.url + "/healthz", timeout=10)
    watch = RssWatch(default_server)
    outcomes = {}
    with watch:
        for name, path, body in BATTERY:
            start = time.monotonic()
            response = requests.post(default_server.url + path, json=body, timeout=60)
            elapsed = time.monotonic() - start
            outcomes[name] = (response.status_code, round(elapsed, 2))
            assert_bounded_answer(name, response, elapsed)
            over = {pid: round(g) for pid, g in watch.growth().items() if g > PEAK_MIB}
            assert not over, f"{name}: workers grew by {over} MiB (> {PEAK_MIB}); so far {outcomes}"
    time.sleep(3)
    settled = {pid: rss_mib(pid) - watch.idle.get(pid, rss_mib(pid)) for pid in default_server.worker_pids()}
    assert all(g <= SETTLED_MIB for g in settled.values()), f"after 3 s idle: {settled} MiB over idle; {outcomes}"
    tutorial_is_right(default_server)


def metric(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", line)
        if match:
            return float(match.group(1))
    return 0.0


@pytest.mark.slow
def test_a_worker_over_its_rss_ceiling_is_replaced_and_counted(tmp_path):
    """MAX_WORKER_RSS_MB below any worker's size: after its first answer the worker exits and gunicorn
    starts a fresh one; the response itself is complete and right."""
    log = tmp_path / "server.log"
    env = {"MAX_WORKER_RSS_MB": "50", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")}
    server = GunicornServer(workers=1, env=env, log_path=log)
    try:
        server.start()
        server.wait_workers(1)
        (first,) = server.worker_pids()
        response = requests.post(
            server.url + "/v1/gradients", json=TUTORIAL_NEURON, headers={"X-Request-ID": "big-one"}, timeout=10
        )
        assert response.status_code == 200 and response.json()["loss"] == pytest.approx(6.7012, abs=1e-4)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.worker_pids() in ([], [first]):
            time.sleep(0.1)
        assert server.worker_pids() and server.worker_pids() != [first], "the worker was not replaced"
        server.wait_ready()
        text = requests.get(server.url + "/metrics", timeout=10).text
        assert metric(text, "gradsvc_worker_recycles_total", reason="rss") >= 1
        recycled = [line for line in json_log_lines(log.read_text()) if "exiting for a fresh one" in line["message"]]
        # each names the request that left its worker too big (it was "-"): the probes', and ours
        assert "big-one" in {line["request_id"] for line in recycled} and "-" not in {r["request_id"] for r in recycled}
    finally:
        server.stop()


def test_the_guard_trims_growth_over_its_settled_size_and_settles_on_what_stays(monkeypatch):
    """In-process, with a scripted RSS: a trim after a request that grew the worker more than TRIM_ABOVE_MIB over
    what it held after the last trim; what a trim cannot return (caches) becomes the new settled size, so
    later small requests trigger nothing."""
    from service import memory

    readings: list[float] = []
    trims: list[int] = []
    collects: list[int] = []
    monkeypatch.setattr(memory, "rss_mib", lambda: readings.pop(0))
    monkeypatch.setattr(memory, "trim", lambda: trims.append(1))
    monkeypatch.setattr(memory.gc, "collect", lambda *a: collects.append(1))
    readings.append(200.0)
    guard = memory.MemoryGuard(ceiling_mib=768)
    step = memory.TRIM_ABOVE_MIB

    readings.append(200.0 + step - 1)  # a small request: under the threshold
    guard.after_request()
    assert (trims, guard.settled_mib) == ([], 200.0)

    readings.extend([200.0 + 63, 202.0])  # a 1M-sample request left 63 MiB; the trim returns it
    guard.after_request()
    assert (len(trims), collects, guard.settled_mib) == (1, [], 202.0)

    readings.extend([240.0, 230.0, 230.0])  # a kept problem: 28 MiB stay after the trim and the GC
    guard.after_request()
    assert (len(trims), len(collects), guard.settled_mib) == (3, 1, 230.0)

    readings.append(230.0 + step - 1)  # the next small request: nothing to do
    guard.after_request()
    assert (len(trims), guard.settled_mib, readings) == (3, 230.0, [])
