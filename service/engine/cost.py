"""The cost model: what a request will allocate, estimated from shapes alone before any tensor exists.

Every size limit is enforced here (`require`), so a request refused for its size is refused by one path: a
LimitExceeded (413) naming the limit. The budget `max_request_bytes` bounds the bytes a request allocates over
its whole life (an upper bound of its peak memory and a proxy for its time); docs/limits.md explains the model.
The arithmetic is plain Python over shapes, never torch: torch.broadcast_shapes imports sympy on first use.
"""

from __future__ import annotations

import ast
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain

from .errors import LimitExceeded
from .limits import Limits
from .values import levels_past, outline

# Bytes one number costs in the response: its numpy copy and its JSON text (~12 characters), with slack.
RESPONSE_BYTES = 24
# One torch op costs ~5-10 µs of Python dispatch whatever its size: charged as moving 4 KiB, so a request
# of many tiny ops (numeric differences of a 400-node formula) is bounded too.
OP_BYTES = 4096
# Backward allocates about as much as forward again (one gradient per node) plus the temporaries of
# derivatives such as pow's n * x**(n-1): twice the forward elements.
BACKWARD_FACTOR = 2
# A double-backward pass (one Hessian row) builds and runs the derivative graph: ~4x the forward elements.
DOUBLE_BACKWARD_FACTOR = 4
# Grading is time more than memory: its prices are microseconds measured in-process on this 2-core machine (one
# request, best of 3, other jobs running; docs/limits.md "Grading's prices"), at 256 bytes a microsecond, so the
# budget buys about 1 s of grading (an op's OP_BYTES is 16 µs at this rate: ops cost their memory as well).
MICROSECOND_BYTES = 256
# One check, apart from its points: the result object of ~18 keys, its name, title and message, the verdict, a wrong
# answer's diagnosis (diagnose_bugs.py) and the JSON. Measured 60-150 µs (a wrong one-point gradient of a 128-input
# problem 144 µs, of the neuron ~125 µs with its job's share, a /v1/grade check of a 100-input problem 150-200 µs):
# 128 µs. It was 4 KiB (~3.8 KB of memory measured, 70 batch jobs of 400 misnamed checks), ~16 µs at this rate.
CHECK_BYTES = 128 * MICROSECOND_BYTES
# A check at each of its points (the classic rule, or a profile's share): the answer's float64 tensor, numpy views of
# it and of the reference, the point's error and verdict: ~6 torch calls, 17-31 µs measured (a wrong list answer the
# most), and ~1.5 KiB kept while a batch defers its comparisons to run them together. Measured (docs/limits.md): 10
# jobs of 129 checks over 100 points grew a worker by 185 MiB in 2.5 s; 50 such jobs, charged ~100 MiB when a check
# cost 4 KiB whatever its points, grew it by 715 MiB and ran into the 10 s deadline.
CHECK_POINT_BYTES = 32 * MICROSECOND_BYTES
# A /v1/grade problem file's check, on top of CHECK_BYTES: its options loaded by the problem file's schema, its result
# dumped in the platform's format. Measured (a file of 40 problems x 100 one-point checks, in-process): ~300 µs a
# check where a /v1/check's costs ~150 µs; 128 µs more.
PROBLEM_CHECK_BYTES = 128 * MICROSECOND_BYTES
# A submitted formula apart from its ops: parsing it, the check's message and the formula's diagnosis. Measured
# 145 µs and ~30 µs a node at one point (parse, the cost model's walk, evaluation): 128 µs, plus OP_BYTES a node
# (formula_estimate).
FORMULA_BYTES = 128 * MICROSECOND_BYTES
# The cost model's own walk over one set of shapes, a node at a time (formula_pass over its formula_plan; a network's
# model_nodes in network_pass): measured 0.4-0.75 µs a node (a 499-node formula: 0.2 ms at one set, 37 ms over 100
# sets of different shapes, where walking its tree was 2.8 ms a set; a 64-layer network 72 µs a set): 1 µs. Charged
# before the walk and kept whether or not the estimate it computes then fits (formula_walk, diagnosis_walk).
WALK_NODE_BYTES = 1 * MICROSECOND_BYTES
# A model's formula apart from its ops (OP_BYTES a distinct subexpression): parsing and checking it, the cost model's
# plan of it (formula_plan), the evaluator's keys and its intermediates' names (Formula.key, Formula.text), a few Python
# steps a node, equal subtrees each time. Measured in-process (best of 30): 5.8-6.5 µs a node past its ops' price (a
# 479-node formula of 52 distinct ops: 3.6 ms, its parse 3.1 µs and its plan 2.5 µs a node). It was free: that
# formula, charged ~0.8 ms, took 5 ms (55 ms while each name was an ast.unparse of its subtree), and 1000 jobs of it
# held a worker to the deadline (an audit). 8 µs, once per parse: a gradients job's, a check problem's.
FORMULA_NODE_BYTES = 8 * MICROSECOND_BYTES
# Each input a request loads that its formula never names, whatever its size (its numbers are priced by the body's parse
# and as elements): the schema's tensor field, the limits' check, torch.tensor and reshape, its leaf, and in grad mode
# its gradient of zeros. Measured in-process (1000 batch jobs of 128 scalar inputs, the formula naming one): 15.5 µs an
# input in inference, 16.3 µs in grad mode, 23 µs with every input in `wrt`; a check's input drawn or loaded at each
# point 17-25 µs. They were charged their parse only (~0.8 µs): 1000 such jobs took 2-3 s on ~28 MiB, and a check of
# 127 such inputs drawn at 100 points 0.3 s on 2 MiB (audits). 16 µs, at every point of a check. An input the model
# reads is priced by the ops that read it (a check of 127 read inputs at 100 points: 0.64 s on 150 MiB).
INPUT_BYTES = 16 * MICROSECOND_BYTES
# The least a batch's gradients job is charged, whatever its estimate: its load, model, tensors, passes and JSON.
# Measured in-process (1000 jobs of the formula `x`): 195 µs a job in inference, 310 µs in grad mode; it was charged
# ~50 bytes and its parse (~1 µs): 60x (an audit). 256 µs. A job whose estimate is more (the tutorial neuron's ~200 KiB)
# is charged its estimate alone.
JOB_BYTES = 256 * MICROSECOND_BYTES
# A submitted intermediate's key that is not one of the references' names, parsed and unparsed to the text they are
# named by (formula.canonical_text: "x**2" is sin(x**2)'s "x ** 2"), charged before it is parsed. Measured in-process
# (best of 5): 17-30 µs for a 1-3 character key, ~6-7 µs a character up to ~50 characters (a chain of 45 x+x: 0.5 ms,
# 46 signs: 0.32 ms), 3-5 µs a character above (a 200-character sum of products: 0.93 ms, a 797-character balanced
# product: 2.4 ms): 16 µs, plus 8 µs a character. A key is parsed once per request (Ledger.spellings: a batch of a
# class's answers repeats its keys).
INTERMEDIATE_KEY_BYTES = 16 * MICROSECOND_BYTES
INTERMEDIATE_KEY_CHAR_BYTES = 8 * MICROSECOND_BYTES
# A request's allowance for a student's other intermediate keys read as spellings of a check's own (check.Spellings),
# at the prices above and apart from the request budget: ~64 ms of parsing at those prices (~1,000 short keys; real
# parses measured 0.5-0.7x their price). Charged to the budget, a student's junk keys took it from the instructor's
# check keys, which then refused: a problem file's 413, a batch's later job graded 0 (an audit). Each job or problem
# gets its share of it, at least SPELLING_SHARE_BYTES (~10 short keys), so that one job's keys cannot spend another's.
# Past its share, a job of several draws on the request's pool, SPELLING_POOL_BYTES (check.KeyAllowance): a class's
# keys are parsed once for the request, by the first job that has them (free for the rest), and 3 short keys cost more
# than a 1000-job batch's 64 KiB share (an audit: job 0 of 1000 honest jobs scored 2 of 3). Junk keys drain their own
# share and the pool, never another job's share. But one junk job could empty the pool before an honest job whose
# 3 short keys (~70 KiB) did not fit a 64 KiB share, which then lost a point (a second look): the share is at least
# 256 KiB (~10 short keys), so an honest job's usual keys fit its own share whatever junk came before. A request reads
# at most max(SPELLING_READ_BYTES, jobs * SPELLING_SHARE_BYTES) + SPELLING_POOL_BYTES: 16 MiB for one job, 32 MiB for
# 2-64, 266 MiB for 1000 (~1 s at the prices; real parses 0.5-0.7x).
SPELLING_READ_BYTES = 16 * 2**20
SPELLING_POOL_BYTES = 16 * 2**20
SPELLING_SHARE_BYTES = 256 * 2**10
# One error message of a batch job that does not load (schema errors): marshmallow's work to find it and the message
# in the response. Measured in-process: a network job with 64 invalid layers and 130 invalid `generate` entries,
# 1,894 messages, loads in 23-32 ms warm (129 ms cold), ~54 bytes of JSON a message: 16 µs. A batch of invalid jobs
# was free: 200 of them held a worker 9 s for a 20 MB answer (an audit).
LOAD_ERROR_BYTES = 16 * MICROSECOND_BYTES
# A job of a batch refused by the cost model as it loads (cost.check_raw: too many inputs, elements, dimensions): the
# raw walk up to the level that refuses it, and its problem in the response. Measured in-process (best of 2): 1000 jobs
# of an input of 9 dimensions in 32-39 ms, of 129 inputs 52 ms, the body's parse (1-2 ms) included: 30-50 µs a job.
# They were free: 1000 inputs nested 900 deep held a gunicorn worker 2.6-3.4 s (a previous audit). 64 µs.
LOAD_REFUSED_BYTES = 64 * MICROSECOND_BYTES
# One level of a submitted answer's lists past what a tensor answer has (max_tensor_dims, and one more for a list of
# one answer per point): every walk of it (the answer field's check of its types, its shape, its echo's outline and
# summary) reads a level at a time, ~1-2 µs of Python a level each, whatever its width (its numbers are C loops,
# priced with the body's parse). Measured in-process (best of 3, 300 check jobs, parse included): 5.1-5.5 µs a level
# (a job answering 900 deep 5.0 ms, 9 deep 0.42 ms), where a check was charged 128 µs: 1000 such jobs took 5-7 s. 8 µs,
# counted on the raw JSON before the job loads (values.levels_past: a job's answers walked together, C loops over each
# level's items; walked one by one, 1000 jobs of 256 answers 8 deep took ~2 s to count 0 levels, now ~0.4 s).
ANSWER_LEVEL_BYTES = 8 * MICROSECOND_BYTES
# An answer the request's `checks` do not name (cost.ungraded_answers) is not graded, but it is loaded (its key, the
# answer field's walk of each level: values.last_non_number) and warned about (check.UNGRADED_NAMED by name, the rest
# counted). It was free: 1000 jobs of 256 such answers 8 deep, checks naming only `loss`, took 4.7-7.0 s for an 18.7 MB
# response (an audit). Measured in-process (200 such jobs, best of 3, against the same jobs without those answers,
# warnings bounded, body parse included): 5.6 µs an answer of numbers, +2.7 µs a level (depth 1 6.7, 4 15.5, 8 27.2
# µs), a formula 4.9 µs. 8 µs, plus 4 µs a level (every level, counted as deep answers' are: values.levels_past).
UNGRADED_ANSWER_BYTES = 8 * MICROSECOND_BYTES
UNGRADED_LEVEL_BYTES = 4 * MICROSECOND_BYTES
# One autograd graph node in a response, apart from its numbers: its dict, its JSON (op, label, shape; a formula's
# label is its subexpression's text), its ~2 edges and its DOT line.
GRAPH_NODE_BYTES = 1024
# The graph drawn as SVG (`Accept: image/svg+xml`): Graphviz's `dot` in a subprocess, measured by bench/svg_layout.py
# (CPU seconds, docs/playground.md): starting it (fonts, plugins) 20-70 ms, and 0.25-0.33 ms a graph node for the
# networks max_svg_layout_nodes admits (a 445-node 48-layer chain 0.14 s, a 1,092-node batchnorm block 0.27 s). Its
# superlinear part (the edges' rank crossings) is capped in render_svg.py before dot starts, not priced here.
SVG_START_BYTES = 64_000 * MICROSECOND_BYTES
SVG_NODE_BYTES = 256 * MICROSECOND_BYTES
# The network re-runs of a wrong gradient's diagnosis: 1/N, L2 x2, L2 x1/2, biases regularised, ReLU mask.
DIAGNOSED_MISTAKES = 5
REDUCERS = {"sum", "mean", "numel"}  # formula functions whose result is a scalar
ITEMSIZE = {"float32": 4, "float64": 8}

