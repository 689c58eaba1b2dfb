"""Serialize an autograd graph (after backward) into deterministic JSON-ready dicts and Graphviz DOT."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .cost import slots
from .errors import LimitExceeded
from .limits import Limits

LEAF_OP = "AccumulateGrad"


class Trace:
    """A forward pass's intermediate tensors, by the autograd node that made them, so every node of the graph can
    show its forward value and dL/d(its output), not only the ones the model names in `record`.

    A model adds what it computes (`add`, with a readable label where it knows one), or runs its forward inside
    `capture()`, which adds every torch call's output unlabelled. `backward()` then runs the backward pass and
    keeps the gradient of every traced tensor small enough to ship (`graph_value_max_elements`; larger ones
    appear in the graph by shape only). Values are the forward tensors themselves (no copies), kept until the
    response is encoded.
    """

    def __init__(self, max_elements: int) -> None:
        self.max_elements = max_elements
        self.tensors: dict[Any, tuple[str | None, torch.Tensor]] = {}  # grad_fn -> (label, its output)
        self._small_fns: list[Any] = []  # the traced outputs of at most max_elements elements, and their grad_fn
        self._small: list[torch.Tensor] = []
        self.grads: dict[Any, torch.Tensor | None] = {}  # grad_fn -> dL/d(its output), after backward()

    def add(self, *labelled: tuple[str | None, torch.Tensor]) -> None:
        """Trace ops' outputs, each with its label or None (tensors without a grad_fn are not graph nodes);
        a label replaces a missing one. Several in one call: on the neuron's hot path each call counts."""
        for label, tensor in labelled:
            fn = tensor.grad_fn
            if fn is None:
                continue
            known = self.tensors.get(fn)
            if known is None:
                self.tensors[fn] = (label, tensor)
                if slots(tensor.shape) <= self.max_elements:
                    self._small_fns.append(fn)
                    self._small.append(tensor)
            elif label is not None and known[0] is None:
                self.tensors[fn] = (label, known[1])

    def capture(self) -> _Capture:
        """A context in which every torch function's tensor output is traced (torch.overrides.TorchFunctionMode:
        several µs a call, so for models whose forward is many small ops, not for the neuron's hot path)."""
        return _Capture(self)

    def backward(self, root: torch.Tensor, leaves: list[torch.Tensor]) -> None:
        """What root.backward() does for fresh `leaves` (their .grad; retain_grad() hooks run too), and the small
        traced tensors' gradients, from one torch.autograd.grad call: it hands back the gradient reaching each
        input as it is, where retain_grad() would clone each one (~2 µs a tensor on the neuron's hot path)."""
        grads = torch.autograd.grad(root, leaves + self._small, allow_unused=True)
        for leaf, grad in zip(leaves, grads, strict=False):
            if grad is not None:  # as AccumulateGrad stores it: laid out like the leaf
                leaf.grad = grad.contiguous()
        self.grads = dict(zip(self._small_fns, grads[len(leaves) :], strict=True))


class _Capture(TorchFunctionMode):
    """Records each torch call's tensor output into a Trace. Calls made inside a Python-level torch function
    (F.leaky_relu calling its kernel) run with the mode off, as TorchFunctionMode does: their output is the
    outer call's, the one a graph node needs; an op with several outputs is traced by its first."""

    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        first = result[0] if isinstance(result, (tuple, list)) and result else result
        if isinstance(first, torch.Tensor):
            self.trace.add((None, first))
        return result


