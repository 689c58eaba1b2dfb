"""Batches of gradients jobs: homogeneous neuron jobs run as one vectorized torch pass, byte-identical to one by one."""

from __future__ import annotations

import torch

from . import cost
from .compute import DTYPES, beyond_float32, compute, empty_body, wrt_of
from .encode import encode_tree
from .limits import Deadline, Limits
from .neuron import Neuron

VECTOR_INCLUDES = {"intermediates"}
MAX_VECTOR_ELEMENTS = 4096  # per tensor per job: beyond this torch may split loops across threads differently


def vector_key(job: dict):
    """Jobs with equal keys run in one vectorized pass; None: run this job on its own."""
    model = job["model"]
    if model["kind"] != "neuron" or model["loss"] != "bce" or not set(job["include"]) <= VECTOR_INCLUDES:
        return None
    if job.get("dout") is not None or job.get("tangents"):  # the stacked pass computes neither
        return None
    shapes = tuple((name, job["inputs"][name].shape) for name in ("x", "y", "w", "b"))
    if any(len(job["inputs"][name].values) > MAX_VECTOR_ELEMENTS for name in ("x", "y", "w", "b")):
        return None
    w_dims, x_dims = len(job["inputs"]["w"].shape), len(job["inputs"]["x"].shape)
    samples = x_dims - 1 if w_dims == 1 else x_dims
    if model["reduction"] == "none" and samples > 0:
        return None  # per-sample leaves: one by one
    wrt = wrt_of(job, Neuron, ())
    return (
        model["loss"],
        model["reduction"],
        model["epsilon"],
        job["dtype"],
        job["mode"],
        wrt,
        tuple(sorted(job["include"])),
        shapes,
    )


def compute_many(jobs: list[dict], limits: Limits, deadline: Deadline | None = None) -> list[dict | Exception]:
    """Loaded gradients requests in order; homogeneous neuron jobs share one vectorized pass.

    A job that fails gives its exception in its place; once `deadline` has passed, the remaining jobs
    are not run and get DeadlineExceeded.
    """
    deadline = deadline or Deadline(limits.max_wall_seconds)
    results: list[dict | Exception | None] = [None] * len(jobs)
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        key = vector_key(job)
        if key is not None:
            groups.setdefault(key, []).append(i)
    for indices in groups.values():
        if len(indices) < 2:
            continue
        try:
            deadline.check()
            bodies = vectorized_neuron([jobs[i] for i in indices], limits)
        except Exception:  # a shape or limit problem: the one-by-one path reports it per job
            continue
        for i, body in zip(indices, bodies, strict=True):
            results[i] = body
    for i, job in enumerate(jobs):
        if results[i] is None:
            try:
                deadline.check()
                results[i] = compute(job, limits)
            except Exception as err:  # noqa: BLE001 - reported per job by the caller
                results[i] = err
    return results


def _rowwise(op, t: torch.Tensor, k: int) -> torch.Tensor:
    """Apply an elementwise op job by job, as the single-job path does.

    torch runs elementwise kernels in SIMD chunks with a scalar tail, and the SIMD and scalar code of
    transcendental functions (sigmoid, log) may differ in the last bit. Viewing the stacked jobs as rows of a
    padded buffer stops torch from merging the rows, so each job's elements take the same chunk/tail path
    as in its own request and the results match bit for bit.
    """
    flat = t.reshape(k, -1)
    padded = torch.cat([flat, torch.zeros(k, 1, dtype=t.dtype)], dim=1)[:, : flat.shape[1]]
    return op(padded).reshape(t.shape)


class _RowSigmoid(torch.autograd.Function):
    """sigmoid with forward and backward kernels run row by row (see _rowwise)."""

    @staticmethod
    def forward(ctx, z, k):
        y = _rowwise(torch.sigmoid, z, k)
        ctx.save_for_backward(y)
        ctx.k = k
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        k = ctx.k
        g = grad.reshape(k, -1)
        yy = y.reshape(k, -1)
        pad = torch.zeros(k, 1, dtype=y.dtype)
        gp = torch.cat([g, pad], 1)[:, : g.shape[1]]
        yp = torch.cat([yy, pad], 1)[:, : yy.shape[1]]
        return torch.ops.aten.sigmoid_backward(gp, yp).reshape(y.shape), None


