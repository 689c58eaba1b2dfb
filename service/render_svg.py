"""The autograd graph as an SVG picture: DOT text from the JSON graph, laid out by Graphviz `dot` in a subprocess.

Why a subprocess: Graphviz is a C program; running `dot -Tsvg` as a child keeps a crash or a runaway layout out
of the worker, and lets the request's deadline (engine/deadline.py) end it: the child is killed and reaped
whether the timer signal interrupts the wait or the remaining budget runs out, so no `dot` outlives its request.
"""

from __future__ import annotations

import math
import resource
import shutil
import signal
import subprocess

import orjson

from .engine.cost import HINTS
from .engine.deadline import seconds_left
from .engine.errors import DeadlineExceeded, LimitExceeded
from .engine.limits import Limits
from .errors import GraphvizFailed, GraphvizMissing, NoGraph
from .jsonio import OPTIONS

SVG = "image/svg+xml"
MAX_NUMBER_CHARS = 48  # a node shows at most this much of a value; tensors of up to 100 elements get an ellipsis
# Only what the picture needs: no scripts, no outside fetches, even when the SVG is opened on its own.
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
# The wait's own timeout ends this much after the request's: where the deadline's timer signal is armed, it is what
# ends the wait (a 503 like any other cut-off); the timeout is the backstop where no signal can come (threads).
TIMER_FIRST = 0.05
# What dot's time grows with is its layout graph: the nodes plus one virtual node per rank an edge crosses (a 64-layer
# network's L2 terms all meet at the loss, so a 717-node graph lays out 21,265), measured in bench/svg_layout.py
# (docs/playground.md). Above LARGE_LAYOUT_NODES of them dot gets a tenth of its crossing minimisation (mclimit),
# nslimit bounds the network simplex that places nodes along the ranks (nslimit x the nodes iterations: unbounded, it
# took 22 s of that 717-node graph's 28) and edges are straight lines (routing its 845 edges' splines took 0.36 s):
# 0.3 s in all. `max_svg_layout_nodes` (a 413 before dot starts) keeps the worst shape measured within ~0.7 s CPU.
LARGE_LAYOUT_NODES = 2_000
LARGE_GRAPH_LAYOUT = ", mclimit=0.1, nslimit=0.2, splines=line"
STYLES = {  # class -> DOT node attributes; leaves (inputs) and the root (the loss) stand out from the operations
    "leaf": 'shape=box, style="rounded,filled", fillcolor="#dbeafe", color="#1d4ed8"',
    "root": 'shape=box, style="filled,bold", fillcolor="#fde68a", color="#b45309", penwidth=2',
    "op": 'shape=box, style="filled", fillcolor="#f3f4f6", color="#4b5563"',
}


def number_text(value) -> str:
    """A value exactly as the JSON answer spells it (float32 shortest repr, "NaN" for non-finite), cut short."""
    text = value if isinstance(value, str) else orjson.dumps(value, option=OPTIONS).decode()
    return text if len(text) <= MAX_NUMBER_CHARS else text[: MAX_NUMBER_CHARS - 1] + "…"


def node_kind(node: dict, root) -> str:
    if node["id"] == root:
        return "root"
    return "leaf" if node["op"] == "AccumulateGrad" else "op"


def node_label(node: dict) -> str:
    """Op on the first line, then what is known: label, shape, value (forward) and grad (dL/d node)."""
    lines = [node["op"]]
    if node.get("label") is not None:
        lines.append(str(node["label"]))
    if node.get("shape") is not None:
        lines.append("shape " + number_text(node["shape"]))
    if node.get("value") is not None:
        lines.append("value " + number_text(node["value"]))
    if node.get("grad") is not None:
        lines.append("grad " + number_text(node["grad"]))
    return "\n".join(lines)


