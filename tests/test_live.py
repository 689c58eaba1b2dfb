"""A real gunicorn (deploy config, 2 sync workers) exercised with requests, hostile input included."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from conftest import TUTORIAL_NEURON

pytestmark = pytest.mark.live


def post(url, body=None, data=None, headers=None, timeout=30):
    if body is not None:
        data = json.dumps(body)
    return requests.post(
        url + "/v1/gradients",
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
        timeout=timeout,
    )


def test_tutorial_neuron_over_http(live_server):
    r = post(live_server.url, TUTORIAL_NEURON)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert [round(body["loss"], 4), round(body["gradients"]["w"], 4), round(body["gradients"]["b"], 4)] == [
        6.7012,
        6.6918,
        0.9988,
    ]


def test_health_ready_openapi(live_server):
    assert requests.get(live_server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(live_server.url + "/readyz", timeout=5).status_code == 200
    doc = requests.get(live_server.url + "/openapi.json", timeout=5).json()
    assert doc["openapi"].startswith("3.") and "/v1/gradients" in doc["paths"]


HOSTILE = [
    ("power tower", {"model": {"kind": "expression", "formula": "9**9**9**9"}, "inputs": {}}, {200}),
    ("unary chain", {"model": {"kind": "expression", "formula": "+" * 200_000 + "x"}, "inputs": {"x": 1}}, {413}),
    ("deep nesting", None, {400}),
    ("3M elements", {"model": {"kind": "expression", "formula": "sum(x)"}, "inputs": {"x": [0] * 3_000_000}}, {413}),
    (
        "dunder",
        {"model": {"kind": "expression", "formula": "().__class__.__bases__[0].__subclasses__()"}, "inputs": {}},
        {400},
    ),
    ("huge exponent", {"model": {"kind": "expression", "formula": "sum(x ** 1e308)"}, "inputs": {"x": [2.0]}}, {200}),
    (
        "nested parens",
        {"model": {"kind": "expression", "formula": "(" * 500 + "x" + ")" * 500}, "inputs": {"x": 1}},
        {413},
    ),
]


@pytest.mark.parametrize(("body", "statuses"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_input_gets_a_prompt_4xx_or_honest_200(live_server, body, statuses):
    data = None
    if body is None:  # a list nested 5,000 deep
        data = '{"model":{"kind":"expression","formula":"sum(x)"},"inputs":{"x":' + "[" * 5000 + "1" + "]" * 5000 + "}}"
    start = time.monotonic()
    r = post(live_server.url, body, data=data)
    assert r.status_code in statuses, r.text[:500]
    assert time.monotonic() - start < 10
    r.json()  # always valid JSON
    # and the workers are still healthy afterwards
    assert post(live_server.url, TUTORIAL_NEURON).status_code == 200


def test_non_finite_result_is_valid_json(live_server):
    r = post(live_server.url, {"model": {"kind": "neuron"}, "inputs": {"x": 20.0, "y": 0.0, "w": 1.0, "b": 0.0}})
    text = r.text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON literal {c}"))
    assert r.json()["loss"] == "Infinity"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1//gradients"), ("OPTIONS", "/v1//gradients"), ("GET", "/v1//models"), ("POST", "/v1///check")],
)
def test_a_doubled_slash_is_the_404_problem_not_a_redirect(live_server, method, path):
    """werkzeug would merge the slashes with a 308 and an HTML page: here an unknown path, like any other."""
    body = TUTORIAL_NEURON if method == "POST" else None
    r = requests.request(method, live_server.url + path, json=body, allow_redirects=False, timeout=10)
    assert (r.status_code, r.headers["Content-Type"]) == (404, "application/problem+json")
    assert "Location" not in r.headers and r.json()["instance"] == path


def test_concurrent_identical_requests_agree(live_server):
    """Fresh tensors per request: the same body gives the same bytes from either worker, however often."""
    with requests.Session() as session:
        bodies = {
            session.post(live_server.url + "/v1/gradients", json=TUTORIAL_NEURON, timeout=10).content for _ in range(20)
        }
    assert len(bodies) == 1


def test_preloaded_master_runs_no_torch_op(live_server):
    """gunicorn#2478: torch ops (and their thread pool) in a preloading master can hang forked workers."""
    master = live_server.proc.pid
    proc = Path(f"/proc/{master}")
    assert len((proc / "task" / str(master) / "children").read_text().split()) == 2
    assert "torch" in (proc / "maps").read_text()  # preloaded: the pages are shared
    assert "Threads:\t1\n" in (proc / "status").read_text()