Shape = tuple[int, ...]


def require(
    limits: Limits, name: str, amount: int | float, what: str, hint: str | None = None, estimate: int | None = None
) -> None:
    """Refuse the request when `amount` exceeds the limit `name`: the one place a size becomes a 413."""
    value = getattr(limits, name)
    if amount > value:
        raise LimitExceeded(name, value, f"{what}; the limit is {value}", hint=hint, estimate=estimate)


# --- shapes --------------------------------------------------------------------------------------


def slots(shape: Sequence[int]) -> int:
    """A tensor's size for every limit and price: the slots its JSON text writes, the product of its dimensions
    with each 0 counted as 1. A [1000000, 0] tensor has no number but its text writes a million `[]` (and so does
    every echo of it: points, graph nodes, intermediates, answers): it costs what [1000000, 1] costs, never 0."""
    return math.prod(shape) or math.prod(n or 1 for n in shape)  # the generator only for an empty dimension


def size_text(shape: Iterable[int], size: int | None = None) -> str:
    """`size` (slots(shape) unless given) said as a number of elements; a shape with an empty dimension says how
    it was counted."""
    shape = tuple(shape)
    size = slots(shape) if size is None else size
    if 0 not in shape:
        return f"{size} elements"
    return f"{size} elements (shape {list(shape)}: an empty dimension counts as 1, as its JSON writes every row)"


