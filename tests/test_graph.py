"""Autograd graph serialization: structure, determinism, sharing, limits and DOT output."""

from __future__ import annotations

import json
import math
import subprocess
from collections import deque

import pytest
import torch

from conftest import require_binary
from service.engine.errors import LimitExceeded
from service.engine.graph import Trace, build_graph, to_dot
from service.engine.limits import Limits

LIMITS = Limits()
EPS = 1e-7


def neuron() -> dict:
    """The tutorial neuron: one sigmoid unit with binary cross-entropy, after backward()."""
    x = torch.tensor(6.7)
    y = torch.tensor(0.0)
    w = torch.tensor(1.0, requires_grad=True)
    b = torch.tensor(0.0, requires_grad=True)
    z = w * x + b
    y_pred = torch.sigmoid(z)
    p = torch.clamp(y_pred, EPS, 1 - EPS)
    loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    for t in (z, y_pred, loss):
        t.retain_grad()
    loss.backward()
    return build_graph(
        loss,
        leaves={"x": x, "y": y, "w": w, "b": b},
        known={"z": z, "y_pred": y_pred, "loss": loss},
        limits=LIMITS,
    )


def plain(value):
    """Tensors -> JSON values the way a caller would encode them (non-finite as strings)."""
    if isinstance(value, torch.Tensor):
        return plain(value.tolist())
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def by_op(graph: dict, op: str) -> list[dict]:
    return [n for n in graph["nodes"] if n["op"] == op]


def outgoing(graph: dict, node_id: int) -> list[dict]:
    return [e for e in graph["edges"] if e["from"] == node_id]


def assert_well_formed(graph: dict) -> None:
    """Ids are 0..n-1 in list order, edges join existing nodes, acyclic, everything reaches the root."""
    ids = [n["id"] for n in graph["nodes"]]
    assert ids == list(range(len(ids)))
    assert graph["root"] == 0
    for e in graph["edges"]:
        assert e["from"] in ids and e["to"] in ids
    # Kahn's topological sort consumes every node only if there is no cycle
    indegree = {i: 0 for i in ids}
    for e in graph["edges"]:
        indegree[e["to"]] += 1
    ready = deque(i for i in ids if indegree[i] == 0)
    seen = 0
    while ready:
        i = ready.popleft()
        seen += 1
        for e in outgoing(graph, i):
            indegree[e["to"]] -= 1
            if indegree[e["to"]] == 0:
                ready.append(e["to"])
    assert seen == len(ids), "graph has a cycle"
    # walk edges backwards from the root: every node must feed into it
    reached, todo = {graph["root"]}, [graph["root"]]
    while todo:
        i = todo.pop()
        for e in graph["edges"]:
            if e["to"] == i and e["from"] not in reached:
                reached.add(e["from"])
                todo.append(e["from"])
    assert reached == set(ids)


def run_dot(text: str) -> subprocess.CompletedProcess:
    dot = require_binary("dot", package="graphviz")
    return subprocess.run([dot, "-Tsvg"], input=text, capture_output=True, text=True, timeout=30)


def test_neuron_graph():
    graph = neuron()
    assert_well_formed(graph)
    root = graph["nodes"][0]
    assert root["op"] == "NegBackward0"
    assert root["label"] == "loss"
    assert root["grad"].item() == 1.0

    leaves = {n["label"]: n for n in by_op(graph, "AccumulateGrad")}
    assert set(leaves) == {"w", "b"}  # x and y do not require grad
    assert round(leaves["w"]["grad"].item(), 4) == 6.6918
    assert round(leaves["b"]["grad"].item(), 4) == 0.9988
    assert leaves["w"]["value"].item() == 1.0
    assert leaves["w"]["shape"] == []

    (sigmoid,) = by_op(graph, "SigmoidBackward0")
    assert sigmoid["label"] == "y_pred"
    assert round(sigmoid["value"].item(), 4) == 0.9988
    assert sigmoid["shape"] == []
    assert round(sigmoid["grad"].item(), 2) == round(1 / (1 - sigmoid["value"].item()), 2)  # dL/dp

    (z,) = [n for n in graph["nodes"] if n["label"] == "z"]
    assert z["op"] == "AddBackward0"
    assert round(z["grad"].item(), 4) == 0.9988
    assert outgoing(graph, leaves["b"]["id"]) == [{"from": leaves["b"]["id"], "to": z["id"]}]

    # nodes nobody named still appear, just without value/grad
    (clamp,) = by_op(graph, "ClampBackward1")
    assert clamp["label"] is None and clamp["value"] is None and clamp["grad"] is None


