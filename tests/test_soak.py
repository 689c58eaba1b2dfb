"""Soak: a real gunicorn under 60 s of 32 concurrent connections mixing valid and hostile requests."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
import requests

from conftest import TUTORIAL_NEURON, GunicornServer

pytestmark = [pytest.mark.live, pytest.mark.slow]

SECONDS = 60
CONNECTIONS = 32
MAX_REQUESTS_PER_THREAD = 20_000  # a count bound besides the time bound
JSON = {"Content-Type": "application/json"}


def _body(obj) -> bytes:
    return orjson.dumps(obj)


def _expression(formula: str, inputs: dict, **extra) -> bytes:
    return _body({"model": {"kind": "expression", "formula": formula}, "inputs": inputs, **extra})


PER_SAMPLE_NEURON = {
    "model": {"kind": "neuron", "reduction": "none"},
    "inputs": {"x": [[1, 2], [3, 4], [5, 6]], "y": [0, 1, 1], "w": [0.1, 0.2], "b": 0},
    "include": ["graph", "intermediates", "manual"],
}
NAN_LITERAL = b'{"model": {"kind": "expression", "formula": "x"}, "inputs": {"x": NaN}}'
DEEP_NESTING = (
    b'{"model":{"kind":"expression","formula":"sum(x)"},"inputs":{"x":' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}}"
)
MIXED_BATCH = {"jobs": [TUTORIAL_NEURON] * 20 + [{"model": {"kind": "nope"}, "inputs": {}}]}
NON_FINITE = ["NaN", "Infinity", "-Infinity", 1]
# non-scalar output: exp(-y) is a vector
VECTOR_FORMULA = _expression("sin(x**2) + exp(-y)", {"x": 3, "y": [1, 2]}, include=["graph", "numeric"])
SCALAR_FORMULA = _expression("mean(sin(x**2) + exp(-x))", {"x": [1, 2, 3]}, include=["graph", "dot", "hessian"])

# (name, weight, method, path, body bytes, headers, allowed statuses)
MIX = [
    ("neuron", 20, "POST", "/v1/gradients", _body(TUTORIAL_NEURON), JSON, {200}),
    ("neuron per-sample", 5, "POST", "/v1/gradients", _body(PER_SAMPLE_NEURON), JSON, {200}),
    ("formula", 10, "POST", "/v1/gradients", VECTOR_FORMULA, JSON, {422}),
    ("formula scalar", 10, "POST", "/v1/gradients", SCALAR_FORMULA, JSON, {200}),
    ("batch", 3, "POST", "/v1/batch", _body(MIXED_BATCH), JSON, {200}),
    ("models", 3, "GET", "/v1/models", None, {}, {200}),
    ("malformed json", 5, "POST", "/v1/gradients", b'{"model": {"kind": "neuron"}, "inputs": ', JSON, {400}),
    ("NaN literal", 3, "POST", "/v1/gradients", NAN_LITERAL, JSON, {400}),
    ("huge formula", 5, "POST", "/v1/gradients", _expression("x+" * 20_000 + "x", {"x": 1}), JSON, {413}),
    ("deep nesting", 5, "POST", "/v1/gradients", DEEP_NESTING, JSON, {400}),
    ("deep formula", 3, "POST", "/v1/gradients", _expression("(" * 400 + "x" + ")" * 400, {"x": 1}), JSON, {413}),
    ("wrong content type", 5, "POST", "/v1/gradients", _body(TUTORIAL_NEURON), {"Content-Type": "text/plain"}, {415}),
    ("3M elements", 1, "POST", "/v1/gradients", _expression("sum(x)", {"x": [0] * 3_000_000}), JSON, {413}),
    ("power tower", 5, "POST", "/v1/gradients", _expression("9**9**9**9", {}), JSON, {200}),
    ("non-finite inputs", 5, "POST", "/v1/gradients", _expression("sum(x * 2)", {"x": NON_FINITE}), JSON, {200}),
    ("dunder", 3, "POST", "/v1/gradients", _expression("x.__class__", {"x": 1}), JSON, {400}),
    ("unknown field", 3, "POST", "/v1/gradients", _body({**TUTORIAL_NEURON, "evil": True}), JSON, {400}),
    ("not found", 2, "GET", "/nope", None, {}, {404}),
    ("wrong method", 2, "DELETE", "/v1/gradients", None, {}, {405}),
]


def _workers(server: GunicornServer) -> set[int]:
    path = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
    return {int(pid) for pid in path.read_text().split()}


def _pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_soak_mixed_valid_and_hostile(tmp_path, record_property):
    # Worker recycling (max_requests) is off here so the same two workers live through the whole soak: a
    # crashed or killed worker shows up as a new pid, and PSS growth measures leaks, not fresh processes.
    server = GunicornServer(env={"GUNICORN_MAX_REQUESTS": "0"}, log_path=tmp_path / "gunicorn.log").start()
    try:
        deadline = time.monotonic() + 30
        while len(_workers(server)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = _workers(server)
        assert len(workers) == 2
        with requests.Session() as s:  # warm both workers so "before" is a steady state
            for _ in range(20):
                s.post(server.url + "/v1/gradients", data=MIX[0][4], headers=JSON, timeout=30)
        before = {pid: _pss_mib(pid) for pid in workers}

        counts: Counter = Counter()
        problems: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + SECONDS
        weights = [m[1] for m in MIX]

        def client(seed: int) -> None:
            rng = random.Random(seed)
            with requests.Session() as session:
                for _ in range(MAX_REQUESTS_PER_THREAD):
                    if time.monotonic() >= stop_at:
                        return
                    name, _, method, path, body, headers, allowed = rng.choices(MIX, weights)[0]
                    try:
                        r = session.request(method, server.url + path, data=body, headers=headers, timeout=30)
                        json.loads(r.content)  # every body is valid JSON (strict: no NaN literals)
                        ok = r.status_code in allowed and r.status_code < 500
                        note = f"{name}: {r.status_code} {r.text[:200]}"
                    except (requests.RequestException, ValueError) as err:
                        ok, note = False, f"{name}: {type(err).__name__}: {err}"
                    with lock:
                        counts[name, ok] += 1
                        if not ok and len(problems) < 20:
                            problems.append(note)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CONNECTIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SECONDS + 60)
        assert not any(t.is_alive() for t in threads), "a client thread is stuck"

        after = {pid: _pss_mib(pid) for pid in workers if Path(f"/proc/{pid}").exists()}
        total = sum(counts.values())
        growth = {pid: after.get(pid, 0.0) - before[pid] for pid in workers}
        summary = {name: counts[name, True] for name, *_ in MIX}
        print(f"\nsoak: {total} requests in {SECONDS} s over {CONNECTIONS} connections; by kind: {summary}")
        pss = ", ".join(f"{pid}: {before[pid]:.1f} -> {after.get(pid, 0):.1f}" for pid in workers)
        print("worker PSS before/after (MiB): " + pss)
        record_property("soak_requests", total)
        record_property("worker_pss_growth_mib", {str(k): round(v, 1) for k, v in growth.items()})

        assert not problems, "\n".join(problems)
        assert total >= 100, "the soak barely ran"
        assert _workers(server) == workers, "a worker died or was replaced during the soak"
        assert all(g < 200 for g in growth.values()), growth  # generous: a leak of ~1 KiB per request would still pass
    finally:
        server.stop()
    log = (tmp_path / "gunicorn.log").read_text()
    assert "WORKER TIMEOUT" not in log and "Traceback" not in log