def _quote(text: str) -> str:
    """A DOT double-quoted string; `\\l`-style escapes cannot sneak in because backslashes are doubled."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def layout_nodes(graph: dict) -> int:
    """The nodes dot lays out: the graph's, plus a virtual node on every rank an edge crosses. An upper bound: dot ranks
    the nodes to minimise the edges' total length, so any ranking's total bounds it; the smaller of two is taken, every
    node as early as its inputs allow, or as late as its consumers allow (the root last): O(nodes + edges)."""
    ids = [node["id"] for node in graph["nodes"]]
    pairs = [(edge["from"], edge["to"]) for edge in graph["edges"]]
    early, late = _ranks(ids, pairs), _ranks(ids, [(b, a) for a, b in pairs])
    crossed = min(sum(early[b] - early[a] - 1 for a, b in pairs), sum(late[a] - late[b] - 1 for a, b in pairs))
    return len(ids) + max(crossed, 0)


def _ranks(ids: list, pairs: list[tuple]) -> dict:
    """Longest-path ranks along `pairs` (Kahn's order; the autograd graph has no cycles): a node one past its
    latest predecessor."""
    successors: dict = {i: [] for i in ids}
    waiting = dict.fromkeys(ids, 0)
    for a, b in pairs:
        successors[a].append(b)
        waiting[b] += 1
    rank = dict.fromkeys(ids, 0)
    ready = [i for i in ids if waiting[i] == 0]
    while ready:
        a = ready.pop()
        for b in successors[a]:
            rank[b] = max(rank[b], rank[a] + 1)
            waiting[b] -= 1
            if waiting[b] == 0:
                ready.append(b)
    return rank


def to_dot(graph: dict, layout: int | None = None) -> str:
    """DOT text for a JSON graph (`{"root", "nodes", "edges"}`); SVG element ids are `node-<id>` and `edge-<i>`.
    `layout`: its layout_nodes(), when known."""
    layout = layout_nodes(graph) if layout is None else layout
    large = LARGE_GRAPH_LAYOUT if layout > LARGE_LAYOUT_NODES else ""
    lines = [
        "digraph autograd {",
        f'  graph [rankdir=LR, bgcolor="white", pad=0.2, nodesep=0.3, ranksep=0.45{large}];',
        '  node [fontname="Helvetica,Arial,sans-serif", fontsize=11, margin="0.12,0.06"];',
        '  edge [color="#6b7280", arrowsize=0.7];',
    ]
    if not graph["nodes"]:
        lines.append('  empty [shape=plaintext, label="no autograd graph: the output depends on no wrt input"];')
    for node in graph["nodes"]:
        kind = node_kind(node, graph["root"])
        attributes = f'id="node-{node["id"]}", class="{kind}", {STYLES[kind]}, label={_quote(node_label(node))}'
        lines.append(f"  n{node['id']} [{attributes}];")
    for i, edge in enumerate(graph["edges"]):
        lines.append(f'  n{edge["from"]} -> n{edge["to"]} [id="edge-{i}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_svg(graph: dict | None, limits: Limits, mode: str = "grad") -> bytes:
    """The graph as SVG bytes, with `dot` given at most what is left of the request's wall-time budget."""
    if graph is None and mode == "inference":
        raise NoGraph('Inference mode builds no autograd graph; ask for mode "grad" to get a picture.')
    if graph is None:  # grad mode without a backward pass: the output is not a scalar
        raise NoGraph(
            "The output is not a scalar, so no backward pass ran and there is no graph to draw; "
            "reduce it (sum(...) or mean(...)) or send `dout`."
        )
    if len(graph["nodes"]) > limits.max_graph_nodes:  # build_graph already refuses these; the layout is superlinear
        raise LimitExceeded(
            "max_graph_nodes", limits.max_graph_nodes, f"autograd graph has more than {limits.max_graph_nodes} nodes"
        )
    layout = layout_nodes(graph)
    if layout > limits.max_svg_layout_nodes:
        raise LimitExceeded(
            "max_svg_layout_nodes",
            limits.max_svg_layout_nodes,
            f"the picture would lay out {layout} nodes ({len(graph['nodes'])} graph nodes, the rest one per rank an "
            f"edge crosses); the limit is {limits.max_svg_layout_nodes}",
            hint=HINTS["svg"],
            estimate=layout,
        )
    budget = min(seconds_left(), limits.max_wall_seconds)
    if budget <= 0:
        raise DeadlineExceeded(limits.max_wall_seconds)
    binary = shutil.which("dot")
    if binary is None:
        raise GraphvizMissing(
            "The SVG picture needs Graphviz's `dot` program, which is not installed on this server "
            "(Debian package graphviz); ask for application/json instead."
        )
    try:
        returncode, svg = run_dot(binary, to_dot(graph, layout).encode(), budget + TIMER_FIRST)
    except subprocess.TimeoutExpired:  # the cooperative end (no timer signal outside the main thread)
        raise DeadlineExceeded(limits.max_wall_seconds) from None
    if returncode != 0 or not svg:
        raise GraphvizFailed(f"dot exited with status {returncode} without a picture.")
    return svg


def run_dot(binary: str, dot_text: bytes, seconds: float) -> tuple[int, bytes]:
    """Run `dot -Tsvg` on `dot_text` for at most `seconds` (then TimeoutExpired); (exit status, stdout).

    The deadline's SIGALRM (engine/deadline.py) may raise DeadlineInterrupt at any bytecode. It is held back
    while the child is spawned, so the interrupt cannot land between fork and `process` being known (dot
    starts with SIGALRM blocked too, a signal it never uses); from then on, whatever ends the wait (the
    interrupt, the timeout, any error) kills and reaps the child.

    `dot` runs in a process group of its own: Ctrl-C in the terminal of `make run` sends SIGINT to the whole
    foreground group, and killed `dot` in the middle of a request the worker was finishing (a 500 graphviz-failed
    where a stop is graceful). A worker that dies itself (SIGKILL) cannot kill it; its CPU time is capped instead,
    to the request's budget (the kernel sends SIGXCPU, then SIGKILL): it uses no more than that, however it ends.
    """
    process = None
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        process = subprocess.Popen(
            [binary, "-Tsvg"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            process_group=0,
        )
        cpu = math.ceil(seconds) + 1
        resource.prlimit(process.pid, resource.RLIMIT_CPU, (cpu, cpu + 1))
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending deadline fires here, inside the try
        svg, _ = process.communicate(dot_text, timeout=seconds)
        return process.returncode, svg
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if process is not None and process.returncode is None:
            process.kill()
            process.wait()
            process.stdin.close()
            process.stdout.close()