def broadcast(*shapes: Shape) -> Shape | None:
    """NumPy/torch broadcasting of shapes; None when they do not broadcast (evaluation reports the error)."""
    ndim = max(map(len, shapes))
    out = []
    for sizes in zip(*(((1,) * (ndim - len(s))) + tuple(s) for s in shapes), strict=True):  # all padded to ndim
        big = {n for n in sizes if n != 1}
        if len(big) > 1:
            return None
        out.append(big.pop() if big else 1)
    return tuple(out)


def list_count(shape: Shape) -> int:
    """How many JSON lists a tensor literal of this shape has: 3,000,000 empty lists are not free."""
    return sum(math.prod(shape[:depth]) for depth in range(1, len(shape)))


# --- inputs, before and after the schema ------------------------------------------------------------


def check_raw(body, limits: Limits) -> None:
    """The sizes a schema would pay for item by item, checked on the parsed JSON before it loads: every tensor's
    elements and nested lists, level by level (`raw_elements`), and the elements of all inputs together.
    Lists the schema caps itself (wrt, include, points) are refused by its pre_load hooks, as 400s."""
    if not isinstance(body, dict):
        return
    points = body.get("points")
    if isinstance(points, list):  # its length is the schema's (a 400 before it loads a point)
        total = sum(
            _check_raw_inputs(point, limits, f"points[{i}]", "a point's inputs") for i, point in enumerate(points)
        )
        require(limits, "max_total_elements", total, f"the points have {total} elements in total", HINTS["points"])
    _check_raw_inputs(body.get("inputs"), limits, "inputs", "the inputs")
    _check_raw_inputs(body.get("domain"), limits, "domain", "the domain's inputs")
    _check_raw_inputs(body.get("tangents"), limits, "tangents", "the tangents")
    if "dout" in body:
        raw_elements(body["dout"], limits, "`dout`")
    model = body.get("model")
    if isinstance(model, dict) and isinstance(model.get("layers"), list):
        for i, layer in enumerate(model["layers"]):
            if isinstance(layer, dict) and "mask" in layer:
                raw_elements(layer["mask"], limits, f"layer {i}'s mask")
    submission = body.get("submission")
    if isinstance(submission, dict):
        for key, value in submission.items():
            if isinstance(value, dict):
                require(limits, "max_inputs", len(value), f"`submission.{key}` has {len(value)} answers")


def _check_raw_inputs(inputs, limits: Limits, where: str, what: str) -> int:
    """A dict of tensor literals: its names, each tensor's sizes and their total (check_inputs' limits, with its
    messages); the total, for the points'."""
    if not isinstance(inputs, dict):
        return 0
    require(
        limits,
        "max_inputs",
        len(inputs),
        f"`{where}` has {len(inputs)} named inputs",
        "send only the inputs the model uses",
    )
    total = sum(raw_elements(value, limits, f"input {name!r}") for name, value in inputs.items())
    require(limits, "max_total_elements", total, f"{what} have {total} elements in total")
    return total


def raw_elements(value, limits: Limits, what: str) -> int:
    """A tensor literal's elements (its slots(): the empty lists at the bottom of an empty dimension count one
    each), counted on the parsed JSON the way values.parse_tensor will walk it: one level at a time, each level's
    size known (a C-speed sum of lengths) and checked before it is flattened, the numbers at the bottom counted and
    never copied.  So neither this walk nor the schema's holds more than max_tensor_elements items of a level; the
    nested lists are counted as check_inputs counts them, and its dimensions: a tensor deeper than max_tensor_dims
    is refused at that level, before the schema reads the rest (1000 jobs of an input nested 900 deep took 2.4 s to
    load for check_inputs' 413; deeper than 254 levels a check's problem fields were a 500: orjson writes no
    deeper).  Anything not rectangular stops the count where the schema will stop with its 400."""
    if type(value) is not list:
        return 1
    level, lists, dims = [value], 0, 1
    while True:
        size = sum(map(len, level))  # the items one level down
        if not level[0] or type(level[0][0]) is not list:  # numbers, empty lists (or the schema's 400) at the bottom
            size = max(size, len(level))  # [[]] * n writes n slots, though no number
            require(limits, "max_tensor_elements", size, f"{what} has {size} elements")
            return size
        lists += size
        require(limits, "max_tensor_elements", lists, f"{what} has {lists} nested lists")
        dims += 1
        if dims > limits.max_tensor_dims:  # no deeper: the schema would walk every level (~2.5 µs each) to refuse it
            depth = len(outline(value))  # its first items' depth, O(depth): the dimensions if it is rectangular
            require(limits, "max_tensor_dims", depth, f"{what} has {depth} dimensions")
        level = list(chain.from_iterable(level))
        if set(map(type, level)) != {list}:  # lists mixed with numbers: parse_tensor refuses this level
            return 0


def check_inputs(inputs: dict, limits: Limits, what: str = "the inputs") -> None:
    """Dimensions, elements (and nested lists) per tensor, and elements in total: before any tensor is built. A
    message is written only for the input it refuses (they were written for every input: ~3 µs each)."""
    require(
        limits, "max_inputs", len(inputs), f"{what} have {len(inputs)} names", "send only the inputs the model uses"
    )
    total = 0
    for name, data in inputs.items():
        shape = data.shape
        if len(shape) > limits.max_tensor_dims:
            require(limits, "max_tensor_dims", len(shape), f"input {name!r} has {len(shape)} dimensions")
        size = slots(shape)
        if size > limits.max_tensor_elements:
            require(limits, "max_tensor_elements", size, f"input {name!r} has {size_text(shape, size)}")
        if len(shape) > 1:  # a scalar or a vector has no nested list
            lists = list_count(shape)
            require(limits, "max_tensor_elements", lists, f"input {name!r} has {lists} nested lists")
        total += size
    require(limits, "max_total_elements", total, f"{what} have {total} elements in total")


