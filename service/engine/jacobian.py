"""Derivatives of a non-scalar output: the full Jacobian (capped), vector-Jacobian and Jacobian-vector products.

The layer checks of backprop courses give an upstream gradient `dout` and ask for dx = dout·J (CS231n's
affine_backward, MyTorch's Linear.backward). That is the gradient of sum(dout * output), so `WithUpstream`
turns any model into a scalar one and every existing extra (graph, numeric, hessian) works unchanged.
"""
from __future__ import annotations

import torch

from .errors import LimitExceeded, ShapeError, UnknownVariable
from .limits import Deadline, Limits


def as_tensor(data, dtype: torch.dtype, limits: Limits, what: str) -> torch.Tensor:
    if len(data.values) > limits.max_tensor_elements:
        raise LimitExceeded(
            "max_tensor_elements", limits.max_tensor_elements,
            f"{what} has {len(data.values)} elements; the limit is {limits.max_tensor_elements}",
        )
    return torch.tensor(data.values, dtype=dtype).reshape(data.shape)


class WithUpstream:
    """The model's output contracted with `dout`: backward() then yields the VJP dout·J for every input."""

    per_sample = False

    def __init__(self, inner, dout: torch.Tensor) -> None:
        self.inner, self.dout = inner, dout

    def __getattr__(self, name):  # everything else (default_wrt, manual, diagnose, ...) is the model's own
        return getattr(self.inner, name)

    def forward(self, t: dict[str, torch.Tensor], record: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        out = self.inner.forward(t, record)
        if out.shape != self.dout.shape:
            raise ShapeError(f"dout has shape {list(self.dout.shape)}, but the output has shape {list(out.shape)}")
        if record is not None and not any(v is out for v in record.values()):
            record["output"] = out
        return (out * self.dout.to(out.dtype)).sum()


def upstream(model, request: dict, dtype: torch.dtype, limits: Limits):
    """The model, contracted with the request's `dout` when there is one."""
    if request.get("dout") is None:
        return model
    return WithUpstream(model, as_tensor(request["dout"], dtype, limits, "dout"))


def independent(out: torch.Tensor, leaves: dict[str, torch.Tensor], wrt: tuple[str, ...]) -> list[str]:
    """The `wrt` inputs autograd never reaches from `out`: the output does not depend on them at all
    (their derivatives are exact zeros, not zeros that happen to come out of the arithmetic)."""
    if not out.requires_grad:
        return list(wrt)
    grads = torch.autograd.grad(out.sum(), [leaves[n] for n in wrt], retain_graph=True, allow_unused=True)
    return [n for n, g in zip(wrt, grads) if g is None]


def jacobian(model, base: dict, wrt: tuple[str, ...], limits: Limits, deadline: Deadline) -> tuple[dict, list[str]]:
    """d(output)/d(input) for every `wrt` input, each of shape output.shape + input.shape, one reverse pass
    per output element; the cap answers 413 and points to `dout` (one pass for dout·J)."""
    with torch.enable_grad():
        leaves = model.prepare(base, wrt)
        out = model.forward(leaves)
        size = out.numel() * sum(leaves[n].numel() for n in wrt)
        if size > limits.max_jacobian_elements:
            raise LimitExceeded(
                "max_jacobian_elements", limits.max_jacobian_elements,
                f"the Jacobian has {out.numel()} output x {size // max(out.numel(), 1)} input elements = {size}; "
                f"the limit is {limits.max_jacobian_elements}. Send `dout` (the upstream gradient) instead: "
                "`gradients` is then the vector-Jacobian product dout·J, one backward pass",
            )
        unused = independent(out, leaves, wrt)
        used = [n for n in wrt if n not in unused]
        rows = {n: [] for n in used}
        flat = out.reshape(-1)
        for i in range(flat.numel()):
            deadline.check()
            grads = torch.autograd.grad(flat[i], [leaves[n] for n in used], retain_graph=True, allow_unused=True)
            for n, g in zip(used, grads):
                rows[n].append(torch.zeros_like(leaves[n]) if g is None else g)
    result = {}
    for n in wrt:
        shape = (*out.shape, *leaves[n].shape)
        if n in rows and rows[n]:
            result[n] = torch.stack(rows[n]).reshape(shape)
        else:
            result[n] = torch.zeros(shape, dtype=leaves[n].dtype)
    return result, unused


def jvp(model, base: dict, tangents: dict, wrt: tuple[str, ...], limits: Limits) -> tuple[torch.Tensor, list[str]]:
    """J·v: how the output moves when the inputs move along `tangents`."""
    unknown = [n for n in tangents if n not in base]
    if unknown:
        raise UnknownVariable(f"tangents name {', '.join(map(repr, unknown))}, which are not inputs")
    names = tuple(tangents)
    dtype = base[names[0]].dtype
    vectors = tuple(as_tensor(tangents[n], dtype, limits, f"tangent {n}") for n in names)
    for n, v in zip(names, vectors):
        if v.shape != base[n].shape:
            raise ShapeError(f"tangent {n} has shape {list(v.shape)}, but {n} has shape {list(base[n].shape)}")
    fixed = model.prepare(base, ())

    def output(*values):
        return model.forward({**fixed, **dict(zip(names, values))})

    # reverse over reverse (torch.autograd.functional's double-backward trick): forward-mode AD would load torch's
    # TorchScript decompositions on first use, seconds of start-up per worker for one request kind
    _, tangent_out = torch.autograd.functional.jvp(output, tuple(fixed[n] for n in names), vectors)
    with torch.enable_grad():
        leaves = model.prepare(base, names)
        unused = independent(model.forward(leaves), leaves, names)
    return tangent_out, unused
