"""The catalog's hand-derived gradients agree with autograd (and autograd with finite differences)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import requests
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine.catalog import CATALOG, CatalogEntry, manual_gradients
from service.engine.errors import ShapeError
from service.engine.formula import parse_formula
from service.engine.limits import Limits

LIMITS = Limits()
F64 = torch.float64
NAMES = sorted(CATALOG)


def tensors(point: dict, *, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(value, dtype=F64, requires_grad=requires_grad) for name, value in point.items()}


def autograd_gradients(entry: CatalogEntry, point: dict) -> dict[str, torch.Tensor]:
    env = tensors(point, requires_grad=True)
    out = parse_formula(entry.formula, LIMITS).evaluate(env, dtype=F64)
    grads = torch.autograd.grad(out, [env[name] for name in entry.variables])
    return dict(zip(entry.variables, grads, strict=True))


def check_point(entry: CatalogEntry, point: dict) -> None:
    """Manual == autograd at rtol 1e-6, and autograd passes gradcheck (finite differences)."""
    expected = autograd_gradients(entry, point)
    manual = manual_gradients(entry, tensors(point), dtype=F64, limits=LIMITS)
    assert set(manual) == set(entry.variables)
    for name in entry.variables:
        assert manual[name].shape == expected[name].shape
        torch.testing.assert_close(manual[name], expected[name], rtol=1e-6, atol=1e-12)

    formula = parse_formula(entry.formula, LIMITS)
    inputs = tuple(tensors(point, requires_grad=True)[name] for name in entry.variables)

    def run(*leaves: torch.Tensor) -> torch.Tensor:
        return formula.evaluate(dict(zip(entry.variables, leaves, strict=True)), dtype=F64)

    assert torch.autograd.gradcheck(run, inputs)


# Where each entry is finite: scalars or vectors drawn in a safe range (y > 0 for log(y)).
def _scalar(lo: float = -3.0, hi: float = 3.0) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def _vector(n: int, lo: float = -3.0, hi: float = 3.0) -> st.SearchStrategy[list[float]]:
    return st.lists(_scalar(lo, hi), min_size=n, max_size=n)


_SIZES = st.integers(1, 5)
POINTS: dict[str, Callable[[st.DataObject], dict]] = {
    "square": lambda d: {"x": d.draw(_scalar())},
    "sin_square": lambda d: {"x": d.draw(_scalar())},
    "mean_square": lambda d: {"x": d.draw(_vector(d.draw(_SIZES)))},
    "sum_square": lambda d: {"x": d.draw(_vector(d.draw(_SIZES)))},
    "cubic": lambda d: {"x": d.draw(_scalar())},
    "exp_log": lambda d: {"x": d.draw(_scalar()), "y": d.draw(_scalar(0.1, 5.0))},
    "tanh": lambda d: {"x": d.draw(_scalar())},
    "sigmoid": lambda d: {"x": d.draw(_scalar(-6.0, 6.0))},
    "softplus": lambda d: {"x": d.draw(_scalar(-6.0, 6.0))},
    "product": lambda d: {"x": d.draw(_scalar()), "y": d.draw(_scalar())},
    "squared_error": lambda d: (
        lambda n: {
            "w": d.draw(_scalar()),
            "b": d.draw(_scalar()),
            "x": d.draw(_vector(n)),
            "y": d.draw(_vector(n)),
        }
    )(d.draw(_SIZES)),
    "log_sum_exp": lambda d: {"x": d.draw(_vector(d.draw(_SIZES), -5.0, 5.0))},
    "quadratic_form": lambda d: (lambda n: {"a": d.draw(_vector(n)), "b": d.draw(_vector(n)), "x": d.draw(_vector(n))})(
        d.draw(_SIZES)
    ),
}


def test_every_entry_has_a_point_strategy() -> None:
    assert set(POINTS) == set(CATALOG)


@pytest.mark.parametrize("name", NAMES)
def test_entry_is_consistent(name: str) -> None:
    entry = CATALOG[name]
    assert entry.name == name and entry.description
    formula = parse_formula(entry.formula, LIMITS)
    assert set(formula.variables) == set(entry.variables)
    assert set(entry.gradient) == set(entry.variables)
    for source in entry.gradient.values():
        assert set(parse_formula(source, LIMITS).variables) <= set(entry.variables)
    assert set(entry.example) == set(entry.variables)
    value = formula.evaluate(tensors(entry.example), dtype=F64)
    assert value.dim() == 0 and math.isfinite(value.item())


@pytest.mark.parametrize("name", NAMES)
def test_manual_matches_autograd_at_example(name: str) -> None:
    check_point(CATALOG[name], CATALOG[name].example)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_manual_matches_autograd_at_random_points(name: str, data: st.DataObject) -> None:
    check_point(CATALOG[name], POINTS[name](data))


def test_tutorial_numbers() -> None:
    def manual(name: str) -> torch.Tensor:
        return manual_gradients(CATALOG[name], tensors(CATALOG[name].example), dtype=F64, limits=LIMITS)["x"]

    assert CATALOG["square"].example == {"x": 3.0}
    assert manual("square").item() == 6.0
    assert round(manual("sin_square").item(), 4) == -5.4668
    assert [round(v, 4) for v in manual("mean_square").tolist()] == [0.6667, 1.3333, 2.0]
    assert [round(v, 4) for v in autograd_gradients(CATALOG["mean_square"], {"x": [1, 2, 3]})["x"].tolist()] == [
        0.6667,
        1.3333,
        2.0,
    ]


def test_constant_gradient_is_broadcast_to_the_input_shape() -> None:
    entry = CatalogEntry("total", "sum(x)", ("x",), {"x": "1"}, "sum of x", {"x": [1.0, 2.0, 3.0]})
    grads = manual_gradients(entry, tensors(entry.example), dtype=torch.float32, limits=LIMITS)
    assert torch.equal(grads["x"], torch.ones(3))
    assert grads["x"].is_contiguous()


def test_broadcast_input_gets_its_contributions_summed() -> None:
    # A scalar x against a vector y: the elementwise gradient formulas are summed back to x's shape.
    point = {"w": 0.5, "b": -1.0, "x": 2.0, "y": [0.0, 1.0, 4.0]}
    entry = CATALOG["squared_error"]
    manual = manual_gradients(entry, tensors(point), dtype=F64, limits=LIMITS)
    for name, expected in autograd_gradients(entry, point).items():
        torch.testing.assert_close(manual[name], expected, rtol=1e-6, atol=1e-12)


def test_gradient_never_aliases_an_input() -> None:
    env = tensors({"x": 2.0, "y": 3.0}, requires_grad=True)
    grads = manual_gradients(CATALOG["product"], env, dtype=F64, limits=LIMITS)
    assert grads["x"] is not env["y"] and not grads["x"].requires_grad
    assert (grads["x"].item(), grads["y"].item()) == (3.0, 2.0)


def test_gradient_of_an_incompatible_shape_is_a_shape_error() -> None:
    entry = CatalogEntry("bad", "sum(x)", ("x",), {"x": "y"}, "wrong by design", {"x": [1.0, 2.0]})
    with pytest.raises(ShapeError, match="gradient for 'x'"):
        manual_gradients(entry, tensors({"x": [1.0, 2.0], "y": [1.0, 2.0, 3.0]}), dtype=F64, limits=LIMITS)


def test_every_published_gradient_map_posts_back_to_check_for_full_marks(live_server) -> None:
    """GET /v1/models publishes each gradient "in the formula language itself, so a client can post the same
    formula": posted back as gradient_formulas at the entry's example, by name and as a free-form formula, every
    check passes (a formula of another shape fails), and `include: ["manual"]` agrees with autograd there."""
    catalog = requests.get(live_server.url + "/v1/models", timeout=30).json()["expressions"]
    assert {entry["name"] for entry in catalog} == set(CATALOG)
    for entry in catalog:
        for model in (
            {"kind": "expression", "name": entry["name"]},
            {"kind": "expression", "formula": entry["formula"]},
        ):
            body = {"model": model, "inputs": entry["example"], "submission": {"gradient_formulas": entry["gradient"]}}
            result = requests.post(live_server.url + "/v1/check", json=body, timeout=60).json()
            failed = [c["message"] for c in result["checks"] if not c["passed"]]
            assert result["score"] == result["max_score"] == len(entry["variables"]), (entry["name"], failed)
        body = {
            "model": {"kind": "expression", "name": entry["name"]},
            "inputs": entry["example"],
            "include": ["manual"],
            "dtype": "float64",
        }
        computed = requests.post(live_server.url + "/v1/gradients", json=body, timeout=60).json()
        assert computed["manual"]["max_abs_diff"] < 1e-12, entry["name"]
        assert set(computed["manual"]["gradients"]) == set(entry["variables"])
