"""How long Graphviz's `dot` takes to lay out the autograd graphs the limits admit, against their size.

    python -m bench.svg_layout > /dev/null          # a markdown table on stderr; DEFAULT_TOO=0 skips dot's defaults

For each shape that matters (network chains with a tanh-like or a softmax activation, batchnorm layers in one block,
both mixed, a network without L2, a formula DAG) at several depths, the graph comes from the app in-process (JSON,
`include: ["graph"]`), and `dot -Tsvg` is timed on the DOT text render_svg.py writes (its layout options), and on the
same text without them (dot's defaults, cut off at CUTOFF seconds). `layout` is render_svg.layout_nodes(): the graph's
nodes plus the virtual nodes dot adds where an edge crosses ranks, what `max_svg_layout_nodes` caps. Wall seconds of
one run each, and CPU seconds (what other jobs on a 2-core shared machine inflate least); the worst CPU seconds of
a picture the cap admits, and the seconds per graph node, size the cap and cost.py's SVG_NODE_BYTES.
"""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import time

from service.app import create_app
from service.engine.limits import Limits
from service.render_svg import LARGE_GRAPH_LAYOUT, layout_nodes, to_dot

CUTOFF = float(os.environ.get("CUTOFF", 15))
DEPTHS = (8, 16, 32, 48, 64)


def network(layers: list[dict], l2: bool = True) -> dict:
    """The audit's networks: deeplearning.ai's layout, the hinge loss, L2 on the biases too (a long edge per
    parameter from its layer to the loss)."""
    model = {
        "kind": "network",
        "layout": "dlai",
        "layers": layers,
        "loss": {"type": "hinge"},
        "init": {"scheme": "numpy_legacy", "seed": 0, "std": 0.1},
        "generate": {"X": {"scheme": "numpy_legacy", "seed": 1, "std": 10, "shape": [4, 5]}},
    }
    if l2:
        model["l2"] = {"reg": 0.05, "form": "over_2m", "include_biases": True}
    return {"model": model, "inputs": {"y": [0, 1, 2, 0, 1]}}


def linear(activation: str | None = None) -> dict:
    return {"type": "linear", "out_features": 3, **({"activation": activation} if activation else {})}


SHAPES = {
    "chain, leaky_relu": lambda k: network([linear("leaky_relu")] * k),
    "chain, softmax": lambda k: network([linear("softmax")] * k),
    "batchnorms in one block": lambda k: network([linear()] + [{"type": "batchnorm"}] * (k - 1)),
    "softmax + batchnorm": lambda k: network([linear("softmax"), {"type": "batchnorm"}] * (k // 2)),
    "chain, relu, no L2": lambda k: network([linear("relu")] * k, l2=False),
}


def formula_dag(terms: int) -> dict:
    """A balanced sum of `terms` products of 70 variables reused everywhere (the audit's formula DAG)."""
    names = [f"v{i}" for i in range(70)]
    level = [f"{names[(7 * i) % 70]}*{names[(11 * i + 3) % 70]}" for i in range(terms)]
    while len(level) > 1:
        level = [f"({a}+{b})" for a, b in zip(level[::2], level[1::2], strict=True)]
    return {"model": {"kind": "expression", "formula": level[0]}, "inputs": dict.fromkeys(names, 0.5)}


def nested_formula(depth: int) -> dict:
    """x*(x+(x*(x+...))): x feeds every level, an edge from one leaf across each depth."""
    text = "x"
    for i in range(depth):
        text = f"x*({text}+y{i % 10})"
    return {"model": {"kind": "expression", "formula": text}, "inputs": {"x": 0.5, **{f"y{i}": 0.1 for i in range(10)}}}


def long_edges(length: int, leaves: int) -> dict:
    """Not a graph the API builds: a chain with `leaves` inputs each feeding both of its ends (every one an edge
    across the whole chain), what the cap must hold for any graph."""
    blank = {"op": "MulBackward0", "label": "a", "shape": [3], "value": [0.1, 0.2, 0.3], "grad": [0.1, 0.2, 0.3]}
    edges = [{"from": i + 1, "to": i} for i in range(length - 1)]
    for j in range(leaves):
        edges += [{"from": length + j, "to": length - 1 - j % 3}, {"from": length + j, "to": j % 5}]
    return {"root": 0, "nodes": [{"id": i, **blank} for i in range(length + leaves)], "edges": edges}


def random_dag(n: int) -> dict:
    """Not a graph the API builds either: every node with three edges to earlier ones (tests/test_svg.py's
    slow_graph), crossings everywhere."""
    blank = {"op": "MulBackward0", "label": None, "shape": None, "value": None, "grad": None}
    edges = [{"from": i, "to": (i * 7919 + j * 104729) % i} for i in range(1, n) for j in range(3)]
    return {"root": 0, "nodes": [{"id": i, **blank} for i in range(n)], "edges": edges}


def dot_seconds(text: str) -> tuple[float, float] | None:
    """(wall, CPU) seconds of `dot -Tsvg` on `text`, None past CUTOFF. CPU time is what the other jobs on a shared
    machine do not inflate."""
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        subprocess.run(["dot", "-Tsvg", "-o", os.devnull], input=text.encode(), check=True, timeout=CUTOFF)
    except subprocess.TimeoutExpired:
        return None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime


def cell(seconds: tuple[float, float] | None) -> str:
    return f"> {CUTOFF:g} s" if seconds is None else f"{seconds[0]:.2f} s ({seconds[1]:.2f} s CPU)"


def main() -> int:
    logging.getLogger("gradsvc.access").disabled = True
    client = create_app().test_client()
    cases = [(f"{name}, {k} layers", make(k)) for name, make in SHAPES.items() for k in DEPTHS]
    cases += [(f"formula DAG, {t} products", formula_dag(t)) for t in (16, 64)]
    cases += [(f"formula, x at every depth, {d} levels", nested_formula(d)) for d in (12, 24)]
    cases += [(f"synthetic: {k} leaves across a {n}-node chain", long_edges(n, k)) for n, k in ((300, 40), (300, 60))]
    cases += [(f"synthetic: random DAG, {n} nodes", random_dag(n)) for n in (500, 800)]
    default_too = os.environ.get("DEFAULT_TOO", "1") == "1"
    cap = Limits().max_svg_layout_nodes
    print("| graph | nodes | edges | layout nodes | SVG | dot, shipped options | dot's defaults |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|", file=sys.stderr)
    worst = 0.0
    for name, body in cases:
        graph = body if "edges" in body else client.post("/v1/gradients", json={**body, "include": ["graph"]}).json
        graph = graph.get("graph", graph)  # a request's answer, or a synthetic graph itself
        layout = layout_nodes(graph)
        text = to_dot(graph, layout)
        shipped = dot_seconds(text)
        default = dot_seconds(text.replace(LARGE_GRAPH_LAYOUT, "")) if default_too else None
        if layout <= cap and not name.startswith("synthetic"):
            worst = max(worst, shipped[1] if shipped else CUTOFF)
        admitted = "drawn" if layout <= cap else "413"
        row = [name, len(graph["nodes"]), len(graph["edges"]), f"{layout:,}", admitted, cell(shipped)]
        row.append(cell(default) if default_too else "-")
        print("| " + " | ".join(map(str, row)) + " |", file=sys.stderr, flush=True)
    print(f"worst drawn of the API's graphs: {worst:.2f} s CPU (shipped options; cap {cap})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