def test_values_are_detached_copies():
    graph = neuron()
    for node in graph["nodes"]:
        for key in ("value", "grad"):
            if node[key] is not None:
                assert not node[key].requires_grad


def test_deterministic():
    first = json.dumps(plain(neuron()))
    second = json.dumps(plain(neuron()))
    assert first == second


def test_ids_are_depth_first_in_input_order():
    a = torch.tensor(1.0, requires_grad=True)
    b = torch.tensor(2.0, requires_grad=True)
    out = a.exp() * b.sin()
    out.backward()
    graph = build_graph(out, leaves={"a": a, "b": b}, known={}, limits=LIMITS)
    ops = [(n["op"], n["label"]) for n in graph["nodes"]]
    assert ops == [
        ("MulBackward0", None),
        ("ExpBackward0", None),
        ("AccumulateGrad", "a"),
        ("SinBackward0", None),
        ("AccumulateGrad", "b"),
    ]
    assert graph["edges"] == [{"from": 1, "to": 0}, {"from": 3, "to": 0}, {"from": 2, "to": 1}, {"from": 4, "to": 3}]
    # root not in `known`: value is the output, grad is dL/dL = 1
    assert graph["nodes"][0]["value"].item() == pytest.approx(math.exp(1) * math.sin(2))
    assert graph["nodes"][0]["grad"].item() == 1.0


def test_shared_subexpression_appears_once():
    x = torch.tensor(1.5, requires_grad=True)
    u = x**2
    u.retain_grad()
    out = torch.sin(u) + u
    out.backward()
    graph = build_graph(out, leaves={"x": x}, known={"x ** 2": u}, limits=LIMITS)
    assert_well_formed(graph)
    (pow_node,) = by_op(graph, "PowBackward0")
    assert pow_node["label"] == "x ** 2"
    assert len(outgoing(graph, pow_node["id"])) == 2
    assert {graph["nodes"][e["to"]]["op"] for e in outgoing(graph, pow_node["id"])} == {"SinBackward0", "AddBackward0"}
    assert pow_node["grad"].item() == pytest.approx(math.cos(2.25) + 1)
    assert len(by_op(graph, "AccumulateGrad")) == 1


def test_input_used_twice_is_one_node_with_one_edge_per_slot():
    x = torch.tensor(3.0, requires_grad=True)
    out = x * x
    out.backward()
    graph = build_graph(out, leaves={"x": x}, known={}, limits=LIMITS)
    assert_well_formed(graph)
    (leaf,) = by_op(graph, "AccumulateGrad")
    assert leaf["label"] == "x" and leaf["grad"].item() == 6.0
    assert graph["edges"] == [{"from": leaf["id"], "to": 0}, {"from": leaf["id"], "to": 0}]


def test_big_tensors_keep_shape_but_drop_values():
    x = torch.randn(20, 10, requires_grad=True)
    doubled = x * 2
    doubled.retain_grad()
    out = doubled.sum()
    out.backward()
    graph = build_graph(out, leaves={"x": x}, known={"2x": doubled}, limits=Limits(graph_value_max_elements=100))
    (leaf,) = by_op(graph, "AccumulateGrad")
    assert leaf["shape"] == [20, 10] and leaf["value"] is None and leaf["grad"] is None
    (mul,) = by_op(graph, "MulBackward0")
    assert mul["label"] == "2x" and mul["shape"] == [20, 10] and mul["value"] is None and mul["grad"] is None
    assert graph["nodes"][0]["value"].item() == pytest.approx(x.sum().item() * 2, rel=1e-5)

    small = build_graph(out, leaves={"x": x}, known={"2x": doubled}, limits=Limits(graph_value_max_elements=200))
    (leaf,) = by_op(small, "AccumulateGrad")
    assert torch.equal(leaf["grad"], torch.full((20, 10), 2.0))


def test_node_limit():
    x = torch.tensor(0.5, requires_grad=True)
    y = x
    for _ in range(100):
        y = y * 1.001
    y.backward()
    with pytest.raises(LimitExceeded) as info:
        build_graph(y, leaves={"x": x}, known={}, limits=Limits(max_graph_nodes=50))
    assert info.value.limit == "max_graph_nodes"
    assert info.value.value == 50
    graph = build_graph(y, leaves={"x": x}, known={}, limits=Limits(max_graph_nodes=101))
    assert len(graph["nodes"]) == 101


def test_deep_chain_does_not_recurse():
    x = torch.tensor(0.5, requires_grad=True)
    y = x
    for _ in range(3000):
        y = y + 1.0
    y.backward()
    graph = build_graph(y, leaves={"x": x}, known={}, limits=LIMITS)
    assert len(graph["nodes"]) == 3001
    assert graph["nodes"][-1]["label"] == "x"