class _RowLog(torch.autograd.Function):
    """log with its forward kernel run row by row; its backward (a division) is exact either way."""

    @staticmethod
    def forward(ctx, x, k):
        ctx.save_for_backward(x)
        return _rowwise(torch.log, x, k)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / x, None


def vectorized_neuron(jobs: list[dict], limits: Limits) -> list[dict]:
    """One forward/backward pass over K homogeneous neuron jobs stacked on a new leading axis."""
    deadline = Deadline(limits.max_wall_seconds)
    first = jobs[0]
    cost.check_inputs(first["inputs"], limits)
    k, dtype = len(jobs), DTYPES[first["dtype"]]
    neuron = Neuron(first["model"])
    # validate shapes exactly as the single path does (identical shapes: once is enough)
    one = {n: torch.tensor(d.values, dtype=dtype).reshape(d.shape) for n, d in first["inputs"].items()}
    neuron.prepare(one, ())
    stacked = {
        name: torch.tensor([job["inputs"][name].values for job in jobs], dtype=dtype).reshape(
            k, *first["inputs"][name].shape
        )
        for name in ("x", "y", "w", "b")
    }
    wrt = wrt_of(first, neuron, ())
    grad_mode = first["mode"] == "grad"
    leaves = dict(stacked)
    for name in wrt if grad_mode else ():
        leaves[name] = leaves[name].requires_grad_(True)
    x, y, w, b = leaves["x"], leaves["y"], leaves["w"], leaves["b"]
    zdims = x.dim() - 1 - (1 if neuron.vector_w else 0)  # sample axes per job
    with torch.enable_grad() if grad_mode else torch.no_grad():
        # each job's w and b broadcast over that job's samples only
        ww = w.reshape(k, *([1] * zdims), *w.shape[1:])
        z = neuron.linear(x, ww, b.reshape(k, *([1] * zdims)))
        y_pred, losses = neuron.clamped_bce(
            z, y, sigmoid=lambda t: _RowSigmoid.apply(t, k), log=lambda t: _RowLog.apply(t, k)
        )
        loss = neuron.reduce(losses, jobs=k)
        if grad_mode:
            z.retain_grad()
            y_pred.retain_grad()
            loss.sum().backward()  # not backward(gradient=...): that imports sympy (compute.py)
        deadline.check()
    if grad_mode and zdims and x.shape[1 : 1 + zdims].numel() == 1:
        # one sample a job: alone, w and b broadcast over its sample axes and their gradients are summed over them,
        # a sum of one element, which is the element plus 0.0 (-0.0 becomes 0.0); stacked, nothing broadcasts, so
        # nothing sums, and + 0.0 is that sum's whole effect (bit for bit: tests/test_batch.py)
        for name in ("w", "b"):
            if name in wrt:
                leaves[name].grad.add_(0.0)
    infinite = dtype is torch.float32 and any(torch.isinf(t).any() for t in stacked.values())
    bodies = []
    for i in range(k):
        # infinite inputs (sent, or beyond float32's range: then warned of, as alone)
        warnings = beyond_float32(jobs[i]["inputs"], {n: t[i] for n, t in stacked.items()}) if infinite else []
        body = empty_body()
        gradients = {n: leaves[n].grad[i] for n in wrt} if grad_mode else None
        body.update(loss=loss[i].detach(), gradients=gradients, requires_grad=bool(grad_mode and loss.requires_grad))
        if "intermediates" in first["include"]:
            body["intermediates"] = {
                "z": {"value": z[i].detach(), "grad": z.grad[i] if grad_mode else None},
                "y_pred": {"value": y_pred[i].detach(), "grad": y_pred.grad[i] if grad_mode else None},
            }
        warnings.extend(neuron.diagnose({"y_pred": y_pred[i].detach()}, targets=y[i]))
        body.update(mode=first["mode"], dtype=first["dtype"])
        body = encode_tree(body, warnings, as_text=True)  # goes straight to orjson
        body["warnings"] = warnings
        bodies.append(body)
    return bodies
