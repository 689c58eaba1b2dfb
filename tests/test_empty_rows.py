"""Empty dimensions and short lists are not free (docs/limits.md, "How empty dimensions and lists are counted").

A tensor of shape [n, 0] holds no number, but its JSON writes n empty lists, and so does every echo of it (points,
graph nodes, intermediates, answers). Every limit and price counts it as cost.slots() does, the product of its
dimensions with each 0 counted as 1. A body of millions of short lists is priced by the time its walks take. Each
hostile body below was 200 after seconds (hundreds of MiB, 300 MB responses) or 503 past the deadline.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import orjson
import pytest
import requests

from conftest import balanced_sum
from service import jsonio
from service.engine import cost
from service.engine.formula import parse_formula
from service.engine.limits import Limits

PROBLEM = "application/problem+json"
LIMITS = Limits()


def expression(formula: str, include=(), **inputs) -> dict:
    return {"model": {"kind": "expression", "formula": formula}, "inputs": inputs, "include": list(include)}


def check(formula: str, submission: dict, **inputs) -> dict:
    return {"model": {"kind": "expression", "formula": formula}, "inputs": inputs, "submission": submission}


def broadcast_rows(n: int, last: int = 0) -> dict:
    """x [n,1,1,last] * y [1,n,1,last] * z [1,1,n,last]: n**3 rows from a body of O(n) bytes (the audit's F1e)."""
    row = [0.5] * last
    return {
        **expression("x*y*z", ["intermediates"], x=[[[row]]] * n, y=[[[row]] * n], z=[[[row] * n]]),
        "mode": "inference",
    }


def send(server, path: str, body: dict) -> requests.Response:
    """POST `body`; the request ends within the deadline plus generous slack, and the worker that took it lives."""
    workers = set(server.worker_pids()) if server.proc is not None else set()
    limit = LIMITS.max_wall_seconds
    start = time.monotonic()
    response = requests.post(
        server.url + path, data=orjson.dumps(body), headers={"Content-Type": "application/json"}, timeout=limit + 60
    )
    assert time.monotonic() - start < limit + 30
    if workers:
        assert set(server.worker_pids()) == workers  # no worker died or was replaced
    return response


def refused(response: requests.Response, limit: str) -> dict:
    assert response.status_code == 413, response.text[:300]
    assert response.headers["Content-Type"] == PROBLEM
    assert len(response.content) < 2000
    problem = response.json()
    assert problem["limit"]["name"] == limit, problem
    return problem


def test_an_empty_dimension_counts_as_one():
    assert [cost.slots(s) for s in [(), (0,), (3, 0), (1_000_000, 0), (5, 0, 7), (2, 3)]] == [1, 1, 3, 1_000_000, 35, 6]
    assert cost.list_count((1_000_000, 0)) == 1_000_000  # the lists themselves are counted as they are


def test_rows_of_no_number_cost_what_rows_of_one_number_cost():
    """The price of [n,n,n,0] is the price of [n,n,n,1]: every part of the estimate, not only its total."""

    def estimate(last: int) -> dict:
        shapes = {"x": (60, 1, 1, last), "y": (1, 60, 1, last), "z": (1, 1, 60, last)}
        request = {"model": {"kind": "expression"}, "include": ["intermediates", "graph"], "dtype": "float32"}
        model = SimpleNamespace(formula=parse_formula("x*y*z", LIMITS))
        return dict(cost.gradients_estimate({**request, "mode": "grad"}, model, shapes, ("x",), LIMITS).parts)

    empty, one = estimate(0), estimate(1)
    assert empty == one
    assert empty["response"] >= 60**3 * cost.RESPONSE_BYTES  # the output's 216,000 rows are in the response


def test_broadcast_rows_are_refused_over_the_element_limit(live_server):
    """n=200: 8,000,000 empty lists per tensor from a 3.7 KB body (was +817 MiB, past the deadline; n**3)."""
    problem = refused(send(live_server, "/v1/gradients", broadcast_rows(200)), "max_tensor_elements")
    assert "8000000 elements" in problem["detail"] and "empty dimension" in problem["detail"]


def test_broadcast_rows_under_the_limit_are_what_one_number_rows_are(live_server):
    """n=60 is admitted and priced like [60,60,60,1]: the same shapes as with one number a row, and less text."""
    empty = send(live_server, "/v1/gradients", broadcast_rows(60))
    one = send(live_server, "/v1/gradients", broadcast_rows(60, last=1))
    assert empty.status_code == one.status_code == 200
    assert len(empty.content) < len(one.content) < 4_000_000
    assert empty.json()["loss"] == [[[[]] * 60] * 60] * 60


def test_empty_rows_at_every_point_are_refused(live_server):
    """The audit's (a): a [N,0] input at 100 drawn points echoes N rows per point (was 300 MB in 8 s)."""
    body = {**check("sum(x)", {"loss": [0] * 100}, x=[[]] * 100_000), "domain": {"x": [0, 1]}, "n_points": 100}
    problem = refused(send(live_server, "/v1/check", body), "max_total_elements")
    assert "10000000 elements" in problem["detail"]


def test_empty_rows_in_a_graph_are_priced_and_shown_by_shape(live_server):
    """The audit's (b): every graph node of a [N,0] input carried its rows twice (value and grad): 503, +843 MiB."""
    formula = "sum(" + balanced_sum([f"sin(x*{i + 1})" for i in range(40)]) + ")"
    refused(send(live_server, "/v1/gradients", expression(formula, ["graph"], x=[[]] * 300_000)), "max_request_bytes")
    small = send(live_server, "/v1/gradients", expression("sum(sin(x))", ["graph"], x=[[]] * 200))
    assert small.status_code == 200, small.text[:300]
    nodes = [node for node in small.json()["graph"]["nodes"] if node["shape"] == [200, 0]]
    assert nodes and all(node["value"] is None and node["grad"] is None for node in nodes)  # 200 rows > 100


def test_a_network_generating_empty_rows_is_refused(live_server):
    """The audit's (c): a ~450-byte body generating X, y of shape [300000, 0] through 60 layers (503, +321 MiB)."""
    layers = [{"type": "relu"}, {"type": "tanh"}, {"type": "sigmoid"}, {"type": "batchnorm"}, {"type": "softmax"}] * 12
    generate = {name: {"scheme": "zeros", "shape": [300_000, 0]} for name in ("X", "y")}
    model = {"kind": "network", "layout": "cs231n", "layers": layers, "loss": {"type": "mse"}}
    model.update(init={"scheme": "ones"}, generate=generate)
    body = {"model": model, "inputs": {}, "include": ["graph", "intermediates"]}
    refused(send(live_server, "/v1/gradients", body), "max_request_bytes")


@pytest.mark.parametrize("answer", [[[]] * 200_000, [[[]]] * 100_000], ids=["rows", "rows-of-rows"])
def test_a_wrong_shape_answer_of_empty_rows_is_summarized(live_server, answer):
    """The audit's (d): `actual` echoed a 3 MB answer of empty lists to a scalar check; now a bounded summary."""
    body = check("x**2", {"gradients": {"x": answer}}, x=3.0)
    response = send(live_server, "/v1/check", body)
    assert response.status_code == 200, response.text[:300]
    assert len(response.content) < 3000
    (result,) = response.json()["checks"]
    assert result["actual"] is None and "shape [" in result["actual_summary"]
    assert "wrong shape" in result["message"]


def test_an_answer_of_millions_of_short_lists_is_refused_before_it_is_parsed(live_server):
    """F2: a 6 MB answer of `[[[]]] * 1000000` (2 M lists) took 6.6 s and +253 MiB; its lists are priced by their
    time (256 bytes more for each list beyond one a value), so the body is a 413 before orjson builds it, whether
    or not the answer is graded."""
    body = check("x**2", {"gradients": {"x": [[[]]] * 1_000_000}}, x=3.0)
    for checks in (None, {"loss": {"points": 1}}):
        sent = body if checks is None else {**body, "checks": checks}
        problem = refused(send(live_server, "/v1/check?format=prairielearn", sent), "max_request_bytes")
        assert set(problem["limit"]["breakdown"]) == {"body"}
        assert "lists and objects" in problem["detail"] and "of them beyond one a value" in problem["detail"]


@pytest.mark.parametrize(
    "inputs",
    [
        {"x": [[0.5]] * 1_000_000, "y": [1.0] * 1_000_000, "w": [0.1], "b": 0.0},  # a neuron's 1 M rows of one feature
        {"x": [[0.5, 1.0]] * 500_000, "y": [1.0] * 500_000, "w": [0.1, 0.2], "b": 0.0},
    ],
)
def test_rows_of_numbers_pay_no_list_price_beyond_their_parse(inputs):
    """A tensor's rows hold a number each or more: only lists beyond one a value pay for their walks' time. Priced at
    160 bytes every list, these honest 10 MB bodies (answered in under a second) were refused (a second audit)."""
    raw = orjson.dumps({"model": {"kind": "neuron"}, "inputs": inputs})
    assert jsonio.parse_bytes(raw, len(jsonio.KEY_END.findall(raw))) <= Limits().max_request_bytes
    hostile = orjson.dumps(check("x**2", {"gradients": {"x": [[[[[[0]]]]]] * 400_000}}, x=3.0))  # 4.8 MB, 2.2 s of CPU
    assert jsonio.parse_bytes(hostile, len(jsonio.KEY_END.findall(hostile))) > Limits().max_request_bytes


def test_legitimately_empty_tensors_still_work_byte_for_byte(live_server):
    """Shapes [0] and [3,0] give the answers they always gave (the responses are pinned, apart from the id)."""

    def answer(path: str, body: dict) -> bytes:
        response = send(live_server, path, body)
        assert response.status_code == 200, response.text[:300]
        data = response.json()
        data.pop("request_id", None)
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)

    assert answer("/v1/gradients", expression("sum(x)", x=[])) == (
        b'{"dot":null,"dtype":"float32","gradients":{"x":[]},"graph":null,"hessian":null,"intermediates":null,'
        b'"loss":0.0,"manual":null,"mode":"grad","numeric":null,"requires_grad":true,"warnings":[]}'
    )
    graph = orjson.loads(answer("/v1/gradients", expression("sum(x*2)", ["graph"], x=[[], [], []])))
    assert graph["gradients"] == {"x": [[], [], []]} and graph["loss"] == 0.0
    assert [node["value"] for node in graph["graph"]["nodes"]] == [0.0, [[], [], []], [[], [], []]]  # 3 rows: shown
    body = check("sum(x**2)", {"loss": 0.0, "gradients": {"x": [[], [], []]}}, x=[[], [], []])
    graded = orjson.loads(answer("/v1/check", body))
    assert graded["score"] == graded["max_score"] == 2.0
    assert [c["actual"] for c in graded["checks"]] == [0.0, [[], [], []]]
