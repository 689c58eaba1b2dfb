"""One gradients request end to end: tensors in, forward, backward, and the optional extras out."""

from __future__ import annotations

import math

import numpy as np
import torch

from . import cost
from .encode import encode_tree
from .errors import NonScalarOutput, UnknownVariable
from .expression import Expression
from .graph import Trace, build_graph, to_dot
from .jacobian import jacobian, jvp, upstream
from .limits import Deadline, Limits
from .model import Model
from .network import Network
from .neuron import Neuron

DTYPES = {"float32": torch.float32, "float64": torch.float64}
GRAD_ONLY_EXTRAS = ("dot", "manual", "numeric", "hessian")
SCALAR_ONLY_EXTRAS = ("graph", "dot", "manual", "numeric", "hessian")  # each needs backward() from a scalar
FLOAT32_OVERFLOW = 2.0**128 - 2.0**103  # |v| from here rounds to infinity in float32 (3.4028235677973366e38)
SCANNED_IN_PYTHON = 64  # elements: min() and max() of the list below this, one torch.isinf over the tensor above


NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
NUMPY_FROM = 4096  # elements: below this torch.tensor(list) is as fast; above, numpy converts a list ~3x faster


def _tensor(values: list, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    if len(values) >= NUMPY_FROM and dtype in NUMPY_DTYPES:
        try:  # same IEEE rounding as torch.tensor, and as quiet about 1e308 -> inf (tests/test_hardening.py)
            with np.errstate(all="ignore"):
                return torch.from_numpy(np.array(values, dtype=NUMPY_DTYPES[dtype])).reshape(shape)
        except (OverflowError, TypeError, ValueError):
            pass
    return torch.tensor(values, dtype=dtype).reshape(shape)


def make_tensors(inputs: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Fresh tensors for every request, so nothing is shared or accumulated between requests."""
    return {name: _tensor(data.values, data.shape, dtype) for name, data in inputs.items()}


def beyond_float32(inputs: dict, tensors: dict[str, torch.Tensor]) -> list[str]:
    """A warning per input whose JSON numbers are finite but beyond float32's range (|v| > 3.4e38): the cast made
    them infinite, so what is computed is not what was sent. Screened in C loops (min/max of a short list, isinf
    over a long tensor); counted value by value only when something is out of range or infinite."""
    warnings = []
    for name, data in inputs.items():
        values = data.values
        if len(values) <= SCANNED_IN_PYTHON:
            if not values or (-FLOAT32_OVERFLOW < min(values) and max(values) < FLOAT32_OVERFLOW):  # NaN first: counted
                continue
        elif not torch.isinf(tensors[name]).any():
            continue
        beyond = sum(FLOAT32_OVERFLOW <= abs(v) < math.inf for v in values)
        if beyond:
            warnings.append(
                f"inputs.{name}: {beyond} of {len(values)} value(s) beyond float32's range (|v| > 3.4e38) became "
                'infinite; send "dtype": "float64"'
            )
    return warnings


MODEL_KINDS: dict[str, type[Model]] = {"neuron": Neuron, "expression": Expression, "network": Network}


def build_model(spec: dict, limits: Limits, deadline: Deadline) -> Model:
    """The model object for a loaded `model` spec, picked by its `kind`."""
    return MODEL_KINDS[spec["kind"]](spec, limits, deadline)


def wrt_of(request: dict, model: Model, inputs) -> tuple[str, ...]:
    """The names to differentiate with respect to: the request's `wrt`, else the model's default, else every input;
    each once (the schema refuses a duplicate in `wrt`; a default never has one, and the Jacobian and the gradients
    are keyed by name)."""
    return tuple(dict.fromkeys(request.get("wrt") or model.default_wrt or inputs))


def estimate(request: dict, limits: Limits, deadline: Deadline) -> tuple:
    """(model, wrt, bytes) once the cost model has accepted the request: nothing is allocated before this."""
    cost.check_inputs(request["inputs"], limits)
    model = build_model(request["model"], limits, deadline)
    shapes = model.shapes({name: data.shape for name, data in request["inputs"].items()})
    wrt = wrt_of(request, model, shapes)
    estimate = cost.gradients_estimate(request, model, shapes, wrt, limits)
    estimate.require(limits)
    return model, wrt, estimate.total


def estimate_cost(request: dict, limits: Limits) -> int:
    """The cost model's bytes for a gradients request (a LimitExceeded when it is over the budget)."""
    return estimate(request, limits, Deadline(limits.max_wall_seconds))[2]


def compute(request: dict, limits: Limits) -> dict:
    """Run a loaded GradientRequestSchema body; returns the JSON-ready response body."""
    deadline = Deadline(limits.max_wall_seconds)
    raw, wrt, _ = estimate(request, limits, deadline)
    dtype = DTYPES[request["dtype"]]
    tensors = make_tensors(request["inputs"], dtype)
    warnings = beyond_float32(request["inputs"], tensors) if dtype is torch.float32 else []
    base = raw.complete(tensors, dtype)
    unknown = [name for name in wrt if name not in base]
    if unknown:
        raise UnknownVariable(f"wrt names {', '.join(map(repr, unknown))}, which are not inputs")
    include = set(request["include"])
    if request["mode"] == "inference":  # the model's forward value, whatever `dout` says
        warnings.extend(skipped_in_inference(request, include))
        body = _inference(raw, base, include, warnings)
    else:
        model = upstream(raw, request, dtype)  # with `dout`: gradients are dout·J
        derivatives = "jacobian" in include or request.get("tangents")
        try:
            body = _grad(model, base, wrt, include, limits, deadline, warnings)
        except NonScalarOutput:
            if not derivatives or model is not raw:
                raise
            body = _inference(model, base, include, warnings, wrt)
            warnings.append("gradients need a scalar output: send `dout` for the vector-Jacobian product")
            warnings.extend(
                f"{extra} needs a scalar output: not computed (send `dout`)"
                for extra in SCALAR_ONLY_EXTRAS
                if extra in include
            )
        if derivatives:
            body.update(_derivatives(raw, base, wrt, request, deadline))
    body.update(mode=request["mode"], dtype=request["dtype"])
    body = encode_tree(body, warnings, as_text=True)  # goes straight to orjson
    body["warnings"] = warnings
    return body


def empty_body() -> dict:
    """A response body with every extra null; the computation fills in what was asked for."""
    return dict.fromkeys(("graph", "dot", "intermediates", "manual", "numeric", "hessian"))


def skipped_in_inference(request: dict, include: set) -> list[str]:
    """A warning for each grad-only option the request sent: inference runs the forward pass alone, so each is
    left out (`graph` too, which api.md documents as null there)."""
    skipped = [
        f"{extra} needs gradients: not computed in inference mode"
        for extra in (*GRAD_ONLY_EXTRAS, "jacobian")
        if extra in include
    ]
    if request.get("tangents"):
        skipped.append("jvp (`tangents`) needs gradients: not computed in inference mode")
    if request.get("dout") is not None:
        skipped.append("dout is ignored in inference mode: `loss` is the model's output, not its sum weighted by dout")
    return skipped


def _inference(model, base: dict, include: set, warnings: list[str], wrt: tuple = ()) -> dict:
    """Forward only, with gradient tracking off as in the tutorial's torch.no_grad() block; or, given `wrt` (grad
    mode, a non-scalar output without `dout`), on with those leaves, so `requires_grad` says what autograd saw."""
    record: dict[str, torch.Tensor] = {}
    with torch.set_grad_enabled(bool(wrt)):
        leaves = model.prepare(base, wrt)
        out = model.forward(leaves, record)
    body = empty_body()
    body.update(loss=out, gradients=None, requires_grad=out.requires_grad)
    if "intermediates" in include:
        body["intermediates"] = {k: {"value": v, "grad": None} for k, v in record.items()}
    warnings.extend(model.diagnose(record))
    return body


def forward_backward(
    model, base: dict, wrt: tuple, trace: Trace | None = None
) -> tuple[dict, torch.Tensor, dict, dict]:
    """Fresh leaves, the forward pass (intermediates recorded, their grads retained), backward from the output.
    With `trace` (the graph was asked for), every other intermediate is traced too, with its gradient when small.

    Returns (leaves, output, recorded intermediates, gradients by `wrt` name; zeros where the output
    does not depend on an input).
    """
    record: dict[str, torch.Tensor] = {}
    with torch.enable_grad():
        leaves = model.prepare(base, wrt)
        out = model.forward(leaves, record, trace)
        if out.dim() != 0 and not model.per_sample:
            raise NonScalarOutput(
                f"the output has shape {list(out.shape)}; backward() needs a scalar, so {model.scalar_advice}"
            )
        for t in record.values():
            if t.grad_fn is not None:
                t.retain_grad()
        if out.requires_grad:
            # per-sample losses: backward from their sum.  Never backward(gradient=...): torch then imports
            # sympy (~0.5 s and ~30 MiB in each worker, on its first request) only to compare two shapes.
            root = out if out.dim() == 0 else out.sum()
            if trace is None:
                root.backward()
            else:
                trace.backward(root, [leaves[n] for n in wrt])
    gradients = {n: leaves[n].grad if leaves[n].grad is not None else torch.zeros_like(leaves[n]) for n in wrt}
    return leaves, out, record, gradients


def _grad(model, base: dict, wrt: tuple, include: set, limits: Limits, deadline: Deadline, warnings: list[str]) -> dict:
    """Forward with fresh leaves, backward from the output, then the extras the client asked for."""
    trace = Trace(limits.graph_value_max_elements) if include & {"graph", "dot"} else None
    leaves, out, record, gradients = forward_backward(model, base, wrt, trace)
    deadline.check()
    body = empty_body()
    body.update(loss=out.detach(), gradients=gradients, requires_grad=out.requires_grad)
    unused = [n for n in wrt if leaves[n].grad is None]
    if unused:  # explicit: the output does not depend on these inputs at all (docs/networks.md)
        body["independent"] = unused
    if include & {"graph", "dot"}:
        known = dict(record)
        if not any(t is out for t in record.values()):
            known["loss"] = out
        graph = build_graph(out, leaves={n: leaves[n] for n in wrt}, known=known, limits=limits, trace=trace)
        body["graph"] = graph if "graph" in include else None
        body["dot"] = to_dot(graph) if "dot" in include else None
    if "intermediates" in include:  # a leaf among them (`output` is X itself) has its own gradient, not a retained one
        body["intermediates"] = {
            k: {"value": t.detach(), "grad": t.grad if t.retains_grad or t.is_leaf else None} for k, t in record.items()
        }
    if "manual" in include:
        body["manual"] = _manual(model, leaves, wrt, gradients, warnings)
    if "numeric" in include:
        body["numeric"] = _numeric(model, base, wrt, gradients, deadline)
    if "hessian" in include:
        body["hessian"] = _hessian(model, leaves, wrt, deadline)
    warnings.extend(model.diagnose(record))
    return body


def _derivatives(model, base: dict, wrt: tuple, request: dict, deadline: Deadline) -> dict:
    """`jacobian` (include) and `jvp` (tangents) of the raw output, and the inputs it does not depend on."""
    body, unused = {}, []
    if "jacobian" in request["include"]:
        body["jacobian"], unused = jacobian(model, base, wrt, deadline)
    if request.get("tangents"):
        body["jvp"], more = jvp(model, base, request["tangents"])
        unused += [n for n in more if n not in unused]
    if unused:
        body["independent"] = unused
    return body


def _max_abs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    diffs = [(a[n].double() - b[n].double()).abs().max() for n in a if a[n].numel()]
    return torch.stack(diffs).max() if diffs else torch.tensor(0.0, dtype=torch.float64)


def _manual(model, leaves: dict, wrt: tuple, gradients: dict, warnings: list[str]) -> dict | None:
    """The closed-form gradient beside autograd's, and their largest absolute difference."""
    with torch.no_grad():
        manual = model.manual({k: v.detach() for k, v in leaves.items()}, wrt)
    if manual is None:
        warnings.append(f"manual: {model.no_manual}")
        return None
    return {"gradients": manual, "max_abs_diff": _max_abs(manual, {n: gradients[n] for n in manual})}


def _numeric(model, base: dict, wrt: tuple, gradients: dict, deadline: Deadline) -> dict:
    """Central finite differences in float64, one element at a time, against autograd."""
    with torch.no_grad():
        t64 = model.prepare({k: v.double() for k, v in base.items()}, ())
        numeric = {}
        for name in wrt:
            x = t64[name] = t64[name].clone()
            flat, grad = x.view(-1), torch.zeros(x.numel(), dtype=torch.float64)
            for i in range(flat.numel()):
                deadline.check()
                orig = flat[i].item()
                h = 6e-6 * max(1.0, abs(orig))  # ~ cube root of float64 epsilon, scaled
                flat[i] = orig + h
                up = model.forward(t64).sum()
                flat[i] = orig - h
                down = model.forward(t64).sum()
                flat[i] = orig
                grad[i] = (up - down) / (2 * h)
            numeric[name] = grad.view(x.shape)
    abs_err = {n: (gradients[n].double() - numeric[n]).abs() for n in wrt}
    scale = {n: torch.maximum(gradients[n].double().abs(), numeric[n].abs()) for n in wrt}
    # 0 where both are 0; NaN where either is (a NaN beside an infinity is no agreement), as in max_abs_error
    rel = [torch.where(scale[n] == 0, 0.0, abs_err[n] / scale[n]).max() for n in wrt if numeric[n].numel()]
    return {
        "gradients": numeric,
        "max_abs_error": _max_abs(gradients, numeric),
        "max_rel_error": torch.stack(rel).max() if rel else torch.tensor(0.0, dtype=torch.float64),
    }


def _hessian(model, leaves: dict, wrt: tuple, deadline: Deadline) -> dict:
    """Second derivatives d²L/(da db) for every pair of `wrt` inputs, each of shape a.shape + b.shape."""
    if model.per_sample:
        raise NonScalarOutput('hessian needs a scalar loss: use reduction "mean" or "sum"')
    fixed = {k: v.detach() for k, v in leaves.items()}
    # torch's hessian cannot stack zero rows: an empty input's blocks are empty, computed without it
    full = tuple(n for n in wrt if fixed[n].numel())

    def loss_of(*values):
        deadline.check()
        return model.forward({**fixed, **dict(zip(full, values, strict=True))})

    blocks = torch.autograd.functional.hessian(loss_of, tuple(fixed[n] for n in full)) if full else ()
    index = {name: i for i, name in enumerate(full)}

    def block(a: str, b: str) -> torch.Tensor:
        if a in index and b in index:
            return blocks[index[a]][index[b]]
        return fixed[a].new_zeros(fixed[a].shape + fixed[b].shape)

    return {a: {b: block(a, b) for b in wrt} for a in wrt}