def unused_inputs(model, names: Iterable[str]) -> int:
    """How many of the inputs `names` the model never reads (INPUT_BYTES each): those a formula does not name. An input
    a model reads is priced by the ops that read it; a neuron or a network refuses any other input (a 400)."""
    formula = getattr(model, "formula", None)
    if formula is None:
        return 0
    read = {*formula.variables, *formula.constants}  # an input named `e` or `pi` shadows the constant: it is read
    return sum(name not in read for name in names)


def formula_nodes_bytes(model) -> int:
    """A model's formula apart from its ops (FORMULA_NODE_BYTES a node): nothing for a model without one."""
    formula = getattr(model, "formula", None)
    return 0 if formula is None else formula.node_count * FORMULA_NODE_BYTES


def _add_if(estimate: Estimate, part: str, nbytes: int) -> None:
    """A part only when it costs something: a neuron's estimate has no `formula nodes`, nor `inputs` (breakdown)."""
    if nbytes:
        estimate.add(part, nbytes)


# --- one pass of a model -------------------------------------------------------------------------


class Pass:
    """What one forward pass allocates: elements of every distinct result, torch ops, the output's shape,
    the elements of the recorded intermediates (formula subexpressions; the neuron's z and y_pred), and for the
    autograd graph: its function nodes (an upper estimate) and the elements of the largest tensor."""

    def __init__(
        self, elements: int = 0, ops: int = 0, out: Shape = (), recorded: int = 0, nodes: int = 0, largest: int = 0
    ) -> None:
        self.elements, self.ops, self.out, self.recorded = elements, ops, out, recorded
        self.nodes, self.largest = nodes, largest


def _literal(node: ast.expr) -> bool:
    """A (signed) number literal: as a `**` exponent it stays a Python float and is never evaluated."""
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return isinstance(node, ast.Constant)


def formula_pass(formula, shapes: dict[str, Shape], limits: Limits) -> Pass:
    """Walk the formula's distinct subexpressions (equal subtrees once, as the evaluator memoizes them)
    children first, broadcasting shapes; refuse any one result over max_tensor_elements. The walk's order and
    its distinct nodes depend on the tree only (formula_plan, built once per formula): per set of shapes only
    the shapes are computed (~1 µs a node, where walking the tree was ~5.6 µs)."""
    result = Pass()
    out: list[Shape] = []  # slot -> its shape at these inputs
    for kind, arg, children, node in formula_plan(formula):
        if kind == _NAME:
            out.append(tuple(shapes.get(arg, ())))
            continue
        if kind == _SAME:  # x ** literal
            shape = out[children[0]]
        elif kind == _SCALAR:  # a constant, or a reducer
            shape = ()
        elif len(children) == 1:
            shape = out[children[0]]
        elif children:
            shape = _broadcast2(out[children[0]], out[children[1]]) if len(children) == 2 else None
            if shape is None:
                shape = broadcast(*(out[c] for c in children)) or ()
            size = slots(shape)
            if size > limits.max_tensor_elements:
                require(
                    limits,
                    "max_tensor_elements",
                    size,
                    f"{_symbol(node)} would broadcast to {size_text(shape, size)}",
                    "use inputs of smaller or matching shapes",
                )
        else:
            shape = ()
        out.append(shape)
        size = slots(shape)
        result.elements += size
        result.ops += 1
        if kind != _SCALAR or arg:  # every node but a constant
            result.recorded += size
            result.nodes += 1
            result.largest = max(result.largest, size)
    result.out = out[-1]
    return result


def _broadcast2(a: Shape, b: Shape) -> Shape | None:
    """broadcast(a, b) for the common cases, equal shapes or a scalar; None for the general rule."""
    if a == b or not b:
        return a
    if not a:
        return b
    return None


# what a step of formula_plan computes: an input's shape, a scalar (constant or reducer), its one child's shape
# (`x ** literal`), or its children broadcast
_NAME, _SCALAR, _SAME, _BROADCAST = range(4)