def build_graph(
    output: torch.Tensor,
    *,
    leaves: dict[str, torch.Tensor],
    known: dict[str, torch.Tensor],
    limits: Limits,
    trace: Trace | None = None,
) -> dict:
    """Walk ``output.grad_fn`` into ``{"root", "nodes", "edges"}`` so clients can draw the chain rule.

    Meant to run after ``backward()``: only ``grad_fn``, ``next_functions`` and
    ``AccumulateGrad.variable`` are touched, never the (possibly freed) saved tensors.

    :param leaves: input name -> leaf tensor; names the ``AccumulateGrad`` nodes (matched with ``is``).
    :param known: label -> non-leaf tensor the caller ``retain_grad()``-ed; gives a function node
        its label, forward value and incoming gradient dL/d(node). Matched by ``grad_fn is fn``;
        on a clash the first key in dict order wins.
    :param trace: the forward pass's other intermediates (see Trace): every function node found there gets its
        value and grad too, and the trace's label when `known` gives none.

    Rules, all deterministic:

    * Ids are assigned in depth-first pre-order from the root (id 0), children taken in
      ``next_functions`` order; ``None`` entries (inputs not requiring grad) are skipped, so
      constants and leaves without ``requires_grad`` never appear.
    * Each autograd function appears once (DAG, not tree): ``x * x`` has one node for ``x``.
    * Edges run forward, ``{"from": input_side, "to": consumer}``, one per input slot: ``x * x``
      gives two identical edges from ``x`` to ``MulBackward0`` (the op really has two inputs).
      Edges are listed by consumer id, then slot.
    * ``value``/``grad`` are detached views of the live tensors, not copies (or None when unknown):
      they are only read, to encode the response, after every computation of the request is done.
      Both are None for tensors with more than ``limits.graph_value_max_elements`` elements, while
      ``shape`` is kept.
    * The root always has a value (``output``) and, unless a retained grad says otherwise,
      grad = ones (dL/dL = 1; assumes backward() ran on ``output`` without a custom gradient).
    * If ``output`` has no ``grad_fn``: a leaf requiring grad becomes a single ``AccumulateGrad``
      root node (labelled if it is in ``leaves``); anything else (a constant) gives
      ``{"root": None, "nodes": [], "edges": []}``.

    Raises LimitExceeded("max_graph_nodes") as soon as the walk finds more nodes than allowed.
    """
    root_fn = output.grad_fn
    if root_fn is None:
        if not output.requires_grad:
            return {"root": None, "nodes": [], "edges": []}
        node = _leaf_node(0, output, leaves, known, limits)
        if node["grad"] is None and _small(output, limits):
            node["grad"] = torch.ones_like(output)  # dL/dL = 1
        return {"root": 0, "nodes": [node], "edges": []}

    # label lookup for function nodes: the first known tensor produced by each fn
    labels: dict[Any, tuple[str, torch.Tensor]] = {}
    for name, tensor in known.items():
        fn = tensor.grad_fn
        if fn is not None and fn not in labels:
            labels[fn] = (name, tensor)
    if trace is not None:
        for fn, labelled in trace.tensors.items():
            labels.setdefault(fn, labelled)

    # depth-first pre-order with an explicit stack: deep chains must not hit the recursion limit
    ids: dict[Any, int] = {}
    order: list[Any] = []
    links: list[tuple[Any, Any]] = []  # (input-side fn, consumer fn), resolved to ids afterwards
    stack = [root_fn]
    while stack:
        fn = stack.pop()
        if fn in ids:
            continue
        if len(ids) >= limits.max_graph_nodes:
            raise LimitExceeded(
                "max_graph_nodes",
                limits.max_graph_nodes,
                f"autograd graph has more than {limits.max_graph_nodes} nodes",
            )
        ids[fn] = len(ids)
        order.append(fn)
        children = [child for child, _ in fn.next_functions if child is not None]
        links.extend((child, fn) for child in children)
        stack.extend(reversed(children))  # reversed so the first input is visited first

    grads = trace.grads if trace is not None else {}
    nodes = []
    for node_id, fn in enumerate(order):  # ids follow the order
        op = type(fn).__name__
        if op == LEAF_OP and hasattr(fn, "variable"):
            nodes.append(_leaf_node(node_id, fn.variable, leaves, known, limits, op=op))
            continue
        label, tensor = labels.get(fn, (None, output if fn is root_fn else None))
        node = {"id": node_id, "op": op, "label": label, "shape": None, "value": None, "grad": None}
        if tensor is not None:
            node["shape"] = list(tensor.shape)
            if _small(tensor, limits):
                node["value"] = tensor.detach()
                grad = grads.get(fn)
                node["grad"] = _grad(tensor) if grad is None else grad
                if node["grad"] is None and fn is root_fn:
                    node["grad"] = torch.ones_like(tensor)  # dL/dL = 1
        nodes.append(node)

    edges = [{"from": ids[child], "to": ids[fn]} for child, fn in links]
    return {"root": 0, "nodes": nodes, "edges": edges}