def test_output_is_a_leaf():
    x = torch.tensor(4.0, requires_grad=True)
    x.backward()
    graph = build_graph(x, leaves={"x": x}, known={}, limits=LIMITS)
    assert graph["root"] == 0 and graph["edges"] == []
    (node,) = graph["nodes"]
    assert node["op"] == "AccumulateGrad" and node["label"] == "x" and node["shape"] == []
    assert node["value"].item() == 4.0 and node["grad"].item() == 1.0


def test_output_without_grad_gives_empty_graph():
    c = torch.tensor(2.0)
    graph = build_graph(c * 3, leaves={"c": c}, known={}, limits=LIMITS)
    assert graph == {"root": None, "nodes": [], "edges": []}
    assert run_dot(to_dot(graph)).returncode == 0


def test_dot_parses_with_graphviz():
    graph = neuron()
    text = to_dot(graph)
    assert text.startswith("digraph autograd {\n  rankdir=LR;")
    for e in graph["edges"]:
        assert f"n{e['from']} -> n{e['to']};" in text
    assert "value 0.9988" in text and "grad 6.692" in text
    assert "shape=box" in text
    result = run_dot(text)
    assert result.returncode == 0, result.stderr
    assert to_dot(neuron()) == text  # deterministic


def test_dot_accepts_encoded_values_and_escapes_labels():
    x = torch.tensor([[float("nan")]], requires_grad=True)
    v = torch.tensor([1.0, 2.0], requires_grad=True)
    named = (x * 2).sum()
    named.retain_grad()
    out = named + v.sum()
    out.backward()
    graph = build_graph(out, leaves={'say "hi" \\ now\nplease': x, "v": v}, known={'a"b': named}, limits=LIMITS)
    encoded = plain(graph)
    text = to_dot(encoded)
    assert text == to_dot(json.loads(json.dumps(encoded)))
    assert "value NaN" in text and '\\"hi\\"' in text
    result = run_dot(text)
    assert result.returncode == 0, result.stderr
    assert run_dot(to_dot(graph)).returncode == 0  # raw tensors too (nan printed by %.4g rules)


def test_trace_gives_every_node_value_and_grad():
    """A Trace (labels where given, capture() for the rest) fills in the nodes `known` does not name; its grads
    equal torch.autograd.grad's, and the leaves get the .grad backward() would give them."""
    a = torch.tensor([0.5, 1.5], requires_grad=True)
    b = torch.tensor(2.0, requires_grad=True)
    trace = Trace(LIMITS.graph_value_max_elements)
    with trace.capture():
        e = a.exp()
        s = b.sin()
        out = (e * s).sum()
    trace.add(("exp(a)", e), ("unused", torch.tensor(1.0)))  # a label replaces the capture's None
    named = {"sin(b)": s}
    s.retain_grad()
    trace.backward(out, [a, b])
    graph = build_graph(out, leaves={"a": a, "b": b}, known=named, limits=LIMITS, trace=trace)
    assert_well_formed(graph)
    labels = {n["op"]: n["label"] for n in graph["nodes"] if n["op"] != "AccumulateGrad"}
    assert labels == {"SumBackward0": None, "MulBackward0": None, "ExpBackward0": "exp(a)", "SinBackward0": "sin(b)"}
    a2, b2 = a.detach().requires_grad_(), b.detach().requires_grad_()
    e2, s2 = a2.exp(), b2.sin()
    m2 = e2 * s2
    grads = torch.autograd.grad(m2.sum(), [e2, s2, m2])
    expected = dict(zip(("ExpBackward0", "SinBackward0", "MulBackward0"), grads, strict=True))
    for node in graph["nodes"]:
        assert node["value"] is not None and node["grad"] is not None and node["shape"] is not None
        if node["op"] in expected:
            assert torch.allclose(node["grad"], expected[node["op"]])
    assert torch.allclose(a.grad, s2.detach() * e2.detach())
    assert b.grad.item() == pytest.approx((e2 * b2.cos()).sum().item())


def test_trace_skips_gradients_of_large_tensors():
    x = torch.randn(20, 10, requires_grad=True)
    trace = Trace(100)
    doubled = x * 2
    trace.add(("2x", doubled))
    out = doubled.sum()
    trace.backward(out, [x])
    graph = build_graph(out, leaves={"x": x}, known={}, limits=Limits(graph_value_max_elements=100), trace=trace)
    (mul,) = by_op(graph, "MulBackward0")
    assert mul["label"] == "2x" and mul["shape"] == [20, 10] and mul["value"] is None and mul["grad"] is None
    assert trace.grads == {}  # nothing of more than 100 elements was kept
    assert torch.equal(x.grad, torch.full((20, 10), 2.0))
