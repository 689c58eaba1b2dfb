"""A submitted formula evaluated once over the points stacked (check.stacked_values) answers byte for byte what
evaluating it point by point answers: values, non-finite numbers, shape mismatches and errors naming the point."""

from __future__ import annotations

import math

import orjson
import pytest
import torch

from service.engine import check as check_module
from service.engine.formula import FUNCTIONS, STACKABLE_FUNCTIONS, STACKABLE_POWERS, Formula, parse_formula
from service.engine.limits import Limits

LIMITS = Limits()

# one model per kind of point set: scalar domain points, one point, tensors of mixed ranks, points of different
# shapes (interleaved groups), inputs shadowing the constants e and pi, special values
MODELS = {
    "domain": {
        "model": {"kind": "expression", "formula": "sum(sin(x)*y + x**3)"},
        "domain": {"x": [-2, 2], "y": [0.5, 3]},
        "n_points": 7,
        "seed": 3,
    },
    "one-point": {"model": {"kind": "expression", "formula": "sum(sin(x)*y + x**3)"}, "inputs": {"x": 0.3, "y": 2}},
    "ranks": {
        "model": {"kind": "expression", "formula": "sum(x*y) + z*z"},
        "points": [
            {"x": [0.5, -1.5, 2.0], "y": [[1.0, 2.0, 3.0], [-0.5, 0.25, 4.0]], "z": 0.75},
            {"x": [1.5, 0.5, -2.0], "y": [[2.0, 1.0, 0.5], [0.5, -0.25, 1.0]], "z": -1.25},
        ],
    },
    "mixed-shapes": {
        "model": {"kind": "expression", "formula": "sum(x**2) + sum(w*w)"},
        "points": [
            {"x": [0.5, 1.5, 2.5], "w": [1.0, 2.0, 3.0]},
            {"x": [0.5, 1.5], "w": [1.0, 2.0, 3.0]},
            {"x": [3.0, -1.0, 0.25], "w": [0.5, 0.5, 0.5]},
            {"x": [2.0, 1.0], "w": [4.0, 2.0, 1.0]},
        ],
    },
    "constants": {
        "model": {"kind": "expression", "formula": "sum(e*x + pi)"},
        "points": [{"e": 2.0, "x": [1.0, 2.0], "pi": [0.5, 0.25]}, {"e": -1.0, "x": [3.0, 0.5], "pi": [1.0, 2.0]}],
    },
    "function-names": {  # inputs named like the functions the formulas call: a name called is not the input
        "model": {"kind": "expression", "formula": "x**2 + sum(exp) + sum(abs)"},
        "points": [
            {"x": 1.5, "exp": [[0.5, 1.0], [2.0, -1.0]], "abs": [-2.0, 0.5, 1.0]},
            {"x": -0.5, "exp": [[1.5, -2.0], [0.25, 3.0]], "abs": [0.75, -0.5, 2.0]},
        ],
    },
    "special-values": {
        "model": {"kind": "expression", "formula": "sum(x*y)"},
        "points": [
            {"x": x, "y": y} for x, y in [(0.0, 0.5), (-0.0, -0.0), (1e308, 0.5), (-1e-310, 1e308), (3.0, -2.0)]
        ],
    },
}

FORMULAS = [
    *(f"{name}(x)" for name, spec in FUNCTIONS.items() if spec.arity == 1),
    "maximum(x, 0.25)",
    "minimum(0.25, x)",
    "relu(x - 0.5)",
    *(f"x ** {p:g}" for p in sorted(STACKABLE_POWERS)),
    "(x + 1) ** 0.5",
    "x ** -3",
    "x ** 2.5",
    "x ** x",
    "3*x + x*x/7 - -x",
    "sin(cos(tan(x))) * exp(-x**2) / (1 + x**2)",
    "sin(x) + sin(x)*sin(x)",  # shared subexpressions
    "2",
    "pi*e",
    "log(x - 10)",
    "1/(x - x)",
    "exp(1000*x)",
    "0/0*x",
    "sqrt(-abs(x) - 1)",
    "x*y",  # a shape that does not broadcast to the gradient, or an error, in some models
    "w",  # mixed-shapes: broadcasts to x's gradient at point 0, not at point 1
    "x*w",  # mixed-shapes: an evaluation error at point 1
    "q*x",  # an unknown variable
    "e*x + pi",
    "2*x*exp(0) + abs(-1)",  # function-names: calls exp and abs, which are also inputs there
    "exp*abs(x)",
    "1 / minimum(x, -0)",  # special-values: 0.0 and -0.0, whose minimum depends on the kernel
    "1 / maximum(-0, x)",
]


