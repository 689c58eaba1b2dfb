"""Derivatives of a non-scalar output: the full Jacobian (capped), vector-Jacobian and Jacobian-vector products.

The layer checks of backprop courses give an upstream gradient `dout` and ask for dx = dout·J (CS231n's
affine_backward, MyTorch's Linear.backward). That is the gradient of sum(dout * output), so `WithUpstream`
turns any model into a scalar one and every existing extra (graph, numeric, hessian) works unchanged.
"""

from __future__ import annotations

import torch

from .errors import ShapeError, UnknownVariable
from .graph import Trace
from .limits import Deadline


def as_tensor(data, dtype: torch.dtype) -> torch.Tensor:
    """A `dout` or tangent literal (its size was checked by the cost model, engine/cost.py)."""
    return torch.tensor(data.values, dtype=dtype).reshape(data.shape)


class WithUpstream:
    """The model's output contracted with `dout`: backward() then yields the VJP dout·J for every input."""

    per_sample = False

    def __init__(self, inner, dout: torch.Tensor) -> None:
        self.inner, self.dout = inner, dout

    def __getattr__(self, name):  # everything else (default_wrt, no_manual, diagnose, ...) is the model's own
        return getattr(self.inner, name)

    def forward(
        self, t: dict[str, torch.Tensor], record: dict[str, torch.Tensor] | None = None, trace: Trace | None = None
    ) -> torch.Tensor:
        out = self.inner.forward(t, record, trace)
        if out.shape != self.dout.shape:
            raise ShapeError(f"dout has shape {list(self.dout.shape)}, but the output has shape {list(out.shape)}")
        if record is not None and not any(v is out for v in record.values()):
            record["output"] = out
        weighted = out * self.dout.to(out.dtype)
        if trace is not None:
            trace.add(("output * dout", weighted))
        return weighted.sum()

    def manual(self, t: dict[str, torch.Tensor], wrt: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
        """The model's hand-derived gradient, contracted with the same `dout` as autograd's."""
        return self.inner.manual(t, wrt, self.dout)


def upstream(model, request: dict, dtype: torch.dtype):
    """The model, contracted with the request's `dout` when there is one."""
    if request.get("dout") is None:
        return model
    return WithUpstream(model, as_tensor(request["dout"], dtype))


def independent(out: torch.Tensor, leaves: dict[str, torch.Tensor], wrt: tuple[str, ...]) -> list[str]:
    """The `wrt` inputs autograd never reaches from `out`: the output does not depend on them at all
    (their derivatives are exact zeros, not zeros that happen to come out of the arithmetic)."""
    if not out.requires_grad:
        return list(wrt)
    grads = torch.autograd.grad(out.sum(), [leaves[n] for n in wrt], retain_graph=True, allow_unused=True)
    return [n for n, g in zip(wrt, grads, strict=True) if g is None]


def jacobian(model, base: dict, wrt: tuple[str, ...], deadline: Deadline) -> tuple[dict, list[str]]:
    """d(output)/d(input) for every `wrt` input, each of shape output.shape + input.shape, one reverse pass
    per output element (the cost model caps its size at max_jacobian_elements and suggests `dout`)."""
    with torch.enable_grad():
        leaves = model.prepare(base, wrt)
        out = model.forward(leaves)
        unused = independent(out, leaves, wrt)
        used = [n for n in wrt if n not in unused]
        rows = {n: [] for n in used}
        flat = out.reshape(-1)
        for i in range(flat.numel() if used else 0):  # nothing depends on wrt: zero blocks, no backward
            deadline.check()
            grads = torch.autograd.grad(flat[i], [leaves[n] for n in used], retain_graph=True, allow_unused=True)
            for n, g in zip(used, grads, strict=True):
                rows[n].append(torch.zeros_like(leaves[n]) if g is None else g)
    result = {}
    for n in wrt:
        shape = (*out.shape, *leaves[n].shape)
        if n in rows and rows[n]:
            result[n] = torch.stack(rows[n]).reshape(shape)
        else:
            result[n] = torch.zeros(shape, dtype=leaves[n].dtype)
    return result, unused


def jvp(model, base: dict, tangents: dict) -> tuple[torch.Tensor, list[str]]:
    """J·v: how the output moves when the inputs move along `tangents`."""
    unknown = [n for n in tangents if n not in base]
    if unknown:
        raise UnknownVariable(f"tangents name {', '.join(map(repr, unknown))}, which are not inputs")
    names = tuple(tangents)
    dtype = base[names[0]].dtype
    vectors = tuple(as_tensor(tangents[n], dtype) for n in names)
    for n, v in zip(names, vectors, strict=True):
        if v.shape != base[n].shape:
            raise ShapeError(f"tangent {n} has shape {list(v.shape)}, but {n} has shape {list(base[n].shape)}")
    fixed = model.prepare(base, ())

    def output(*values):
        return model.forward({**fixed, **dict(zip(names, values, strict=True))})

    tangent_out = _double_backward_jvp(output, tuple(fixed[n] for n in names), vectors)
    with torch.enable_grad():
        leaves = model.prepare(base, names)
        unused = independent(model.forward(leaves), leaves, names)
    return tangent_out, unused


def _double_backward_jvp(func, inputs: tuple[torch.Tensor, ...], vectors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """J·v by reverse over reverse, the double-backward trick of torch.autograd.functional.jvp (forward-mode AD
    would load torch's TorchScript decompositions on first use: seconds per worker for one request kind).

    Every backward starts from a scalar: torch.autograd.grad given a gradient tensor imports sympy (~32 MiB and
    ~0.6 s per process) only to compare two shapes. With u a dummy cotangent, g(u) = J^T u is the gradient of
    sum(out * u), and J·v the gradient of sum(g(u) · v) with respect to u."""
    with torch.enable_grad():
        inputs = tuple(t.detach().requires_grad_(True) for t in inputs)
        out = func(*inputs)
        u = torch.zeros_like(out, requires_grad=True)
        if not out.requires_grad:  # the output does not depend on the inputs at all
            return torch.zeros_like(out)
        grads = torch.autograd.grad((out * u).sum(), inputs, create_graph=True, allow_unused=True)
        terms = [(g * v).sum() for g, v in zip(grads, vectors, strict=True) if g is not None]
        if not terms:
            return torch.zeros_like(out)
        (tangent,) = torch.autograd.grad(sum(terms), (u,), allow_unused=True)
    return torch.zeros_like(out) if tangent is None else tangent.detach()
