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


def _gradients(live_server, body: dict) -> dict:
    response = requests.post(live_server.url + "/v1/gradients", json={**body, "dtype": "float64"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _assert_manual_is_autograd(result: dict, label) -> None:
    manual = result["manual"]
    assert manual is not None, (label, result["warnings"])
    assert set(manual["gradients"]) == set(result["gradients"]), label
    for name, expected in result["gradients"].items():
        actual = torch.tensor(manual["gradients"][name], dtype=F64)
        torch.testing.assert_close(actual, torch.tensor(expected, dtype=F64), rtol=1e-9, atol=1e-12, msg=str(label))
    assert manual["max_abs_diff"] < 1e-9, label


def _one_input_as_a_vector(entry: CatalogEntry) -> dict:
    """The example with its first input made a 3-vector (the others stay scalars, broadcast over it)."""
    first = entry.variables[0]
    value = entry.example[first]
    return {**entry.example, first: [value, value * 0.5 + 0.25, value * 1.5 - 0.5]}


@pytest.mark.parametrize("name", NAMES)
def test_manual_is_the_vector_jacobian_product_with_dout(live_server, name: str) -> None:
    """With `dout`, autograd's gradients are dout·J; `manual` is the hand formula contracted with the same dout:
    a scalar dout at the example, and, where the output is elementwise, a vector dout over a vector input (the
    scalar inputs broadcast over it get their contributions, each scaled by its dout, summed back)."""
    entry = CATALOG[name]
    model = {"kind": "expression", "name": name}
    scalar = _gradients(live_server, {"model": model, "inputs": entry.example, "dout": 2.5, "include": ["manual"]})
    _assert_manual_is_autograd(scalar, (name, "scalar dout"))
    plain = _gradients(live_server, {"model": model, "inputs": entry.example})
    for input_name, value in plain["gradients"].items():  # a dout of 2.5 really scales the gradient
        scaled = torch.tensor(scalar["gradients"][input_name], dtype=F64)
        torch.testing.assert_close(scaled, torch.tensor(value, dtype=F64) * 2.5, rtol=1e-9, atol=1e-12)
    if any(isinstance(value, list) for value in entry.example.values()):
        return  # a reduction: the output is a scalar at every shape, and so is dout
    inputs = _one_input_as_a_vector(entry)
    result = _gradients(
        live_server, {"model": model, "inputs": inputs, "dout": [1.0, -2.0, 0.5], "include": ["manual", "numeric"]}
    )
    _assert_manual_is_autograd(result, (name, "vector dout"))
    assert result["numeric"]["max_abs_error"] < 1e-6


NEURON_DOUT_CASES = [
    ({"reduction": "mean"}, {"x": [1.0, -2.0, 0.5], "y": [0.0, 1.0, 1.0], "w": 0.7, "b": 0.1}, 2.5),
    ({"reduction": "sum"}, {"x": [1.0, -2.0, 0.5], "y": [0.0, 1.0, 1.0], "w": 0.7, "b": 0.1}, -1.5),
    ({"reduction": "none"}, {"x": [1.0, 2.0], "y": [0.0, 1.0], "w": 1.0, "b": 0.0}, [1.0, 2.0]),
    ({"reduction": "none"}, {"x": 0.5, "y": 1.0, "w": 2.0, "b": -0.5}, 3.0),
    (
        {"reduction": "none", "loss": "bce_with_logits"},
        {"x": [[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]], "y": [0.0, 1.0, 0.5], "w": [0.3, -0.2], "b": 0.1},
        [1.0, -2.0, 0.5],
    ),
]


@pytest.mark.parametrize(("spec", "inputs", "dout"), NEURON_DOUT_CASES)
def test_neuron_manual_is_the_vector_jacobian_product_with_dout(live_server, spec, inputs, dout) -> None:
    """The tutorial's chain rule scales each sample's dL/dz by its dout, as autograd's dout·J does."""
    body = {"model": {"kind": "neuron", **spec}, "inputs": inputs, "dout": dout, "wrt": ["w", "b", "x", "y"]}
    _assert_manual_is_autograd(_gradients(live_server, {**body, "include": ["manual"]}), (spec, dout))


def test_manual_sums_a_broadcast_input_over_every_element_it_was_spread_to(live_server) -> None:
    """quadratic_form with a scalar a, a row b and a column x: the hand formulas are derivatives at each of the
    2x2 elements, summed back to each input's shape (it was a 422 shape mismatch, and a's sum missed b's axis)."""
    body = {"model": {"kind": "expression", "name": "quadratic_form"}, "inputs": {"a": 2, "b": [1, 2], "x": [[1], [2]]}}
    result = _gradients(live_server, {**body, "include": ["manual"]})
    assert result["gradients"] == {"a": 10.0, "b": [3.0, 3.0], "x": [[11.0], [19.0]]}
    _assert_manual_is_autograd(result, "quadratic_form")


def test_manual_is_null_with_a_warning_where_its_formula_does_not_apply(live_server) -> None:
    """squared_error's w and b formulas are already summed over the samples (w, b scalars): for a vector w the
    hand formula does not apply, so `manual` is null and a warning says why; the gradients are still a 200."""
    inputs = {"w": [1.0, 2.0], "b": 0.0, "x": [1.0, 2.0], "y": [0.0, 0.0]}
    body = {"model": {"kind": "expression", "name": "squared_error"}, "inputs": inputs}
    result = _gradients(live_server, {**body, "include": ["manual"]})
    assert result["gradients"]["w"] == [1.0, 8.0]
    assert result["manual"] is None
    assert any(w.startswith("manual: ") and "'w'" in w and "[2]" in w for w in result["warnings"]), result["warnings"]


def test_manual_of_the_inputs_asked_for_holds_beside_a_formula_that_does_not(live_server) -> None:
    """Only `wrt`'s hand formulas are evaluated: squared_error's summed formula for a vector w made `manual` null
    for x too, whose formula applies (a second audit)."""
    inputs = {"w": [0.5, 1.0], "b": -1.0, "x": [1.0, 2.0], "y": [0.0, 1.0]}
    body = {"model": {"kind": "expression", "name": "squared_error"}, "inputs": inputs, "wrt": ["x"]}
    result = _gradients(live_server, {**body, "include": ["manual"]})
    assert set(result["manual"]["gradients"]) == {"x"}
    assert result["manual"]["gradients"]["x"] == pytest.approx(result["gradients"]["x"])
    assert result["manual"]["max_abs_diff"] == pytest.approx(0.0, abs=1e-6)
    assert not [w for w in result["warnings"] if w.startswith("manual: ")]
