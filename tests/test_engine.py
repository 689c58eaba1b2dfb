"""The engine without HTTP: neuron gradients against the tutorial's chain rule and gradcheck, over random points."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import kind_walked_from_the_end
from service.engine import Limits, compute
from service.engine.neuron import Neuron
from service.engine.values import last_non_number, parse_tensor, tensor_shape

LIMITS = Limits()
finite = st.floats(min_value=-3, max_value=3, allow_nan=False)  # |z| <= 12: the clamp stays idle


def request(model, inputs, **extra):
    body = {
        "model": model,
        "inputs": {k: parse_tensor(v) for k, v in inputs.items()},
        "mode": "grad",
        "dtype": "float64",
        "include": [],
    }
    body.update(extra)
    return body


def tutorial_manual(x, y, w, b):
    """The tutorial's manual chain rule, in plain Python."""
    z = w * x + b
    y_pred = 1 / (1 + math.exp(-z))
    dloss_dy_pred = (y_pred - y) / (y_pred * (1 - y_pred))
    dy_pred_dz = y_pred * (1 - y_pred)
    return dloss_dy_pred * dy_pred_dz * x, dloss_dy_pred * dy_pred_dz


def test_tutorial_scalar_neuron():
    body = compute(request({"kind": "neuron"}, {"x": 6.7, "y": 0.0, "w": 1.0, "b": 0.0}, dtype="float32"), LIMITS)
    assert (
        round(float(body["loss"]), 4),
        round(float(body["gradients"]["w"]), 4),
        round(float(body["gradients"]["b"]), 4),
    ) == (6.7012, 6.6918, 0.9988)


@settings(max_examples=40, deadline=None)
@given(x=finite, y=st.sampled_from([0.0, 1.0]), w=finite, b=finite)
def test_scalar_neuron_matches_the_tutorials_chain_rule(x, y, w, b):
    body = compute(request({"kind": "neuron"}, {"x": x, "y": y, "w": w, "b": b}), LIMITS)
    dw, db = tutorial_manual(x, y, w, b)
    assert float(body["gradients"]["w"]) == pytest.approx(dw, rel=1e-9, abs=1e-12)
    assert float(body["gradients"]["b"]) == pytest.approx(db, rel=1e-9, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 5),
    features=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    loss=st.sampled_from(["bce", "bce_with_logits"]),
)
def test_batch_neuron_manual_and_numeric_agree(rows, features, seed, reduction, loss):
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "x": torch.randn(rows, features, generator=g, dtype=torch.float64).tolist(),
        "y": torch.randint(0, 2, (rows,), generator=g).double().tolist(),
        "w": torch.randn(features, generator=g, dtype=torch.float64).tolist(),
        "b": float(torch.randn((), generator=g, dtype=torch.float64)),
    }
    model = {"kind": "neuron", "loss": loss, "reduction": reduction}
    body = compute(request(model, inputs, wrt=["w", "b", "x", "y"], include=["manual", "numeric"]), LIMITS)
    assert float(body["manual"]["max_abs_diff"]) < 1e-10
    assert float(body["numeric"]["max_abs_error"]) < 1e-6


def test_neuron_gradcheck():
    """torch's own gradcheck over the neuron's forward, in float64, for a batch with shared w and b."""
    neuron = Neuron({"loss": "bce", "reduction": "mean"})
    g = torch.Generator().manual_seed(0)
    base = {
        "x": torch.randn(4, 3, generator=g, dtype=torch.float64),
        "y": torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64),
        "w": torch.randn(3, generator=g, dtype=torch.float64),
        "b": torch.tensor(0.1, dtype=torch.float64),
    }
    leaves = neuron.prepare(base, ("w", "b"))
    assert torch.autograd.gradcheck(lambda w, b: neuron.forward({**leaves, "w": w, "b": b}), (leaves["w"], leaves["b"]))


def test_inference_and_grad_give_the_same_forward_value():
    inputs = {"x": [[1.0, 2.0], [0.5, -1.0]], "y": [1.0, 0.0], "w": [0.3, 0.1], "b": -0.2}
    grad = compute(request({"kind": "neuron"}, inputs), LIMITS)
    inference = compute(request({"kind": "neuron"}, inputs, mode="inference"), LIMITS)
    assert float(grad["loss"]) == float(inference["loss"])
    assert inference["gradients"] is None and inference["requires_grad"] is False


def test_wall_time_limit_cuts_off_long_work():
    from service.engine.errors import DeadlineExceeded

    body = request({"kind": "expression", "formula": "sum(sin(x)**2)"}, {"x": [0.1] * 1000}, include=["numeric"])
    with pytest.raises(DeadlineExceeded) as err:
        compute(body, Limits(max_wall_seconds=0.01))
    assert err.value.limit == "max_wall_seconds"


@pytest.mark.parametrize(
    ("value", "shape"),
    [
        (1, ()),
        (1.5, ()),
        ("NaN", ()),
        ([1, 2], (2,)),
        ([[1], [2]], (2, 1)),
        ([], (0,)),
        ([[], []], (2, 0)),
    ],
)
def test_parse_tensor_shapes(value, shape):
    assert parse_tensor(value).shape == shape == tensor_shape(value)


@pytest.mark.parametrize(
    "value",
    [[[1, 2], [3]], [1, [2]], [[1], 2], [[[1]], [[2, 3]]], [1, "nan"], ["NaN", True], [[None]], [[[]], [1]], {}],
)
def test_tensor_shape_refuses_what_parse_tensor_refuses_with_its_message(value):
    """The grader reads an answer's shape with tensor_shape and builds it with parse_tensor only when it fits:
    a ragged, mixed or non-numeric answer must get the message parse_tensor gave it."""
    with pytest.raises(ValueError) as parsed:
        parse_tensor(value)
    with pytest.raises(ValueError) as read:
        tensor_shape(value)
    assert str(read.value) == str(parsed.value)


# mostly numbers, now and then something else: several levels, each with or without a non-number
answer_leaves = st.sampled_from([0, 1.5, "NaN", "-Infinity", 2]) | st.sampled_from([True, None, "x", {}, "nan"])
answer_trees = st.recursive(answer_leaves, lambda inner: st.lists(inner, max_size=5), max_leaves=40)


@settings(max_examples=1000, deadline=None)
@given(answer_trees)
def test_last_non_number_is_the_one_a_walk_from_the_end_meets(value):
    """values.last_non_number reads levels with C loops and compares the levels' last non-numbers by their
    ancestors: the kind it finds is the one an item-by-item walk from the end finds, at any depth and mix."""
    assert last_non_number(value) is kind_walked_from_the_end(value)