def _leaf_node(
    node_id: int,
    variable: torch.Tensor,
    leaves: dict[str, torch.Tensor],
    known: dict[str, torch.Tensor],
    limits: Limits,
    op: str = LEAF_OP,
) -> dict:
    """An AccumulateGrad node: the input's name, shape, value and accumulated .grad."""
    label = next((name for name, t in leaves.items() if t is variable), None)
    if label is None:
        label = next((name for name, t in known.items() if t is variable), None)
    small = _small(variable, limits)
    return {
        "id": node_id,
        "op": op,
        "label": label,
        "shape": list(variable.shape),
        "value": variable.detach() if small else None,
        "grad": _grad(variable) if small else None,
    }


def _small(tensor: torch.Tensor, limits: Limits) -> bool:
    """Values are only worth shipping (and drawing) for small tensors: small in the JSON they write (cost.slots: a
    [1000000, 0] tensor has no number, but a million empty lists)."""
    return slots(tensor.shape) <= limits.graph_value_max_elements


def _grad(tensor: torch.Tensor) -> torch.Tensor | None:
    """The tensor's .grad, read only where torch keeps one (reading it elsewhere warns)."""
    if not (tensor.is_leaf or tensor.retains_grad):
        return None
    grad = tensor.grad
    if grad is None or not grad.requires_grad:  # a plain backward() leaves grads without history
        return grad
    return grad.detach()


def to_dot(graph: dict) -> str:
    """Render a build_graph() result (tensors or already JSON-encoded values) as Graphviz DOT text.

    Leaves are boxes, the root is filled; scalar values and grads are printed with ``%.4g``.
    """
    lines = [
        "digraph autograd {",
        "  rankdir=LR;",
        '  node [fontname="monospace", fontsize=10];',
    ]
    for node in graph["nodes"]:
        text = [str(node["op"])]
        if node.get("label") is not None:
            text.append(str(node["label"]))
        if node.get("shape") is not None:
            text.append("shape " + _shape_text(node["shape"]))
        for key in ("value", "grad"):
            scalar = _scalar_text(node.get(key))
            if scalar is not None:
                text.append(f"{key} {scalar}")
        attrs = [f'label="{_escape(chr(10).join(text))}"']
        if node["op"] == LEAF_OP:
            attrs.append("shape=box")
        if node["id"] == graph.get("root"):
            attrs.append('style=filled, fillcolor="darkolivegreen1"')
        elif node["op"] == LEAF_OP:
            attrs.append('style=filled, fillcolor="lightblue"')
        lines.append(f"  n{int(node['id'])} [{', '.join(attrs)}];")
    for edge in graph["edges"]:
        lines.append(f"  n{int(edge['from'])} -> n{int(edge['to'])};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _shape_text(shape: list[int]) -> str:
    return "[" + ", ".join(str(int(n)) for n in shape) + "]"


def _scalar_text(value: Any) -> str | None:
    """%.4g for a one-element value (tensor, number, nested list or "NaN"-style string); None otherwise."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.reshape(()).tolist()
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"{value:.4g}" if math.isfinite(value) else str(float(value))
    if isinstance(value, complex):
        return f"{value.real:.4g}{value.imag:+.4g}j"
    if isinstance(value, str):
        return value  # JSON encoders spell non-finite floats as "NaN", "Infinity", ...
    return None


def _escape(text: str) -> str:
    """Quote-safe DOT string body; newlines become Graphviz's \\n line breaks."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