def formula_plan(formula) -> list[tuple[int, object, tuple[int, ...], ast.expr]]:
    """The steps of formula_pass, built once per formula (kept on it): each distinct subexpression, children first in
    the order the walk completes them, as (kind, name or whether it is a reducer, its children's slots, its node).
    A step's slot is its index; equal subtrees (structurally, as the evaluator memoizes them) share one."""
    plan = getattr(formula, "cost_plan", None)
    if plan is not None:
        return plan
    plan = []
    slots: dict[object, int] = {}  # structural key -> slot
    memo: dict[int, int] = {}  # id(node) -> slot
    stack: list[tuple[ast.expr, bool]] = [(formula.body, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in memo:
            continue
        children = _children(node)
        if not ready:
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(children))
            continue
        inner = tuple(memo[id(c)] for c in children)
        key, step = _step(node, inner)
        slot = slots.get(key)
        if slot is None:
            slot = slots[key] = len(plan)
            plan.append(step)
        memo[id(node)] = slot
    formula.cost_plan = plan
    return plan


def _step(node: ast.expr, children: tuple[int, ...]) -> tuple[object, tuple]:
    """(structural key, plan step) of one node whose children have the slots `children`."""
    if isinstance(node, ast.Name):
        return ("name", node.id), (_NAME, node.id, (), node)
    if isinstance(node, ast.Constant):
        value = repr(node.value) if type(node.value) is float else node.value
        return ("const", type(node.value).__name__, value), (_SCALAR, False, (), node)
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else "?"
        kind = _SCALAR if name in REDUCERS else _BROADCAST
        return ("call", name, children), (kind, True, children, node)
    if isinstance(node, ast.BinOp) and len(children) == 1:  # x ** literal
        return ("pow", ast.dump(node.right), children), (_SAME, True, children, node)
    op = type(node.op).__name__ if hasattr(node, "op") else "?"
    return (op, children), (_BROADCAST, True, children, node)


def _children(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp):
        return [node.left] if isinstance(node.op, ast.Pow) and _literal(node.right) else [node.left, node.right]
    if isinstance(node, ast.UnaryOp):
        return [node.operand]
    if isinstance(node, ast.Call):
        return list(node.args)
    return []


def _symbol(node: ast.expr) -> str:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id
    symbols = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
    return symbols.get(type(getattr(node, "op", None)), "?")


def _neuron_samples(spec: dict, shapes: dict[str, Shape]) -> tuple[Shape, bool]:
    """The neuron's sample shape (z's), and whether it makes per-sample leaves (reduction "none")."""
    x, w = shapes.get("x", ()), shapes.get("w", ())
    samples = tuple(x if len(w) == 0 else x[:-1])
    return samples, spec.get("reduction", "mean") == "none" and len(samples) > 0


def leaf_shapes(spec: dict, shapes: dict[str, Shape]) -> dict[str, Shape]:
    """The shapes of the leaves gradients are taken for: a per-sample neuron gets one copy of w and b per sample
    (Neuron.prepare), so its numeric, hessian, Jacobian and gradients grow with the samples too."""
    if spec["kind"] != "neuron":
        return shapes
    samples, per_sample = _neuron_samples(spec, shapes)
    if not per_sample:
        return shapes
    return {**shapes, "w": samples + tuple(shapes.get("w", ())), "b": samples + tuple(shapes.get("b", ()))}


def neuron_pass(spec: dict, shapes: dict[str, Shape]) -> Pass:
    """The tutorial's neuron: x * w, then ~12 per-sample tensors (z, sigmoid, clamp, two logs, the BCE terms)."""
    x, w = shapes.get("x", ()), shapes.get("w", ())
    samples, per_sample = _neuron_samples(spec, shapes)
    n = slots(samples)
    elements = slots(x) + 12 * n + 1
    if per_sample:  # one copy of w and b per sample
        elements += n * slots(w) + n
    out = tuple(samples) if per_sample else ()
    largest = max(slots(x), n * max(slots(w), 1) if per_sample else n, slots(w))
    return Pass(elements, 16, out, 2 * n, nodes=16, largest=largest)


# --- whole requests ------------------------------------------------------------------------------


class Estimate:
    """Bytes a request will allocate, by part; `require()` refuses it when the total is over the budget."""

    def __init__(self) -> None:
        self.parts: Counter[str] = Counter()

    def add(self, part: str, nbytes: int | float) -> None:
        self.parts[part] += int(nbytes)

    def plus(self, other: Estimate | None) -> Estimate:
        """A new estimate of both: their parts added (a problem's and one answer's checks)."""
        both = Estimate()
        both.parts.update(self.parts)
        if other is not None:
            both.parts.update(other.parts)
        return both

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def require(self, limits: Limits, spent: int = 0, hint: str | None = None) -> None:
        total = spent + self.total
        if total > limits.max_request_bytes:
            top = ", ".join(f"{part} {_mib(n)}" for part, n in self.parts.most_common(3) if n)
            raise LimitExceeded(
                "max_request_bytes",
                limits.max_request_bytes,
                f"this request would allocate about {_mib(total)} ({top}); "
                f"the budget is {_mib(limits.max_request_bytes)}",
                estimate=total,
                hint=hint or self.hint(),
                breakdown=dict(self.parts),
            )

    def hint(self) -> str:
        part = self.parts.most_common(1)[0][0] if self.parts else ""
        return HINTS.get(part, "use smaller inputs or a smaller formula")


HINTS = {
    "forward": "use smaller inputs ([n,1] with [1,m] broadcasts to n*m elements per operation) or a smaller formula",
    "backward": 'use smaller inputs or a smaller formula, or mode "inference" if you need no gradients',
    "intermediates": 'drop "intermediates" from `include`, or use smaller inputs',
    "graph": 'drop "graph" and "dot" from `include`, or use smaller inputs',
    "svg": 'ask for application/json with `include: ["graph"]` or `["dot"]` (the same graph, to draw with your own '
    "Graphviz), or use fewer layers or a smaller formula",
    "numeric": 'drop "numeric" from `include`, or take fewer `wrt` elements',
    "hessian": 'drop "hessian" from `include`, or take fewer `wrt` elements',
    "manual": 'drop "manual" from `include`',
    "response": "use smaller inputs, or fewer extras in `include`",
    "points": "use fewer points or smaller inputs",
    "jobs": "split the batch into smaller batches",
    "problems": "split the problem file, or grade at fewer points or smaller inputs",
    "jacobian": "send `dout` (the upstream gradient) instead of asking for the Jacobian: `gradients` is then the "
    "vector-Jacobian product dout·J, one backward pass",
    "jvp": "send fewer or smaller `tangents`, or use smaller inputs",
    "diagnosis": "grade fewer points",
    "checks": "list fewer `checks`, or grade at fewer points",
    "intermediate keys": "name intermediates as the references do (a failed check lists them), or send fewer",
    "formula nodes": "use a smaller formula: each of its nodes is parsed and named, however often it repeats",
    "inputs": "send only the inputs the formula uses: every other one is loaded and built too (at every point)",
    "deep answers": "send each answer as a number, or as lists only as deep as the value it answers",
    "ungraded answers": "send only the answers the request's `checks` name (or leave out `checks`)",
}


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def network_pass(spec: dict, shapes: dict[str, Shape], limits: Limits) -> Pass:
    """A coursework network (engine/network.py) over the shapes of its X, y and parameters (`Network.shapes`):
    each layer's output and ~3 temporaries (a linear layer's product, batchnorm's statistics, the loss's
    softmax), every one held to max_tensor_elements; the output is the loss, or the last layer's activation."""
    x = shapes["X"]
    samples_axis = 1 if spec["layout"] == "dlai" else 0
    samples, features = x[samples_axis], x[1 - samples_axis]
    # graph nodes: a layer is up to ~14 ops (batchnorm), a parameter 3 more (its reshape, L2's square and sum)
    largest = max(slots(s) for s in shapes.values())
    result = Pass(sum(slots(s) for s in shapes.values()), 0, (), 0, 16 + 16 * len(spec["layers"]) + 3 * len(shapes))
    for name, shape in shapes.items():  # parameters and generated tensors have no input check of their own
        if slots(shape) > limits.max_tensor_elements:  # the message only then: this walk is charged by the node
            require(
                limits,
                "max_tensor_elements",
                slots(shape),
                f"{name} has shape {list(shape)}, {size_text(shape)}",
                "use fewer features per layer, or fewer samples",
            )
    for layer in spec["layers"]:
        features = layer.get("out_features", features)
        size = slots((samples, features))
        if size > limits.max_tensor_elements:
            require(
                limits,
                "max_tensor_elements",
                size,
                f"a {layer['type']} layer's output has {size_text((samples, features), size)}",
                "use fewer features per layer, or fewer samples",
            )
        result.elements += 4 * size
        result.ops += 4
        result.recorded += size
        largest = max(largest, size)
    result.largest = largest
    out = (samples, features) if samples_axis == 0 else (features, samples)
    if spec["loss"]["type"] == "none":
        result.out = out
    else:
        result.elements += 4 * slots(out)
        result.ops += 8
    return result


def model_pass(model, spec: dict, shapes: dict[str, Shape], limits: Limits) -> Pass:
    if spec["kind"] == "neuron":
        return neuron_pass(spec, shapes)
    if spec["kind"] == "network":
        return network_pass(spec, shapes, limits)
    return formula_pass(model.formula, shapes, limits)


def gradients_estimate(
    request: dict, model, shapes: dict[str, Shape], wrt: tuple[str, ...], limits: Limits
) -> Estimate:
    """A /v1/gradients request: forward, backward and every extra in `include`, and the response.
    `shapes` are every tensor's (the model's `shapes()`: a network adds its generated X and parameters)."""
    include, size = set(request["include"]), ITEMSIZE[request["dtype"]]
    one = model_pass(model, request["model"], shapes, limits)
    estimate = Estimate()
    estimate.add("forward", one.elements * size + one.ops * OP_BYTES)
    _add_if(estimate, "formula nodes", formula_nodes_bytes(model))
    _add_if(estimate, "inputs", unused_inputs(model, shapes) * INPUT_BYTES)  # an expression's shapes are its inputs'
    leaves = leaf_shapes(request["model"], shapes)
    wrt_elements = sum(slots(leaves[n]) for n in wrt if n in leaves)
    response = slots(one.out)
    if request.get("dout") is not None:
        dout = slots(request["dout"].shape)
        require(limits, "max_tensor_elements", dout, f"`dout` has {size_text(request['dout'].shape, dout)}")
        estimate.add("forward", 2 * dout * size)  # the tensor, and the product contracted with the output
    if request["mode"] == "inference":
        response += one.recorded if "intermediates" in include else 0
        estimate.add("response", response * RESPONSE_BYTES)
        return estimate
    estimate.add("backward", BACKWARD_FACTOR * (one.elements * size + one.ops * OP_BYTES))
    response += wrt_elements + _derivatives_estimate(estimate, request, one, wrt_elements, size, limits)
    if "intermediates" in include:
        estimate.add("intermediates", 2 * one.recorded * RESPONSE_BYTES)
    if include & {"graph", "dot"}:
        estimate.add("graph", graph_bytes(one, len(wrt), limits))
    if request.get("picture"):
        estimate.add("svg", svg_bytes(one, len(wrt), limits))
    if "manual" in include:
        estimate.add("manual", _manual_elements(model, shapes, limits) * size + wrt_elements * (size + RESPONSE_BYTES))
    if "numeric" in include:
        require(
            limits,
            "max_numeric_elements",
            wrt_elements,
            f"numeric gradients need two forward passes per `wrt` element, and `wrt` has {wrt_elements} elements",
            'drop "numeric" from `include`, or take fewer `wrt` elements',
        )
        passes = 2 * wrt_elements
        estimate.add("numeric", passes * (one.elements * 8 + one.ops * OP_BYTES) + wrt_elements * 8 * 4)
        response += wrt_elements
    if "hessian" in include:
        require(
            limits,
            "max_hessian_elements",
            wrt_elements,
            f"the hessian has one row per `wrt` element, and `wrt` has {wrt_elements} elements",
            'drop "hessian" from `include`, or take fewer `wrt` elements',
        )
        per_row = DOUBLE_BACKWARD_FACTOR * (one.elements * size + one.ops * OP_BYTES)
        estimate.add("hessian", (wrt_elements + 1) * per_row + wrt_elements**2 * size)
        response += wrt_elements**2
    estimate.add("response", response * RESPONSE_BYTES)
    return estimate


def graph_bytes(one: Pass, leaves: int, limits: Limits) -> int:
    """The autograd graph in the response: every node carries its value and gradient (each at most
    graph_value_max_elements numbers, else shown by shape only); build_graph refuses more than max_graph_nodes."""
    nodes = min(one.nodes + leaves, limits.max_graph_nodes)
    numbers = 2 * min(one.largest, limits.graph_value_max_elements)
    return nodes * (GRAPH_NODE_BYTES + numbers * RESPONSE_BYTES)


def svg_bytes(one: Pass, leaves: int, limits: Limits) -> int:
    """The graph laid out and drawn by `dot` (a request for image/svg+xml): its start and every node's share, on the
    graph_bytes() count of nodes."""
    return SVG_START_BYTES + min(one.nodes + leaves, limits.max_graph_nodes) * SVG_NODE_BYTES


def _derivatives_estimate(
    estimate: Estimate, request: dict, one: Pass, wrt_elements: int, size: int, limits: Limits
) -> int:
    """Add `jacobian` (one backward pass per output element, output x `wrt` numbers) and `jvp` (`tangents`: a
    double-backward pass), over the output before any `dout`; returns the numbers they add to the response."""
    response = 0
    pass_bytes = one.elements * size + one.ops * OP_BYTES
    out = slots(one.out)
    if "jacobian" in request["include"]:
        require(
            limits,
            "max_jacobian_elements",
            out * wrt_elements,
            f"the Jacobian has {out} output x {wrt_elements} `wrt` elements = {out * wrt_elements}",
            HINTS["jacobian"],
            estimate=out * wrt_elements,
        )
        estimate.add(
            "jacobian",
            (1 + BACKWARD_FACTOR) * pass_bytes + out * BACKWARD_FACTOR * pass_bytes + out * wrt_elements * size,
        )
        response += out * wrt_elements
    tangents = request.get("tangents")
    if tangents:
        check_inputs(tangents, limits, "the tangents")
        vectors = sum(slots(t.shape) for t in tangents.values())
        estimate.add("jvp", 2 * DOUBLE_BACKWARD_FACTOR * pass_bytes + vectors * size)
        response += out
    return response


def distinct_shapes(points: list[dict[str, Shape]]) -> list[tuple[dict[str, Shape], int]]:
    """Each distinct shape set among the points, in order of first use, with how many points have it.

    A pass over shapes depends on nothing else, so the per-point estimates run once per shape set and are
    multiplied: the same total (and the same first refusal) as point by point. `domain` points all share one
    shape set, so n_points no longer multiplies the estimate's own work (a 500-node formula's pass is 3-7 ms)."""
    groups: dict[tuple, list] = {}
    for shapes in points:
        key = tuple((name, tuple(shape)) for name, shape in shapes.items())
        if key in groups:
            groups[key][1] += 1
        else:
            groups[key] = [shapes, 1]
    return [(shapes, count) for shapes, count in groups.values()]


def walk_estimate(nodes: int, groups: int, part: str) -> Estimate:
    """The cost model's walk of `nodes` nodes over `groups` sets of shapes (WALK_NODE_BYTES a node), as `part`:
    what an estimate costs to compute, charged before it is computed and kept whether or not it then fits."""
    estimate = Estimate()
    estimate.add(part, nodes * groups * WALK_NODE_BYTES)
    return estimate


def diagnosis_walk(request: dict, groups: list, limits: Limits) -> Estimate:
    """What diagnosis_estimate's walk costs: a network's pass (model_nodes) at each set of shapes; nothing else."""
    if request["model"]["kind"] != "network":
        return Estimate()
    return walk_estimate(model_nodes(request["model"], limits), len(groups), "diagnosis")


def diagnosis_estimate(request: dict, groups: list[tuple[dict[str, Shape], int]], limits: Limits) -> Estimate:
    """Naming a wrong network gradient's mistake re-runs forward and backward at every point once per
    mistake it tries (engine/diagnose_bugs.py); other kinds compare cheap transforms of the answer.
    `groups`: distinct_shapes() of the points, computed once per problem."""
    estimate = Estimate()
    if request["model"]["kind"] == "network":
        for shapes, count in groups:
            one = network_pass(request["model"], shapes, limits)
            rerun = (1 + BACKWARD_FACTOR) * (one.elements * 8 + one.ops * OP_BYTES)
            estimate.add("diagnosis", count * DIAGNOSED_MISTAKES * rerun)
    return estimate


def _manual_elements(model, shapes: dict[str, Shape], limits: Limits) -> int:
    """The catalog's hand-derived gradient formulas, evaluated once each, each spread over the shape the inputs
    broadcast to (times `dout`) and summed back to its input's (the neuron's chain rule: ~6 tensors)."""
    formulas = getattr(model, "manual_formulas", None)
    if formulas is None:
        return 6 * slots(shapes.get("x", ())) + 6
    span = slots(broadcast(*shapes.values()) or ()) if shapes else 1
    return sum(formula_pass(f, shapes, limits).elements + span + slots(shapes.get(name, ())) for name, f in formulas())


def check_estimate(request: dict, model, points: list[dict[str, Shape]], limits: Limits) -> Estimate:
    """A /v1/check request: autograd in float64 at every point (every input a leaf, intermediates kept),
    the neuron's chain-rule factors, and the response that echoes every point and each check's values.
    Submitted gradient formulas are charged as they are graded (Grader), against what is left."""
    estimate = Estimate()
    if request.get("dout") is not None:
        dout = slots(request["dout"].shape)
        require(limits, "max_tensor_elements", dout, f"`dout` has {size_text(request['dout'].shape, dout)}")
    _add_if(estimate, "formula nodes", formula_nodes_bytes(model))  # parsed once, whatever the points
    for shapes, count in distinct_shapes(points):
        one = model_pass(model, request["model"], shapes, limits)
        _add_if(estimate, "inputs", count * unused_inputs(model, shapes) * INPUT_BYTES)  # built at every point
        inputs = sum(slots(s) for s in shapes.values())
        points_bytes = (1 + BACKWARD_FACTOR) * (one.elements * 8 + one.ops * OP_BYTES) + 3 * inputs * 8
        estimate.add("points", count * points_bytes)
        # each check's expected and actual at this point: at most the loss, every gradient and intermediate
        estimate.add("response", count * (inputs + 2 * (slots(one.out) + inputs + one.recorded)) * RESPONSE_BYTES)
    return estimate


# The nodes one pass visits for a model without a formula of its own: a catalog expression (the longest is ~30
# characters), the neuron (neuron_pass's 16 ops); a network adds ~4 per layer (network_pass).
NAMED_MODEL_NODES = 64


def model_nodes(spec, limits: Limits) -> int:
    """An upper bound of the nodes one pass of the cost model visits for a raw or loaded `model` spec: a formula
    has at most one node per character (an operator, a name, a number) and at most max_ast_nodes."""
    if not isinstance(spec, dict):
        return NAMED_MODEL_NODES
    formula, layers = spec.get("formula"), spec.get("layers")
    if isinstance(formula, str):
        return max(1, min(len(formula), limits.max_ast_nodes))
    return NAMED_MODEL_NODES + (4 * len(layers) if isinstance(layers, list) else 0)


def refused_estimate_bytes(spec, passes: int, limits: Limits) -> int:
    """What a batch charges for an estimate that refused its job: the estimate's own work (parsing the formula,
    and `passes` walks of it, one per distinct shape set: 3-7 ms for a 500-node formula), at OP_BYTES a node,
    like the torch ops the nodes stand for (up to 2 MiB a pass at the defaults). A refused job computes nothing,
    but a batch of them must not be free: with every estimate charged at least its work, a batch stops after
    about max_request_bytes / OP_BYTES = 65,536 nodes of estimating."""
    return (1 + passes) * model_nodes(spec, limits) * OP_BYTES


def error_messages(messages) -> int:
    """How many messages a marshmallow error holds (its leaves: strings), walked without recursion."""
    count, stack = 0, [messages]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            count += 1
    return count


def answers_estimate(check, limits: Limits) -> Estimate:
    """What a raw check request's answers cost apart from its checks, counted before they load (nothing for what will
    not load): `deep answers`, ANSWER_LEVEL_BYTES a level of each answer (the loss, every gradient and intermediate)
    deeper than max_tensor_dims + 1 (a tensor answer's walks are in CHECK_BYTES); `ungraded answers`, the answers no
    check names (ungraded_answers: loaded and warned about, not graded), UNGRADED_ANSWER_BYTES each and
    UNGRADED_LEVEL_BYTES a level of their lists."""
    submission = check.get("submission") if isinstance(check, dict) else None
    if not isinstance(submission, dict):
        return Estimate()
    answers = [submission.get("loss")]
    for section in ("gradients", "intermediates"):
        if isinstance(submission.get(section), dict):
            answers += submission[section].values()
    estimate = deep_answers_estimate(answers, limits)
    ungraded = ungraded_answers(check)
    if ungraded:
        levels = levels_past(ungraded, 0, limits.max_request_bytes // UNGRADED_LEVEL_BYTES)
        estimate.add("ungraded answers", len(ungraded) * UNGRADED_ANSWER_BYTES + levels * UNGRADED_LEVEL_BYTES)
    return estimate


def deep_answers_estimate(answers: list, limits: Limits) -> Estimate:
    """`deep answers`: ANSWER_LEVEL_BYTES a level of each of these raw answers deeper than max_tensor_dims + 1, counted
    before they load (a check's, a problem file's)."""
    most = limits.max_request_bytes // ANSWER_LEVEL_BYTES  # past it, over the budget already: no need to count on
    estimate = Estimate()
    estimate.add("deep answers", levels_past(answers, limits.max_tensor_dims + 1, most) * ANSWER_LEVEL_BYTES)
    return estimate


def ungraded_answers(request) -> list:
    """The submitted answers no check of the request's `checks` names (none without `checks`: each answer is then a
    check of its own), on the raw JSON too: loaded, walked and warned about, never graded."""
    configured, submission = request.get("checks"), request.get("submission")
    if not isinstance(configured, dict) or not isinstance(submission, dict):
        return []
    ungraded = [submission["loss"]] if "loss" in submission and "loss" not in configured else []
    for section in ("gradients", "intermediates", "gradient_formulas"):
        answers = submission.get(section)
        if isinstance(answers, dict):
            ungraded += [answer for key, answer in answers.items() if f"{section}.{key}" not in configured]
    return ungraded


def raw_checks_count(check) -> int:
    """How many checks a check request grades (its `checks`, else its submission's answers), on the raw JSON
    too, before it loads (0 where it will not load)."""
    if not isinstance(check, dict):
        return 0
    configured = check.get("checks")
    if isinstance(configured, dict):
        return len(configured)
    submission = check.get("submission")
    if configured is not None or not isinstance(submission, dict):
        return 0
    sections = (submission.get(s) for s in ("gradients", "intermediates", "gradient_formulas"))
    return ("loss" in submission) + sum(len(s) for s in sections if isinstance(s, dict))


def raw_points_count(check) -> int:
    """How many points a check request grades at: its `points`, else `n_points` (default 5) with a `domain`, else
    one; on the raw JSON too, before it loads (1 where it will not load; the caller caps it at MAX_POINTS)."""
    if not isinstance(check, dict):
        return 1
    points, n_points = check.get("points"), check.get("n_points", 5)
    if isinstance(points, list):
        return max(1, len(points))
    if check.get("domain") and type(n_points) is int:
        return max(1, n_points)
    return 1


def checks_bytes(checks: int, points: int) -> int:
    """What `checks` checks cost over `points` points: each result (CHECK_BYTES) and its comparison at every point
    (CHECK_POINT_BYTES)."""
    return checks * (CHECK_BYTES + points * CHECK_POINT_BYTES)


def checks_estimate(request: dict, problem_file: bool = False) -> Estimate:
    """Each graded check's result and its comparison at every point (its numbers are counted with the points):
    the request's `checks`, or, without them, one per answer in the submission. An answer's own estimate, not its
    problem's. `problem_file`: a /v1/grade problem's checks, each loaded and rendered too (PROBLEM_CHECK_BYTES)."""
    estimate = Estimate()
    checks = raw_checks_count(request)
    estimate.add("checks", checks_bytes(checks, raw_points_count(request)))
    if problem_file:
        estimate.add("checks", checks * PROBLEM_CHECK_BYTES)
    return estimate


def domain_points(request: dict, limits: Limits) -> list[dict[str, Shape]]:
    """The shapes of every point a check will grade at; n_points x elements is checked before any draw."""
    if "points" in request:
        for point in request["points"]:
            check_inputs(point, limits, "a point's inputs")
        total = sum(slots(data.shape) for point in request["points"] for data in point.values())
        require(limits, "max_total_elements", total, f"the points have {total} elements in total", HINTS["points"])
        return [{name: data.shape for name, data in point.items()} for point in request["points"]]
    base = request.get("inputs", {})
    check_inputs(base, limits)
    shapes = {name: data.shape for name, data in base.items()}
    domain = request.get("domain")
    if not domain:
        return [shapes]
    shapes.update({name: shapes.get(name, ()) for name in domain})
    n = request.get("n_points", 5)
    total = n * sum(slots(s) for s in shapes.values())
    require(limits, "max_total_elements", total, f"the points have {total} elements in total", HINTS["points"])
    return [shapes] * n


def formula_parse_bytes(formula) -> int:
    """A parsed formula's own cost apart from its walk and its ops: FORMULA_BYTES, and OP_BYTES a node (None: the
    least any formula costs, one node)."""
    return FORMULA_BYTES + (1 if formula is None else formula.node_count) * OP_BYTES


def intermediate_key_estimate(key: str) -> Estimate:
    """What reading a submitted intermediate's `key` as a formula costs (canonical_text): charged before it runs."""
    estimate = Estimate()
    estimate.add("intermediate keys", INTERMEDIATE_KEY_BYTES + len(key) * INTERMEDIATE_KEY_CHAR_BYTES)
    return estimate


def formula_walk(formula, groups: list[tuple[dict[str, Shape], int]], limits: Limits) -> list[Pass]:
    """formula_pass at each group of points (distinct_shapes()): what formula_estimate needs of the shapes, to reuse
    for every check of the same formula (Problem.formula_passes). Its cost: walk_estimate(formula.node_count, ...)."""
    return [formula_pass(formula, shapes, limits) for shapes, _ in groups]


def formula_estimate(
    formula,
    groups: list[tuple[dict[str, Shape], int]],
    target: Shape,
    limits: Limits,
    stacked: bool = False,
    passes: list[Pass] | None = None,
) -> Estimate:
    """A submitted derivative formula evaluated (no grad, float64) at every point, broadcast to its gradient: its ops
    run once per group of points when `stacked` (the points of a group stacked: formula.stackable) else at every
    point, its elements and its values at every point. Its parse is formula_parse_bytes(), its walk walk_estimate().
    `groups`: distinct_shapes() of the points, computed once per problem (not once per formula: 128 formulas over
    100 points of 128 inputs re-grouped 1.6 M shapes, ~1 s); `passes`: formula_walk() over them, when known."""
    estimate = Estimate()
    if passes is None:
        passes = formula_walk(formula, groups, limits)
    for (_, count), one in zip(groups, passes, strict=True):
        ops = one.ops * OP_BYTES * (1 if stacked else count)
        estimate.add("formula", ops + count * (one.elements * 8 + slots(target) * (8 + 2 * RESPONSE_BYTES)))
    return estimate


def batch_require(
    limits: Limits,
    total: int,
    count: int,
    part: str = "jobs",
    what: str = "the batch's",
    of: int | None = None,
    hint: str | None = None,
) -> None:
    """The jobs of one batch (or its checks, or the problems of one problem file) share one budget: each may fit and
    the sum still be too much; the one place such a sum becomes a 413. `count` of them cost `total` together; `of`:
    the batch's size, when these are only its first jobs (charged as they load)."""
    if total > limits.max_request_bytes:
        which = f"{what} {count} {part}" if of is None else f"the first {count} of {what} {of} {part}"
        raise LimitExceeded(
            "max_request_bytes",
            limits.max_request_bytes,
            f"{which} would allocate about {_mib(total)} together; the budget is {_mib(limits.max_request_bytes)}",
            estimate=total,
            hint=hint or HINTS[part],
            breakdown={part: total},
        )
