"""Every node of a returned autograd graph carries its forward value and dL/d(its output).

Each check recomputes the model independently in the test with plain torch, takes the gradient of the loss with
respect to every intermediate with torch.autograd.grad, and matches the service's nodes to those intermediates
by autograd op and value.
"""

from __future__ import annotations

import math

import orjson
import pytest
import torch

from conftest import TUTORIAL_NEURON, TestConfig
from schemas.requests import GradientRequestSchema
from service import create_app
from service.engine import cost
from service.engine.compute import estimate_cost
from service.engine.errors import LimitExceeded
from service.engine.limits import Limits
from service.engine.network import Network

LEAF = "AccumulateGrad"


def post(client, body: dict, path: str = "/v1/gradients"):
    response = client.post(path, data=orjson.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.data[:500]
    return response.json


def graph_of(client, body: dict) -> dict:
    return post(client, {**body, "include": ["graph"]})["graph"]


def independent(loss: torch.Tensor, intermediates: list[torch.Tensor]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(op, value, dL/d(value)) for each intermediate, by torch.autograd.grad in the test itself."""
    grads = torch.autograd.grad(loss, intermediates, allow_unused=True)
    return [
        (type(t.grad_fn).__name__, t.detach(), torch.zeros_like(t) if g is None else g)
        for t, g in zip(intermediates, grads, strict=True)
    ]


def assert_every_node_filled(graph: dict) -> None:
    for node in graph["nodes"]:
        assert node["shape"] is not None and node["value"] is not None and node["grad"] is not None, node


def assert_matches(graph: dict, expected: list[tuple[str, torch.Tensor, torch.Tensor]], rel: float = 1e-5) -> int:
    """Every function node equals one independently computed intermediate of its op, in value and in grad;
    returns how many nodes were matched (all of them)."""
    matched = 0
    for node in graph["nodes"]:
        if node["op"] == LEAF:
            continue
        value = torch.tensor(node["value"], dtype=torch.float64)
        grad = torch.tensor(node["grad"], dtype=torch.float64)
        candidates = [
            (v, g)
            for op, v, g in expected
            if op == node["op"] and v.shape == value.shape and torch.allclose(v.double(), value, rtol=rel, atol=1e-6)
        ]
        assert candidates, f"no intermediate of the test's own pass has op {node['op']} and value {node['value']}"
        assert any(torch.allclose(g.double(), grad, rtol=rel, atol=1e-6) for _, g in candidates), (
            node,
            [g for _, g in candidates],
        )
        matched += 1
    return matched


# --- the tutorial neuron ------------------------------------------------------------------------------------


def tutorial_pass(x=6.7, y=0.0, w=1.0, b=0.0, eps=1e-8):
    """The tutorial's neuron, written out here: every intermediate, and the loss."""
    x, y = torch.tensor(x), torch.tensor(y)
    w, b = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    wx = w * x
    z = wx + b
    y_pred = torch.sigmoid(z)
    p = torch.clamp(y_pred, eps, 1 - eps)
    log_p, q = torch.log(p), 1 - p
    log_q = torch.log(q)
    first, second = y * log_p, (1 - y) * log_q
    inner = first + second
    loss = -inner
    return loss, [wx, z, y_pred, p, log_p, q, log_q, first, second, inner, loss]


def test_every_neuron_node_has_value_grad_and_shape(client):
    body = post(client, {**TUTORIAL_NEURON, "include": ["graph"]})
    assert round(body["loss"], 4) == 6.7012
    assert round(body["gradients"]["w"], 4) == 6.6918 and round(body["gradients"]["b"], 4) == 0.9988
    graph = body["graph"]
    assert len(graph["nodes"]) == 13
    assert_every_node_filled(graph)
    loss, intermediates = tutorial_pass()
    assert assert_matches(graph, independent(loss, intermediates)) == 11

    by_label = {n["label"]: n for n in graph["nodes"]}
    assert {"w*x", "clamp(y_pred)", "log(y_pred)", "1 - y_pred", "log(1 - y_pred)"} <= set(by_label)
    z, y_pred = by_label["z"], by_label["y_pred"]
    assert y_pred["value"] == pytest.approx(1 / (1 + math.exp(-z["value"])), rel=1e-6)  # sigmoid(z)
    assert by_label["1 - y_pred"]["value"] == pytest.approx(1 - by_label["clamp(y_pred)"]["value"], abs=1e-7)
    assert by_label["w*x"]["value"] == pytest.approx(6.7)
    # the chain rule, node by node: dL/dz = dL/dy_pred * sigmoid'(z)
    sig = y_pred["value"]
    assert z["grad"] == pytest.approx(y_pred["grad"] * sig * (1 - sig), rel=1e-4)


def test_neuron_graph_with_a_vector_w_and_y_as_an_input(client):
    body = {
        "model": {"kind": "neuron", "reduction": "sum"},
        "inputs": {"x": [[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]], "y": [1, 0], "w": [0.1, -0.2, 0.3], "b": 0.05},
        "wrt": ["w", "b", "y"],
    }
    graph = graph_of(client, body)
    assert_every_node_filled(graph)
    labels = {n["label"] for n in graph["nodes"]}
    assert {"x*w", "sum(x*w)", "z", "y_pred", "1 - y", "losses", "loss"} <= labels

    x = torch.tensor(body["inputs"]["x"])
    y = torch.tensor([1.0, 0.0], requires_grad=True)
    w = torch.tensor(body["inputs"]["w"], requires_grad=True)
    b = torch.tensor(0.05, requires_grad=True)
    xw = x * w
    s = xw.sum(-1)
    z = s + b
    y_pred = torch.sigmoid(z)
    p = torch.clamp(y_pred, 1e-8, 1 - 1e-8)
    log_p, q = torch.log(p), 1 - p
    log_q, one_minus_y = torch.log(q), 1 - y
    first, second = y * log_p, one_minus_y * log_q
    inner = first + second
    losses = -inner
    loss = losses.sum()
    steps = [xw, s, z, y_pred, p, log_p, q, log_q, one_minus_y, first, second, inner, losses, loss]
    assert assert_matches(graph, independent(loss, steps)) == len(steps)


def test_per_sample_losses_graph(client):
    """reduction "none": the root is the vector of losses, backward runs from their sum (dL/d(root) = ones)."""
    body = {
        "model": {"kind": "neuron", "reduction": "none"},
        "inputs": {"x": [0.5, -2.0, 3.0], "y": [1, 0, 1], "w": 0.5, "b": -0.25},
    }
    graph = graph_of(client, body)
    assert_every_node_filled(graph)
    root = graph["nodes"][graph["root"]]
    assert root["label"] == "loss" and root["shape"] == [3] and root["grad"] == [1.0, 1.0, 1.0]
    x, y = torch.tensor([0.5, -2.0, 3.0]), torch.tensor([1.0, 0.0, 1.0])
    w = torch.full((3,), 0.5, requires_grad=True)  # one copy of w and b per sample
    b = torch.full((3,), -0.25, requires_grad=True)
    wx = w * x
    z = wx + b
    y_pred = torch.sigmoid(z)
    p = torch.clamp(y_pred, 1e-8, 1 - 1e-8)
    log_p, q = torch.log(p), 1 - p
    log_q = torch.log(q)
    first, second = y * log_p, (1 - y) * log_q
    inner = first + second
    losses = -inner
    steps = [wx, z, y_pred, p, log_p, q, log_q, first, second, inner, losses]
    assert assert_matches(graph, independent(losses.sum(), steps)) == len(steps)


def test_non_finite_node_values_are_strings(client):
    """float32 clamp blind spot: 1 - y_pred is 0, its log -inf; the graph still encodes as JSON."""
    body = post(client, {"model": {"kind": "neuron"}, "inputs": {"x": 40, "y": 0, "w": 1, "b": 0}})
    nodes = {n["label"]: n for n in body["graph"]["nodes"]}
    assert nodes["1 - y_pred"]["value"] == 0.0
    assert nodes["log(1 - y_pred)"]["value"] == "-Infinity"
    assert nodes["1 - y_pred"]["grad"] == "-Infinity"
    assert any(w.startswith("graph.nodes[") and "not finite" in w for w in body["warnings"])
    assert body["loss"] == "Infinity"


def test_graph_leaves_numeric_manual_and_intermediates_unchanged(client):
    plain = post(client, {**TUTORIAL_NEURON, "include": ["intermediates", "numeric", "manual"]})
    both = post(client, {**TUTORIAL_NEURON, "include": ["graph", "intermediates", "numeric", "manual"]})
    for key in ("loss", "gradients", "intermediates", "numeric", "manual"):
        assert both[key] == plain[key], key


def test_batch_graph_jobs_equal_single_requests(client):
    jobs = [
        {**TUTORIAL_NEURON, "inputs": {"x": x, "y": y, "w": 0.5, "b": 0.1}, "include": ["graph"]}
        for x, y in ((6.7, 0), (-1.5, 1), (0.25, 0))
    ]
    batch = post(client, {"jobs": jobs}, "/v1/batch")
    singles = [post(client, job) for job in jobs]
    assert [r["graph"] for r in batch["results"]] == [s["graph"] for s in singles]
    for result in batch["results"]:
        assert_every_node_filled(result["graph"])


def test_inference_mode_has_no_graph(client):
    body = post(client, {**TUTORIAL_NEURON, "mode": "inference", "include": ["graph"]})
    assert body["graph"] is None


# --- formulas --------------------------------------------------------------------------------------------


def test_formula_graph_values_and_grads(client):
    body = {
        "model": {"kind": "expression", "formula": "sum(sin(x**2) * exp(-y) + x * y)"},
        "inputs": {"x": [1.5, -0.5], "y": 0.75},
    }
    graph = graph_of(client, body)
    assert_every_node_filled(graph)
    assert {"x ** 2", "sin(x ** 2)", "exp(-y)", "x * y"} <= {n["label"] for n in graph["nodes"]}
    x = torch.tensor([1.5, -0.5], requires_grad=True)
    y = torch.tensor(0.75, requires_grad=True)
    sq = x**2
    s = torch.sin(sq)
    ny = torch.neg(y)
    e = torch.exp(ny)
    prod = s * e
    xy = x * y
    inner = prod + xy
    loss = torch.sum(inner)
    steps = [sq, s, ny, e, prod, xy, inner, loss]
    assert assert_matches(graph, independent(loss, steps)) == len(steps)


def test_x_squared_and_sin_x_squared_acceptance(client):
    square = post(client, {"model": {"kind": "expression", "formula": "x**2"}, "inputs": {"x": 3}})
    assert square["gradients"]["x"] == 6.0
    body = post(client, {"model": {"kind": "expression", "formula": "sin(x**2)"}, "inputs": {"x": 3}})
    assert round(body["gradients"]["x"], 4) == -5.4668
    assert_every_node_filled(body["graph"])


# --- networks --------------------------------------------------------------------------------------------

NETWORK = {
    "model": {
        "kind": "network",
        "layout": "torch",
        "layers": [{"type": "linear", "out_features": 3, "activation": "relu"}, {"type": "linear", "out_features": 2}],
        "loss": {"type": "softmax_cross_entropy"},
        "l2": {"reg": 0.1, "form": "half_sum_sq"},
    },
    "inputs": {
        "X": [[0.5, -1.0], [1.5, 0.25], [-0.75, 2.0]],
        "y": [0, 1, 1],
        "W1": [[0.2, -0.4], [0.7, 0.1], [-0.3, 0.5]],
        "b1": [0.1, -0.2, 0.05],
        "W2": [[0.3, -0.6, 0.2], [-0.1, 0.4, 0.9]],
        "b2": [0.0, 0.1],
    },
}


def test_network_graph_values_and_grads(client):
    body = post(client, {**NETWORK, "include": ["graph"]})
    graph = body["graph"]
    assert_every_node_filled(graph)
    labels = {n["label"] for n in graph["nodes"]}
    assert {"Z1", "A1", "Z2", "data loss", "L2 penalty", "loss"} <= labels

    t = {k: torch.tensor(v, dtype=torch.float32, requires_grad=k != "y") for k, v in NETWORK["inputs"].items()}
    w1t, b1r = t["W1"].t(), t["b1"].reshape(1, -1)
    mm1 = t["X"] @ w1t
    z1 = mm1 + b1r
    a1 = torch.relu(z1)
    w2t, b2r = t["W2"].t(), t["b2"].reshape(1, -1)
    mm2 = a1 @ w2t
    z2 = mm2 + b2r
    logp = torch.log_softmax(z2, dim=1)
    picked = logp.gather(1, t["y"].reshape(-1, 1).long())
    flat = picked.reshape(-1)
    neg = -flat
    data = neg.mean()
    sq1, sq2 = t["W1"] ** 2, t["W2"] ** 2
    s1, s2 = sq1.sum(), sq2.sum()
    stacked = torch.stack([s1, s2])
    total = stacked.sum()
    l2 = 0.1 * 0.5 * total
    loss = data + l2
    assert body["loss"] == pytest.approx(loss.item(), rel=1e-6)
    steps = [w1t, b1r, mm1, z1, a1, w2t, b2r, mm2, z2, logp, picked, flat, neg, data, sq1, sq2, s1, s2]
    steps += [stacked, total, l2, loss]
    assert assert_matches(graph, independent(loss, steps)) == len(graph["nodes"]) - 5  # all but the 5 leaves


def test_network_with_dout_labels_the_contraction(client):
    body = {
        "model": {"kind": "network", "layout": "cs231n", "layers": [{"type": "linear", "out_features": 2}]},
        "inputs": {"X": [[1.0, 2.0]], "W1": [[0.5, -0.5], [0.25, 1.0]], "b1": [0.1, 0.2]},
        "dout": [[1.0, -2.0]],
        "include": ["graph"],
    }
    body["model"]["loss"] = {"type": "none"}
    graph = post(client, body)["graph"]
    assert_every_node_filled(graph)
    product = next(n for n in graph["nodes"] if n["label"] == "output * dout")
    assert product["grad"] == [[1.0, 1.0]]  # d sum(out*dout) / d(out*dout) = ones


def test_svg_of_a_fully_valued_graph(client):
    dot_body = post(client, {**TUTORIAL_NEURON, "include": ["dot"]})
    assert "log(1 - y_pred)" in dot_body["dot"] and "value -6.701" in dot_body["dot"]


# --- the cost model prices the values the graph now carries -------------------------------------------------


def unary_terms(terms: int, size: int) -> dict:
    """`terms` distinct chains of unary minus and sin over x of `size` elements: ~4 nodes a term."""
    formula = " + ".join(f"sum(sin(-(-x + {k})))" for k in range(terms))
    return {"model": {"kind": "expression", "formula": formula}, "inputs": {"x": [0.5] * size}}


def test_estimate_prices_graph_values_only_when_asked():
    body = unary_terms(20, 50)
    with_graph = estimate_cost(GradientRequestSchema().load({**body, "include": ["graph"]}), Limits())
    without = estimate_cost(GradientRequestSchema().load({**body, "include": []}), Limits())
    nodes = 20 * 5  # +k, -, unary -, sin, sum per term, then the sums' adds
    assert with_graph - without >= nodes * (cost.GRAPH_NODE_BYTES + 2 * 50 * cost.RESPONSE_BYTES)


class HugeGraphValues(TestConfig):
    """An operator who raised GRAPH_VALUE_MAX_ELEMENTS: every node of a large formula would ship its values."""

    LIMITS = Limits(graph_value_max_elements=10**6)


def test_hostile_graph_refused_before_it_is_built():
    """76 nodes of 60,000 elements: forward and backward fit the budget, but with every value and gradient in
    the response (over 200 MiB of numbers) the request is refused with the graph named, before any tensor exists."""
    body = {**unary_terms(25, 60_000), "include": ["graph"]}
    loaded = GradientRequestSchema().load(body)
    assert estimate_cost(loaded, Limits()) < Limits().max_request_bytes  # at the default, values stop at 100
    with pytest.raises(LimitExceeded) as info:
        estimate_cost(loaded, HugeGraphValues.LIMITS)
    assert info.value.limit == "max_request_bytes"

    client = create_app(HugeGraphValues).test_client()
    response = client.post("/v1/gradients", data=orjson.dumps(body), content_type="application/json")
    assert response.status_code == 413
    problem = response.json
    breakdown = problem["limit"]["breakdown"]
    assert max(breakdown, key=breakdown.get) == "graph"
    assert "graph" in problem["hint"]


def test_default_limits_ship_shapes_not_values_of_large_nodes(client):
    body = post(client, {**unary_terms(2, 500), "include": ["graph"]})
    big = [n for n in body["graph"]["nodes"] if n["shape"] == [500]]
    assert big and all(n["value"] is None and n["grad"] is None for n in big)
    small = [n for n in body["graph"]["nodes"] if n["shape"] == []]
    assert small and all(n["value"] is not None and n["grad"] is not None for n in small)


def test_network_node_estimate_covers_the_graph():
    """The cost model's node count for a network is an upper estimate of the graph build_graph walks."""
    layers = [{"type": "linear", "out_features": 3, "activation": "tanh"}, {"type": "batchnorm"}] * 3
    spec = {**NETWORK["model"], "layers": [*layers, {"type": "linear", "out_features": 2}]}
    spec["init"] = {"scheme": "numpy_legacy", "seed": 0, "std": 0.5}
    net = Network(spec)
    one = cost.network_pass(spec, net.shapes({"X": (3, 2), "y": (3,)}), Limits())
    tensors = net.complete(
        {"X": torch.tensor(NETWORK["inputs"]["X"]), "y": torch.tensor([0.0, 1.0, 1.0])}, torch.float32
    )
    wrt = tuple(p.name for p in net.params)
    out = net.forward(net.prepare(tensors, wrt))
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            stack.extend(child for child, _ in fn.next_functions)
    assert len(seen) <= one.nodes + len(wrt)
