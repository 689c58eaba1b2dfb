"""Named expressions with hand-derived gradients, so autograd can be checked against the chain rule done by hand."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from .cost import broadcast
from .errors import ShapeError, UnknownVariable
from .formula import Formula, parse_formula
from .limits import Limits


@dataclass(frozen=True)
class CatalogEntry:
    """One named expression; `formula` and every `gradient` are in the formula language, so clients can post them."""

    name: str
    formula: str
    variables: tuple[str, ...]
    gradient: dict[str, str]
    description: str
    example: dict[str, float | list] = field(default_factory=dict)
    # Inputs whose gradient formula is already summed over the elements the input was broadcast to (not a
    # derivative at each element): it holds for an input of one element only. Not published by GET /v1/models.
    summed: tuple[str, ...] = ()


_ENTRIES = (
    CatalogEntry(
        name="square",
        formula="x**2",
        variables=("x",),
        gradient={"x": "2*x"},
        description="x squared; the tutorial's first example (gradient 6 at x = 3)",
        example={"x": 3.0},
    ),
    CatalogEntry(
        name="sin_square",
        formula="sin(x**2)",
        variables=("x",),
        gradient={"x": "cos(x**2)*2*x"},
        description="sin of x squared: the chain rule, outer derivative cos(x**2) times inner 2*x (-5.4668 at x = 3)",
        example={"x": 3.0},
    ),
    CatalogEntry(
        name="mean_square",
        formula="mean(x**2)",
        variables=("x",),
        gradient={"x": "2*x/numel(x)"},
        description="mean of squares; each element gets 2*x/n (x = [1, 2, 3] gives [0.6667, 1.3333, 2.0])",
        example={"x": [1.0, 2.0, 3.0]},
    ),
    CatalogEntry(
        name="sum_square",
        formula="sum(x**2)",
        variables=("x",),
        gradient={"x": "2*x"},
        description="sum of squares; each element gets 2*x",
        example={"x": [1.0, 2.0, 3.0]},
    ),
    CatalogEntry(
        name="cubic",
        formula="3*x**3 - 2*x**2 + x - 5",
        variables=("x",),
        gradient={"x": "9*x**2 - 4*x + 1"},
        description="a cubic polynomial; differentiate term by term",
        example={"x": 2.0},
    ),
    CatalogEntry(
        name="exp_log",
        formula="exp(x)*log(y)",
        variables=("x", "y"),
        gradient={"x": "exp(x)*log(y)", "y": "exp(x)/y"},
        description="product of a function of x and a function of y (needs y > 0)",
        example={"x": 1.0, "y": 2.0},
    ),
    CatalogEntry(
        name="tanh",
        formula="tanh(x)",
        variables=("x",),
        gradient={"x": "1 - tanh(x)**2"},
        description="hyperbolic tangent; its derivative is 1 - tanh(x)**2",
        example={"x": 0.5},
    ),
    CatalogEntry(
        name="sigmoid",
        formula="sigmoid(x)",
        variables=("x",),
        gradient={"x": "sigmoid(x)*(1 - sigmoid(x))"},
        description="logistic sigmoid; its derivative is sigmoid(x)*(1 - sigmoid(x))",
        example={"x": 0.5},
    ),
    CatalogEntry(
        name="softplus",
        formula="log(1 + exp(x))",
        variables=("x",),
        gradient={"x": "sigmoid(x)"},
        description="softplus written out; its derivative exp(x)/(1 + exp(x)) is the sigmoid",
        example={"x": 0.5},
    ),
    CatalogEntry(
        name="product",
        formula="x*y",
        variables=("x", "y"),
        gradient={"x": "y", "y": "x"},
        description="product of two inputs; each one's gradient is the other",
        example={"x": 2.0, "y": 3.0},
    ),
    CatalogEntry(
        name="squared_error",
        formula="mean((w*x + b - y)**2)",
        variables=("w", "b", "x", "y"),
        # With r = w*x + b - y: each element of x and y gets its own 2*r/n term; the scalars w and b were broadcast
        # over every element, so theirs add up, to 2*mean(r*x) and 2*mean(r): formulas of the gradient's shape, so a
        # client can post them back to /v1/check (tests/test_catalog.py).
        gradient={
            "w": "2*mean((w*x + b - y)*x)",
            "b": "2*mean(w*x + b - y)",
            "x": "2*(w*x + b - y)*w/numel(w*x + b - y)",
            "y": "-2*(w*x + b - y)/numel(w*x + b - y)",
        },
        description="mean squared error of a line w*x + b against targets y (w, b scalars; x, y vectors)",
        example={"w": 0.5, "b": -1.0, "x": [1.0, 2.0, 3.0], "y": [0.0, 1.0, 1.0]},
        summed=("w", "b"),
    ),
    CatalogEntry(
        name="log_sum_exp",
        formula="log(sum(exp(x)))",
        variables=("x",),
        gradient={"x": "exp(x)/sum(exp(x))"},
        description="log-sum-exp; its gradient is the softmax of x",
        example={"x": [1.0, 2.0, 3.0]},
    ),
    CatalogEntry(
        name="quadratic_form",
        formula="sum(a*x**2 + b*x)",
        variables=("a", "b", "x"),
        gradient={"x": "2*a*x + b", "a": "x**2", "b": "x"},
        description="sum of an elementwise quadratic a*x**2 + b*x (a, b, x of the same shape)",
        example={"a": [1.0, 2.0], "b": [0.5, -1.0], "x": [1.0, -2.0]},
    ),
)

CATALOG: dict[str, CatalogEntry] = {entry.name: entry for entry in _ENTRIES}


@functools.lru_cache(maxsize=256)
def parsed(source: str, limits: Limits) -> Formula:
    """Gradient formulas are fixed text: parse each once per limits."""
    return parse_formula(source, limits)


def _vjp(
    grad: torch.Tensor, span: tuple[int, ...], dout: torch.Tensor | None, shape: torch.Size, name: str
) -> torch.Tensor:
    """The input's gradient from a derivative at each element of `span` (the shape the formula works over): times
    the upstream gradient `dout` (of the output's shape: `span`, or a scalar after a reduction), then summed back
    over the elements the input was broadcast to, as autograd does."""
    if broadcast(tuple(grad.shape), span) != span:
        raise ShapeError(
            f"gradient for {name!r} has shape {list(grad.shape)}, which does not fit the shape {list(span)} "
            "the formula works over"
        )
    grad = grad.expand(span)
    if dout is not None:
        grad = grad * dout.to(grad.dtype)
    return grad.sum_to_size(shape).clone(memory_format=torch.contiguous_format)


def _summed(grad: torch.Tensor, dout: torch.Tensor | None, shape: torch.Size, name: str) -> torch.Tensor:
    """An input's gradient from a formula already summed over its copies (`summed`): right for one element only."""
    if grad.numel() != 1 or shape.numel() != 1:
        raise ShapeError(
            f"the gradient formula for {name!r} is summed over the elements {name!r} is broadcast to, so it holds "
            f"for a {name!r} of one element; {name!r} has shape {list(shape)}"
        )
    if dout is not None:
        grad = grad * dout.to(grad.dtype)
    return grad.reshape(shape).clone()


def manual_gradients(
    entry: CatalogEntry,
    env: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype,
    limits: Limits,
    dout: torch.Tensor | None = None,
    wrt: tuple[str, ...] | None = None,
) -> dict[str, torch.Tensor]:
    """Evaluate the entry's hand-derived gradient formulas (those of `wrt`'s inputs when given), each shaped like its
    input, as an independent check; with `dout` (the output's upstream gradient), the vector-Jacobian product dout·J,
    as autograd computes it.

    Raises ShapeError where a formula does not apply to the inputs' shapes."""
    missing = [name for name in entry.variables if name not in env]
    if missing:
        raise UnknownVariable(f"unknown variable {missing[0]!r}; inputs are: {', '.join(env) or '(none)'}")
    # the cost model's broadcast, not torch.broadcast_shapes: that imports sympy (~0.8 s and ~32 MiB in a worker)
    span = broadcast(*(tuple(env[name].shape) for name in entry.variables))
    if span is None:
        raise ShapeError(f"the inputs {', '.join(entry.variables)} do not broadcast together")
    if dout is not None and broadcast(tuple(dout.shape), span) != span:
        raise ShapeError(f"dout has shape {list(dout.shape)}, which does not fit the shape {list(span)}")
    grads: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, source in entry.gradient.items():
            if wrt is not None and name not in wrt:
                continue  # not asked for: a formula that does not fit other inputs' shapes cannot void this one
            value = parsed(source, limits).evaluate(env, dtype=dtype).detach()
            if name in entry.summed:
                grads[name] = _summed(value, dout, env[name].shape, name)
            else:
                grads[name] = _vjp(value, span, dout, env[name].shape, name)
    return grads