@pytest.fixture()
def per_point(monkeypatch):
    """Switch the stacked evaluation off: every formula point by point, as before it existed."""

    def switch():
        monkeypatch.setattr(Formula, "stackable", property(lambda self: False))

    return switch


def _check(client, body: dict) -> bytes:
    return client.post("/v1/check", data=orjson.dumps(body), content_type="application/json").data


@pytest.mark.parametrize("model", list(MODELS))
def test_stacked_formulas_answer_byte_for_byte_what_point_by_point_answers(client, monkeypatch, per_point, model):
    problem = MODELS[model]
    names = list((problem.get("inputs") or problem.get("points", [{}])[0] or problem["domain"]).keys())
    names += [n for n in problem.get("domain", {}) if n not in names]
    bodies = [{**problem, "submission": {"gradient_formulas": {n: f for n in names}}} for f in FORMULAS]
    stacked_runs: list[bool] = []
    real = check_module.stacked_values

    def counted(*args):
        groups = real(*args)
        stacked_runs.append(all(isinstance(g, torch.Tensor) for g in groups))
        return groups

    monkeypatch.setattr(check_module, "stacked_values", counted)
    stacked = [_check(client, body) for body in bodies]
    assert sum(stacked_runs) >= 30 * len(names)  # most of the corpus went the stacked way
    per_point()
    for formula, body, answer in zip(FORMULAS, bodies, stacked, strict=True):
        assert _check(client, body) == answer, formula
    checks = [c for a in stacked for c in orjson.loads(a).get("checks", [])]
    assert any(c["actual"] is not None for c in checks)
    messages = " ".join(c["message"] for c in checks)
    if model == "mixed-shapes":
        assert "your formula 'w' gives shape [3] at point 1 (x=[0.5, 1.5], w=[1, 2, 3])" in messages
        assert "your formula 'x*w' could not be evaluated: cannot apply * to shapes [2] and [3]" in messages
    if model == "ranks":
        assert "your formula 'x*y' gives shape [2, 3] at point 0" in messages
    assert "unknown variable 'q'" in messages


def _bits(t: torch.Tensor) -> bytes:
    """The float64 bits, every NaN as one NaN: a NaN's sign and payload never reach a response (encode.py)."""
    return torch.where(t.isnan(), math.nan, t).detach().numpy().tobytes()


def test_every_stackable_function_gives_the_bits_of_one_point():
    """The premise of STACKABLE_FUNCTIONS and STACKABLE_POWERS on this machine's torch: over values of every scale
    (and 0, -0, inf, nan, subnormals; NaN's sign bit aside: it never reaches a response), the function
    of a stacked tensor is, element for element, its value at a 0-dim point; a vectorized kernel with a scalar tail
    (sigmoid, sinh, ...) would differ in some last bits."""
    generator = torch.Generator().manual_seed(0)
    special = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e-310, -1e-310, 1e308, 709.8, -745.2, 1.0, -1.0, 40.0]
    parts = [torch.tensor(special, dtype=torch.float64)]
    for scale in (1e-6, 1, 10, 800):
        parts.append((torch.rand(300, generator=generator, dtype=torch.float64) * 2 - 1) * scale)
    x = torch.cat(parts)
    sources = [f"{name}(x)" for name in sorted(STACKABLE_FUNCTIONS) if FUNCTIONS[name].arity == 1]
    sources += [
        f"{name}({args})"
        for name in sorted(STACKABLE_FUNCTIONS)
        if FUNCTIONS[name].arity == 2
        for args in ("x, -0.0", "-0.0, x", "x, 0.25")
    ]
    sources += ["x*0.7 + x/3 - 0.1", "-x", "x - x", "-x + 0", "x * -0.0"]
    sources += [f"x ** {p!r}" for p in sorted(STACKABLE_POWERS)]
    for source in sources:
        formula = parse_formula(source, LIMITS)
        assert formula.stackable, source
        stacked = formula.evaluate({"x": x}, dtype=torch.float64, stacked=True)
        alone = [formula.evaluate({"x": v.clone()}, dtype=torch.float64) for v in x]
        assert _bits(stacked) == _bits(torch.stack(alone)), source


@pytest.mark.parametrize(
    ("source", "stackable"),
    [
        ("3*x + sin(y)**2 - x/y", True),
        ("sqrt(x + y) ** -0.5", True),
        ("maximum(x, y)", False),  # of 0.0 and -0.0: one zero at a point, the other over a tensor
        ("minimum(x, -0)", False),
        ("sigmoid(x)", False),
        ("sinh(x) + 1", False),
        ("x ** 2.5", False),
        ("x ** y", False),
        ("sum(x)", False),
        ("mean(x) * x", False),
        ("x / numel(x)", False),
    ],
)
def test_which_formulas_are_stacked(source, stackable):
    assert parse_formula(source, LIMITS).stackable is stackable
