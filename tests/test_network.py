"""Coursework networks: published fixtures, gradients in every layout against torch.func, Jacobians, tolerance
profiles and the diagnosis of classic backprop mistakes — in process and against the live gunicorn server."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.engine import network, refcache
from service.engine.fixtures import FIXTURES

FIXTURE = {f["name"]: f for f in FIXTURES}


def post(client, path, body):
    response = client.post(path, json=body)
    return response.status_code, response.get_json()


# --- published values ---------------------------------------------------------------------------------
# CS231n assignment 1: cs231n/classifiers/neural_net.py (e.g. AKSoo/CS231n-2017) initialises
# W1 = std*randn(D, H), b1 = zeros, W2 = std*randn(H, C), b2 = zeros after np.random.seed(0); two_layer_net.ipynb
# draws X = 10*randn(5, 4) after np.random.seed(1), y = [0, 1, 2, 2, 1], and checks net.loss(X, y, reg=0.05)
# against correct_loss = 1.30378789133 (reg * ΣW²).
# CS231n assignment 2: FullyConnectedNets.ipynb (e.g. AKSoo/CS231n-2017 assignment2/) sets linspace weights
# and X = np.linspace(-5.5, 4.5, num=N*D).reshape(D, N).T, y = [0, 5, 1]; correct_loss 3.4702243556 at reg 0 and
# 26.5948426952 at model.reg = 1.0 (0.5 * reg * ΣW² in fc_net.py), both asserted to within 1e-10.
# CMU 11-785 HW1P1 MyTorch autograder, TestLinear (mytorch.nn.linear.Linear): A, W, b and dLdZ as in the
# fixture; dLdW_solution [[28, 30], [24, 30], [20, 30]], dLdb_solution [[2], [6], [10]], atol 1e-4.
# deeplearning.ai "Building your Deep Neural Network: Step by Step", public_tests.py compute_cost_test:
# Y = [[1, 1, 0]], AL = [[.8, .9, 0.4]], expected_output 0.27977656.
PUBLISHED = {
    "cs231n_two_layer_toy": ("loss", 1.30378789133, 1e-10),
    "cs231n_fc_net_toy": ("loss", 3.4702243556, 1e-10),
    "cs231n_fc_net_toy_reg": ("loss", 26.5948426952, 1e-10),
    "dlai_compute_cost": ("loss", 0.27977656, 1e-8),  # the course prints 8 decimals
}


def _cs231n_toy_numpy() -> float:
    """The old CS231n toy net written out in numpy, as the course's solution computes it."""
    np.random.seed(0)
    w1, b1 = 0.1 * np.random.randn(4, 10), np.zeros(10)
    w2, b2 = 0.1 * np.random.randn(10, 3), np.zeros(3)
    np.random.seed(1)
    x, y = 10 * np.random.randn(5, 4), np.array([0, 1, 2, 2, 1])
    scores = np.maximum(0, x @ w1 + b1) @ w2 + b2
    scores -= scores.max(axis=1, keepdims=True)
    p = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    return -np.log(p[np.arange(5), y]).mean() + 0.05 * ((w1**2).sum() + (w2**2).sum())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_losses(client, name):
    field, value, tol = PUBLISHED[name]
    status, body = post(client, "/v1/gradients", FIXTURE[name]["request"])
    assert status == 200, body
    assert abs(body[field] - value) < tol
    assert FIXTURE[name]["expected"][field] == value


def test_cs231n_toy_matches_numpy_written_out(client):
    _, body = post(client, "/v1/gradients", FIXTURE["cs231n_two_layer_toy"]["request"])
    assert body["loss"] == pytest.approx(_cs231n_toy_numpy(), abs=1e-13)


def test_mytorch_linear_toy(client):
    status, body = post(client, "/v1/gradients", FIXTURE["mytorch_linear_toy"]["request"])
    assert status == 200, body
    assert body["gradients"]["W1"] == [[28, 30], [24, 30], [20, 30]]
    assert body["gradients"]["b1"] == [[2], [6], [10]]
    assert body["gradients"]["X"] == [[4, -5], [4, 4], [4, 13], [4, 22]]  # the course's dLdA_solution
    assert body["intermediates"]["Z1"]["value"] == [[10, -3, -16], [4, -1, -6], [-2, 1, 4], [-8, 3, 14]]


@pytest.mark.live
def test_published_fixtures_live(live_server):
    for fixture in FIXTURES:
        response = requests.post(live_server.url + "/v1/gradients", json=fixture["request"], timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        for field, value in fixture["expected"].items():
            if field == "loss":
                assert abs(body["loss"] - value) < PUBLISHED.get(fixture["name"], (0, 0, 1e-12))[2]
            elif field == "gradients":
                assert body["gradients"] == value
    models = requests.get(live_server.url + "/v1/models", timeout=10).json()
    assert [n["name"] for n in models["networks"]] == [f["name"] for f in FIXTURES]
    assert set(models["kinds"]["network"]["layouts"]) == set(network.LAYOUTS)
    assert models["limits"]["max_jacobian_elements"] > 0


# --- every layout against torch.func ------------------------------------------------------------------


def reference_loss(params: dict, x, y, layers, loss: dict, l2: dict):
    """An independent samples-first (CS231n-shaped) network: W (in, out), b (out,)."""
    h, block = x, 0
    for layer in layers:
        block += 1
        h = h @ params[f"W{block}"] + params[f"b{block}"]
        act = layer.get("activation")
        if act == "relu":
            h = torch.relu(h)
        elif act == "tanh":
            h = torch.tanh(h)
        elif act == "sigmoid":
            h = torch.sigmoid(h)
        elif act == "leaky_relu":
            h = torch.where(h > 0, h, 0.01 * h)
    n = x.shape[0]
    kind = loss["type"]
    if kind == "none":
        return h
    if kind == "softmax_cross_entropy":
        per = -torch.log_softmax(h, 1)[torch.arange(n), y.long()]
    elif kind == "hinge":  # torch's own multiclass SVM kernel, which divides each sample's sum by the classes
        per = F.multi_margin_loss(h, y.long(), margin=loss.get("margin", 1.0), reduction="none") * h.shape[1]
    else:
        per = ((h - y) ** 2).sum(1)
    data = per.mean() if loss.get("reduction", "mean") == "mean" else per.sum()
    factor = {"sum_sq": 1.0, "half_sum_sq": 0.5, "over_2m": 0.5 / n}[l2["form"]]
    return data + l2["reg"] * factor * sum((params[k] ** 2).sum() for k in params if k.startswith("W"))


def to_layout(layout: str, name: str, t: torch.Tensor) -> torch.Tensor:
    """A samples-first/CS231n tensor in another course's shape."""
    if name == "X":
        return t.t() if layout == "dlai" else t
    if name.startswith("W"):
        return t if layout == "cs231n" else t.t()
    return t.reshape(-1, 1) if layout in ("mytorch", "dlai") else t


@st.composite
def random_networks(draw):
    n, d = draw(st.integers(2, 4)), draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    # whole numbers, as the toy data an instructor writes by hand: ties at the kinks (a hinge margin or a ReLU
    # input of exactly 0), where autograd must take the courses' side (`margins > 0`, `x > 0`). Only linear layers
    # and ReLU keep every value whole, so both sides compute a tie exactly, whatever their order of summation.
    whole = draw(st.booleans())
    kinds = [None, "relu"] if whole else [None, "relu", "tanh", "sigmoid", "leaky_relu"]
    acts = [draw(st.sampled_from(kinds)) for _ in widths[:-1]] + [None]
    kind = draw(st.sampled_from(["softmax_cross_entropy", "hinge", "mse"]))
    if kind != "mse":
        widths[-1] = max(widths[-1], 2)
    loss = {"type": kind, "reduction": draw(st.sampled_from(["mean", "sum"]))}
    if kind == "hinge":
        loss["margin"] = draw(st.sampled_from([1.0, 0.0, 0.5]))
    l2 = {"reg": draw(st.sampled_from([0.0, 0.3])), "form": draw(st.sampled_from(sorted(network.L2_FORMS)))}
    seed = draw(st.integers(0, 2**16))
    layout = draw(st.sampled_from(sorted(network.LAYOUTS)))
    return n, d, widths, acts, loss, l2, seed, layout, whole


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(random_networks())
def test_gradients_equal_torch_func_in_every_layout(client, net):
    n, d, widths, acts, loss, l2, seed, layout, whole = net
    gen = torch.Generator().manual_seed(seed)
    layers = [{"type": "linear", "out_features": w, "activation": a} for w, a in zip(widths, acts, strict=True)]

    def draw(*shape):
        values = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return values.mul(1.5).round() if whole else values

    params, fan_in = {}, d
    for i, w in enumerate(widths, 1):
        params[f"W{i}"] = draw(fan_in, w)
        params[f"b{i}"] = draw(w)
        fan_in = w
    x = draw(n, d)
    if loss["type"] == "mse":
        y = torch.randn(n, widths[-1], generator=gen, dtype=torch.float64)
        y_sent = to_layout(layout, "X", y)
    else:
        y = torch.randint(0, widths[-1], (n,), generator=gen).double()
        y_sent = y
    inputs = {k: to_layout(layout, k, v).tolist() for k, v in {**params, "X": x}.items()}
    body = {
        "model": {"kind": "network", "layout": layout, "layers": layers, "loss": loss, "l2": l2},
        "inputs": {**inputs, "y": y_sent.tolist()},
        "dtype": "float64",
        "include": ["numeric"],
    }
    status, out = post(client, "/v1/gradients", body)
    assert status == 200, out
    grads = torch.func.grad(lambda p, xx: reference_loss(p, xx, y, layers, loss, l2), argnums=(0, 1))(params, x)
    expected = {**{k: to_layout(layout, k, v) for k, v in grads[0].items()}, "X": to_layout(layout, "X", grads[1])}
    assert out["loss"] == pytest.approx(reference_loss(params, x, y, layers, loss, l2).item(), rel=1e-12, abs=1e-12)
    for name, value in expected.items():
        got = torch.tensor(out["gradients"][name], dtype=torch.float64)
        assert got.shape == value.shape, name
        assert torch.allclose(got, value, rtol=1e-10, atol=1e-12), name
    if not whole:  # at a kink, central differences average the two sides: no reference there
        assert out["numeric"]["max_abs_error"] < 1e-6 * max(1.0, max(v.abs().max().item() for v in expected.values()))


def test_batchnorm_and_dropout_equal_torch(client):
    """Train-mode batchnorm (biased and unbiased variance) and seeded inverted dropout against torch.func."""
    gen = torch.Generator().manual_seed(3)
    x, w, b = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((5, 3), (3, 4), (4,)))
    gamma, beta = (
        torch.rand(4, generator=gen, dtype=torch.float64) + 0.5,
        torch.randn(4, generator=gen, dtype=torch.float64),
    )
    y = torch.tensor([0, 1, 3, 2, 1.0])
    mask = torch.from_numpy(np.random.RandomState(7).rand(5, 4) < 0.6).double() / 0.6
    for variance, correction in (("biased", 0), ("unbiased", 1)):

        def loss_of(w, b, gamma, beta, x, correction=correction):
            z = x @ w + b
            zhat = (z - z.mean(0)) / torch.sqrt(z.var(0, correction=correction) + 1e-5)
            a = torch.relu(gamma * zhat + beta) * mask
            return -torch.log_softmax(a, 1)[torch.arange(5), y.long()].mean()

        body = {
            "model": {
                "kind": "network",
                "layout": "cs231n",
                "loss": {"type": "softmax_cross_entropy"},
                "layers": [
                    {"type": "linear", "out_features": 4},
                    {"type": "batchnorm", "variance": variance},
                    {"type": "relu"},
                    {"type": "dropout", "keep_prob": 0.6, "seed": 7},
                ],
            },
            "inputs": {
                "X": x.tolist(),
                "y": y.tolist(),
                "W1": w.tolist(),
                "b1": b.tolist(),
                "gamma1": gamma.tolist(),
                "beta1": beta.tolist(),
            },
            "dtype": "float64",
            "include": ["intermediates"],
        }
        status, out = post(client, "/v1/gradients", body)
        assert status == 200, out
        grads = torch.func.grad(loss_of, argnums=(0, 1, 2, 3, 4))(w, b, gamma, beta, x)
        for name, g in zip(("W1", "b1", "gamma1", "beta1", "X"), grads, strict=True):
            assert torch.allclose(torch.tensor(out["gradients"][name], dtype=torch.float64), g, atol=1e-12), name
        assert list(out["intermediates"]) == ["Z1", "BN1", "A1", "D1"]


def test_each_batchnorm_layer_owns_its_gamma_and_beta(client):
    """Two batchnorms after one linear layer are two torch.nn.BatchNorm1d: gamma1/beta1 and gamma1_2/beta1_2, each
    its own leaf (they once shared gamma1, which numeric and the Hessian silently perturbed together)."""
    gen = torch.Generator().manual_seed(5)
    x, w1, w2 = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((6, 3), (3, 4), (4, 2)))
    norms = [torch.rand(f, generator=gen, dtype=torch.float64) + 0.5 for f in (4, 4, 2)]
    shifts = [torch.randn(f, generator=gen, dtype=torch.float64) for f in (4, 4, 2)]
    y = torch.tensor([0, 1, 1, 0, 1, 0.0])
    names = ["W1", "gamma1", "beta1", "gamma1_2", "beta1_2", "W2", "gamma2", "beta2", "X"]
    values = [w1, norms[0], shifts[0], norms[1], shifts[1], w2, norms[2], shifts[2], x]

    def loss_of(w1, g1, b1, g12, b12, w2, g2, b2, x):
        torch_bn = [torch.nn.BatchNorm1d(f, dtype=torch.float64) for f in (4, 4, 2)]
        for bn, g, b in zip(torch_bn, (g1, g12, g2), (b1, b12, b2), strict=True):
            del bn.weight, bn.bias
            bn.weight, bn.bias = g, b
        h = torch.relu(torch_bn[1](torch_bn[0](x @ w1)))
        return F.cross_entropy(torch_bn[2](h @ w2), y.long())

    body = {
        "model": {
            "kind": "network",
            "layout": "cs231n",
            "loss": {"type": "softmax_cross_entropy"},
            "layers": [
                {"type": "linear", "out_features": 4, "bias": False},
                {"type": "batchnorm"},
                {"type": "batchnorm"},
                {"type": "relu"},
                {"type": "linear", "out_features": 2, "bias": False},
                {"type": "batchnorm"},
            ],
        },
        "inputs": {"y": y.tolist(), **{n: v.tolist() for n, v in zip(names, values, strict=True)}},
        "dtype": "float64",
        "include": ["intermediates", "numeric"],
    }
    status, out = post(client, "/v1/gradients", body)
    assert status == 200, out
    assert list(out["gradients"]) == names
    assert list(out["intermediates"]) == ["Z1", "BN1", "BN1_2", "A1", "Z2", "BN2"]
    grads = torch.func.grad(loss_of, argnums=tuple(range(9)))(*values)
    for name, g in zip(names, grads, strict=True):
        assert torch.allclose(torch.tensor(out["gradients"][name], dtype=torch.float64), g, atol=1e-10), name
    assert out["numeric"]["max_abs_error"] < 1e-6


def test_two_batchnorms_in_a_block_give_a_jacobian_by_distinct_names(client):
    """The audit's 370-byte request (a linear layer, two batchnorms, loss none, the Jacobian) was a 500: the default
    `wrt` named gamma1 and beta1 twice. Its Jacobian has one block per distinct parameter."""
    body = {
        "model": {
            "kind": "network",
            "layout": "cs231n",
            "layers": [{"type": "linear", "out_features": 2}, {"type": "batchnorm"}, {"type": "batchnorm"}],
            "loss": {"type": "none"},
            "init": {"scheme": "numpy_legacy", "seed": 0, "std": 0.1},
            "generate": {"X": {"scheme": "numpy_legacy", "seed": 1, "shape": [3, 2]}},
        },
        "inputs": {},
        "include": ["jacobian"],
        "dtype": "float64",
    }
    status, out = post(client, "/v1/gradients", body)
    assert status == 200, out
    assert list(out["jacobian"]) == ["W1", "b1", "gamma1", "beta1", "gamma1_2", "beta1_2", "X"]
    assert np.array(out["jacobian"]["gamma1_2"]).shape == (3, 2, 2)
    status, out = post(client, "/v1/gradients", {**body, "inputs": {"gamma1_3": [1.0, 1.0]}})
    assert status == 422 and "gamma1_2" in out["detail"], out


@pytest.fixture()
def seeds(monkeypatch) -> list:
    """The seed of every numpy RandomState made while the test runs, in order."""
    made: list = []

    class Counting(np.random.RandomState):
        def __init__(self, seed=None):
            made.append(seed)
            super().__init__(seed)

    monkeypatch.setattr(np.random, "RandomState", Counting)
    return made


def test_seeded_dropout_mask_drawn_once_per_request(client, seeds):
    """`numeric` runs a forward pass per perturbed element; a seeded layer seeds its RandomState once per request
    (audit F8: once per pass, ~120 us each, charged ~30 us), and its mask stays the one that seed draws."""
    layers = [{"type": "linear", "out_features": 3}, *({"type": "dropout", "p": 0.3, "seed": s} for s in (4, 5, 4))]
    body = {
        "model": {"kind": "network", "layout": "torch", "loss": {"type": "mse"}, "layers": layers},
        "inputs": {
            "X": [[0.5, -1.0], [2.0, 0.25]],
            "y": [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]],
            "W1": [[1.0, 2.0], [-0.5, 0.25], [3.0, -1.0]],
            "b1": [0.1, 0.2, -0.3],
        },
        "dtype": "float64",
        "include": ["numeric"],
    }
    status, out = post(client, "/v1/gradients", body)
    assert status == 200, out
    assert out["numeric"]["max_abs_error"] < 1e-6
    assert sorted(seeds) == [4, 5]  # layers 2 and 4 share (seed, shape, p): one draw serves both
    # Every pass multiplies by the very mask a fresh RandomState(seed) gives, in the activation's dtype.
    net = network.Network(body["model"])
    for dtype in (torch.float32, torch.float64):
        h = torch.ones(2, 3, dtype=dtype)
        want = torch.from_numpy(np.random.RandomState(4).rand(2, 3) < 0.7).to(dtype) * (1.0 / 0.7)
        for _ in range(2):
            assert torch.equal(net._dropout_mask(layers[1], h, None), want)


class _FreshStreamEveryPass:
    """The model-wide dropout stream as it was: a new RandomState(dropout_seed) every forward pass, drawn in layer
    order (the reference the kept masks must equal)."""

    def __init__(self, seed, root):
        self.stream = np.random.RandomState(seed)

    @staticmethod
    def root():
        return None

    def keep(self, shape, keep_prob):
        return self.stream.rand(*shape) < keep_prob


def _dropout_networks():
    """Networks drawing from the model-wide `dropout_seed` stream: one dropout, several of one shape and different
    keep_prob, mixed with a layer's own seed and mask, batchnorm, both layouts; each with `numeric` (a pass per
    perturbed element) and its intermediates."""
    x = [[0.5, -1.0, 0.25], [2.0, 0.25, -0.5], [-1.5, 1.0, 0.75], [0.1, 0.2, 0.3]]
    init = {"init": {"scheme": "numpy_legacy", "seed": 2, "std": 0.5}}
    torch_net = {"kind": "network", "layout": "torch", "loss": {"type": "mse"}, "dropout_seed": 11, **init}
    cs231n = {"kind": "network", "layout": "cs231n", "loss": {"type": "softmax_cross_entropy"}, "dropout_seed": 5}
    relu4 = {"type": "linear", "out_features": 4, "activation": "relu"}
    bodies = [
        (
            {**torch_net, "layers": [relu4, {"type": "dropout", "p": 0.3}, {"type": "linear", "out_features": 2}]},
            {"X": x, "y": [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, 1.0]]},
        ),
        (
            {
                **torch_net,
                "layers": [
                    relu4,
                    {"type": "dropout", "keep_prob": 0.8},
                    {"type": "dropout", "p": 0.5, "seed": 3},
                    {"type": "dropout", "keep_prob": 0.6},
                    {"type": "linear", "out_features": 4},
                    {"type": "dropout", "keep_prob": 0.8},
                    {"type": "dropout", "keep_prob": 0.7, "mask": [[1, 0, 1, 1]] * 4},
                    {"type": "linear", "out_features": 3, "activation": "tanh"},
                    {"type": "dropout", "keep_prob": 0.9},
                ],
            },
            {"X": x, "y": [[0.0, 1.0, 0.5]] * 4},
        ),
        (
            {
                **cs231n,
                "layers": [
                    {"type": "linear", "out_features": 5},
                    {"type": "batchnorm"},
                    {"type": "relu"},
                    {"type": "dropout", "keep_prob": 0.75},
                    {"type": "linear", "out_features": 3},
                    {"type": "dropout", "keep_prob": 0.75, "scale": False},
                ],
                **init,
            },
            {"X": x, "y": [0, 2, 1, 2]},
        ),
    ]
    return [
        {"model": model, "inputs": inputs, "dtype": dtype, "include": ["numeric", "intermediates"]}
        for model, inputs in bodies
        for dtype in ("float64", "float32")
    ]


def test_the_model_wide_dropout_stream_is_drawn_once_per_request(client, monkeypatch, seeds):
    """A model-wide `dropout_seed` seeded a new RandomState every forward pass (~120 us; `numeric` runs two passes
    per element, a check's diagnosis more): its masks are now drawn once per request and kept by the shapes drawn
    before them in the pass, and every response is byte for byte what a fresh stream every pass gives."""
    for cache in ("CACHE", "PROBLEMS"):  # every request computes its references: none is kept from another
        monkeypatch.setattr(refcache, cache, refcache.ReferenceCache(0, 0))
    for body in _dropout_networks():
        seeds.clear()
        kept = client.post("/v1/gradients", json=body)
        assert kept.status_code == 200, kept.json
        numeric = kept.json["numeric"]
        assert numeric["max_abs_error"] < (1e-2 if body["dtype"] == "float32" else 1e-6), numeric
        assert seeds.count(body["model"]["dropout_seed"]) == 1, seeds  # one stream, not one per pass
        with monkeypatch.context() as fresh:
            fresh.setattr(network, "DropoutStream", _FreshStreamEveryPass)
            seeds.clear()
            reference = client.post("/v1/gradients", json=body)
            assert seeds.count(body["model"]["dropout_seed"]) > 2 * 12  # the old way: a stream per pass
        assert kept.data == reference.data
    # a check of such a network: its references, and its wrong answer's diagnoses (a network per variant)
    body = _dropout_networks()[4]
    wrong = {"gradients": {"b2": [0.0] * 3, "W2": [[0.0] * 3] * 5}}
    check = {"model": body["model"], "inputs": body["inputs"], "submission": wrong}
    kept = client.post("/v1/check", json=check)
    with monkeypatch.context() as fresh:
        fresh.setattr(network, "DropoutStream", _FreshStreamEveryPass)
        reference = client.post("/v1/check", json=check)
    assert kept.status_code == 200 and not kept.json["passed"] and kept.data == reference.data


# --- Jacobians, VJPs, JVPs ----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch.func.jvp's first use
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from(sorted(network.LAYOUTS)),
    st.integers(0, 999),
)
def test_jacobian_vjp_jvp_equal_torch_func(client, n, d, h, layout, seed):
    gen = torch.Generator().manual_seed(seed)
    w, b, x = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in ((d, h), (h,), (n, d)))
    dout, tangent = (
        torch.randn(n, h, generator=gen, dtype=torch.float64),
        torch.randn(d, h, generator=gen, dtype=torch.float64),
    )

    def out_of(w, b, x):
        return torch.tanh(x @ w + b)

    sent = {"W1": to_layout(layout, "W1", w), "b1": to_layout(layout, "b1", b), "X": to_layout(layout, "X", x)}
    body = {
        "model": {
            "kind": "network",
            "layout": layout,
            "loss": {"type": "none"},
            "layers": [{"type": "linear", "out_features": h, "activation": "tanh"}],
        },
        "inputs": {k: v.tolist() for k, v in sent.items()},
        "dtype": "float64",
        "include": ["jacobian"],
        "tangents": {"W1": to_layout(layout, "W1", tangent).tolist()},
    }
    status, out = post(client, "/v1/gradients", body)
    assert status == 200, out
    assert out["gradients"] is None and out["warnings"][-1].startswith("gradients need a scalar output")

    # the service works in the layout; the reference in samples-first shapes: compare through the same views
    def in_layout(wl, bl, xl):
        result = out_of(wl if layout == "cs231n" else wl.t(), bl.reshape(-1), xl.t() if layout == "dlai" else xl)
        return result.t() if layout == "dlai" else result

    jac = torch.func.jacrev(in_layout, argnums=(0, 1, 2))(sent["W1"], sent["b1"], sent["X"])
    for name, j in zip(("W1", "b1", "X"), jac, strict=True):
        assert torch.allclose(torch.tensor(out["jacobian"][name], dtype=torch.float64), j, atol=1e-12), name
    _, jvp_out = torch.func.jvp(
        lambda wl: in_layout(wl, sent["b1"], sent["X"]), (sent["W1"],), (to_layout(layout, "W1", tangent),)
    )
    assert torch.allclose(torch.tensor(out["jvp"], dtype=torch.float64), jvp_out, atol=1e-12)

    upstream = to_layout(layout, "X", dout) if layout == "dlai" else dout
    body = {**body, "include": [], "dout": upstream.tolist()}
    del body["tangents"]
    status, out = post(client, "/v1/gradients", body)
    assert status == 200, out
    _, pullback = torch.func.vjp(in_layout, sent["W1"], sent["b1"], sent["X"])
    for name, g in zip(("W1", "b1", "X"), pullback(upstream), strict=True):
        assert torch.allclose(torch.tensor(out["gradients"][name], dtype=torch.float64), g, atol=1e-12), name


def test_jacobian_of_a_formula_and_the_independence_flag(client):
    body = {
        "model": {"kind": "expression", "formula": "x**2"},
        "inputs": {"x": [1.0, 2.0], "y": 3.0},
        "wrt": ["x", "y"],
        "include": ["jacobian"],
        "dtype": "float64",
    }
    status, out = post(client, "/v1/gradients", body)
    assert status == 200, out
    assert out["jacobian"] == {"x": [[2.0, 0.0], [0.0, 4.0]], "y": [0.0, 0.0]}
    assert out["independent"] == ["y"]
    assert out["requires_grad"] is True and out["mode"] == "grad"  # grad mode: the output does track gradients
    status, out = post(
        client, "/v1/gradients", {**body, "model": {"kind": "expression", "formula": "sum(x**2)"}, "include": []}
    )
    assert out["gradients"]["y"] == 0.0 and out["independent"] == ["y"]
    status, out = post(
        client, "/v1/gradients", {**body, "model": {"kind": "expression", "formula": "sum(x**2) + y*0"}, "include": []}
    )
    assert "independent" not in out  # y is in the graph: its zero gradient is computed, not structural


def test_jacobian_cap_is_a_413_that_suggests_dout(client):
    body = {
        "model": {
            "kind": "network",
            "layout": "torch",
            "loss": {"type": "none"},
            "layers": [{"type": "linear", "out_features": 200}],
            "init": {"scheme": "zeros"},
        },
        "inputs": {"X": [[0.0] * 100] * 60},
        "include": ["jacobian"],
    }
    status, out = post(client, "/v1/gradients", body)
    assert status == 413, out
    assert out["limit"]["name"] == "max_jacobian_elements" and "dout" in out["hint"]
    assert out["limit"]["estimate"] == 60 * 200 * (200 * 100 + 200 + 60 * 100)  # output x (W1, b1, X) elements


# --- bad input ----------------------------------------------------------------------------------------

TOY = {
    "kind": "network",
    "layout": "cs231n",
    "loss": {"type": "softmax_cross_entropy"},
    "layers": [{"type": "linear", "out_features": 3, "activation": "relu"}, {"type": "linear", "out_features": 2}],
}


@pytest.mark.parametrize(
    ("model", "inputs", "status", "needle"),
    [
        ({**TOY, "layout": "keras"}, {"X": [[1.0]], "y": [0]}, 400, "layout"),
        ({**TOY, "layers": [{"type": "linear"}]}, {"X": [[1.0]], "y": [0]}, 400, "out_features"),
        ({**TOY, "layers": [{"type": "relu", "eps": 1}]}, {"X": [[1.0]], "y": [0]}, 400, "does not take eps"),
        (TOY, {"X": [[1.0, 2.0]], "y": [0]}, 422, "W1"),
        ({**TOY, "init": {"scheme": "zeros"}}, {"X": [[1.0, 2.0]], "y": [0], "W1": [[1.0, 2.0, 3.0]]}, 422, "layout"),
        ({**TOY, "init": {"scheme": "zeros"}}, {"X": [[1.0, 2.0]], "y": [2]}, 422, "class labels"),
        ({**TOY, "init": {"scheme": "zeros"}}, {"X": [[1.0, 2.0]], "y": [0], "Q": 1.0}, 422, "no input 'Q'"),
        (
            {**TOY, "init": {"scheme": "zeros"}, "layers": [{"type": "linear", "out_features": 1_000_000}] * 9},
            {"X": [[1.0] * 64] * 64, "y": [0] * 64},
            413,
            "max_tensor_elements",
        ),
    ],
)
def test_bad_networks_are_problems(client, model, inputs, status, needle):
    code, out = post(client, "/v1/gradients", {"model": model, "inputs": inputs})
    assert code == status, out
    assert needle in str(out)


def test_a_network_over_the_budget_is_a_413_before_anything_is_built(client):
    """Every tensor fits max_tensor_elements, but 20 layers of 1000 x 1000 do not fit the request budget."""
    model = {
        **TOY,
        "layers": [{"type": "linear", "out_features": 1000, "activation": "relu"}] * 20,
        "init": {"scheme": "zeros"},
        "generate": {"X": {"scheme": "zeros", "shape": [1000, 1000]}},
    }
    code, out = post(client, "/v1/gradients", {"model": model, "inputs": {"y": [0] * 1000}})
    assert code == 413, out
    assert out["limit"]["name"] == "max_request_bytes"
    assert out["limit"]["estimate"] > out["limit"]["value"] and out["hint"]


def test_dout_shape_mismatch_is_a_422(client):
    body = dict(FIXTURE["mytorch_linear_toy"]["request"], dout=[[1.0, 2.0]])
    code, out = post(client, "/v1/gradients", body)
    assert code == 422 and "dout has shape [1, 2]" in out["detail"]


# --- grading: tolerance profiles ------------------------------------------------------------------------


def toy_check(client, submission, **extra):
    body = {
        "model": {
            **TOY,
            "l2": {"reg": 0.1, "form": "sum_sq"},
            "init": {"scheme": "numpy_legacy", "seed": 0, "std": 0.5},
        },
        "inputs": {"X": [[1.0, 2.0], [3.0, -1.0], [0.5, 0.2], [-1.0, 0.4]], "y": [0, 1, 1, 0]},
        "submission": submission,
        **extra,
    }
    code, out = post(client, "/v1/check", body)
    assert code == 200, out
    return out


def reference_toy(client):
    body = {
        "model": {
            **TOY,
            "l2": {"reg": 0.1, "form": "sum_sq"},
            "init": {"scheme": "numpy_legacy", "seed": 0, "std": 0.5},
        },
        "inputs": {"X": [[1.0, 2.0], [3.0, -1.0], [0.5, 0.2], [-1.0, 0.4]], "y": [0, 1, 1, 0]},
        "dtype": "float64",
        "include": ["intermediates"],
    }
    return post(client, "/v1/gradients", body)[1]


@pytest.mark.parametrize(
    ("profile", "noise", "passed"),
    [
        ({"profile": "rel_error", "threshold": 1e-7}, 1e-9, True),
        ({"profile": "rel_error", "threshold": 1e-7}, 1e-5, False),
        ({"profile": "norm_ratio"}, 1e-9, True),
        ({"profile": "norm_ratio"}, 1e-4, False),
        ({"profile": "allclose", "rtol": 1e-3, "atol": 0}, 1e-5, True),
        ({"profile": "round_atol"}, 1e-6, True),
        ({"profile": "round_atol"}, 1e-2, False),
        ({"profile": "exact"}, 0.0, True),
        ({"profile": "exact"}, 1e-15, False),
    ],
)
def test_tolerance_profiles(client, profile, noise, passed):
    ref = reference_toy(client)
    answer = (np.array(ref["gradients"]["W2"]) * (1 + noise)).tolist()
    out = toy_check(client, {"gradients": {"W2": answer}}, tolerance=profile)
    check = out["checks"][0]
    assert check["passed"] is passed, check["message"]
    assert check["tolerance"]["profile"] == profile["profile"]
    assert (check["tolerance"]["value"] <= check["tolerance"]["threshold"]) is passed
    source = {
        "rel_error": "CS231n",
        "norm_ratio": "deeplearning.ai",
        "allclose": "allclose",
        "round_atol": "MyTorch",
        "exact": "exact",
    }[profile["profile"]]
    assert source in out["tolerance_rule"]


def test_norm_ratio_value_is_deeplearning_ais_difference(client):
    ref = np.array(reference_toy(client)["gradients"]["W1"])
    answer = ref + 1e-3
    out = toy_check(client, {"gradients": {"W1": answer.tolist()}}, tolerance={"profile": "norm_ratio"})
    expected = np.linalg.norm(answer - ref) / (np.linalg.norm(answer) + np.linalg.norm(ref))
    assert out["checks"][0]["tolerance"]["value"] == pytest.approx(expected, rel=1e-9)


def test_partial_credit_by_fraction_of_elements(client):
    ref = np.array(reference_toy(client)["gradients"]["W1"])
    answer = ref.copy()
    answer[0, 0] += 1.0  # one of six elements wrong
    out = toy_check(
        client,
        {"gradients": {"W1": answer.tolist()}},
        checks={"gradients.W1": {"points": 6, "tolerance": {"profile": "rel_error", "partial_credit": True}}},
    )
    check = out["checks"][0]
    assert not check["passed"] and check["points"] == pytest.approx(5.0)
    assert check["tolerance"]["fraction_within"] == pytest.approx(5 / 6)


@pytest.mark.parametrize("profile", ["rel_error", "norm_ratio", "allclose", "round_atol", "exact"])
def test_tolerance_profile_runs_no_torch_op_per_point(profile):
    """A check is charged 4 KiB whatever its number of points: a profile's comparison makes the same torch calls
    for 80 points as for 8 (it made ~15-20 per point: 257 checks x 80 points took 2.4 s, audit F9). Reading a
    tensor's shape or size (metadata, no op) is left out of the count."""
    from torch.overrides import TorchFunctionMode

    from service.engine import tolerance

    class Count(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.ops += getattr(func, "__name__", "") not in ("__get__", "numel", "is_contiguous")
            return func(*args, **(kwargs or {}))

    settings = {**tolerance.DEFAULTS[profile], "profile": profile, **({"rtol": 1e-5} if profile == "allclose" else {})}
    ops = []
    for n in (8, 80):
        expected = [torch.full((2, 3), i + 1.0, dtype=torch.float64) for i in range(n)]
        actual = [e * (1 + 1e-3 * (i % 2)) for i, e in enumerate(expected)]
        result = {"title": "W", "max_points": 1.0, "passed": False, "points": 0.0}
        with Count() as count:
            tolerance.apply(result, expected, actual, settings, lambda i: f" at point {i}")
        assert result["passed"] is False and result["worst_point"] == 1, result
        ops.append(count.ops)
    assert ops[0] == ops[1] < 30, ops


def _torch_judge(profile, expected, actual):
    """tolerance.judge and apply's errors as they were, point by point in torch ops (audit F9: ~15-20 ops a point)."""
    from service.engine.tolerance import Verdict, limit_of

    metrics, oks = [], []
    for e, a in zip(expected, actual, strict=True):
        kind, diff = profile["profile"], (a - e).abs()
        if kind in ("rel_error", "norm_ratio"):
            score = diff / torch.clamp(a.abs() + e.abs(), min=1e-8)
            ok = score <= profile["threshold"]
        elif kind == "allclose":
            score = diff / (profile["atol"] + profile["rtol"] * e.abs())
            ok = diff <= profile["atol"] + profile["rtol"] * e.abs()
        elif kind == "round_atol":  # in whole units of 10**-decimals
            scale = 10.0 ** profile["decimals"]
            units = torch.where(a == e, 0.0, (torch.round(a * scale) - torch.round(e * scale)).abs())
            score, allowed = units / scale, profile["atol"] * scale
            ok = units <= allowed + 1e-9 * max(1.0, allowed)
        else:
            score, ok = diff, a == e
        oks.append(ok | (torch.isnan(a) & torch.isnan(e)))
        if a.numel() == 0:
            metrics.append(0.0)
        elif kind == "norm_ratio":  # scaled by 2**-k, which brings the largest |value| into [0.5, 1), in two steps
            k = math.frexp(torch.maximum(a.abs().max(), e.abs().max()).item())[1]
            a_s, e_s = (t * 2.0 ** (-(k // 2)) * 2.0 ** (k // 2 - k) for t in (a, e))
            denominator = (torch.linalg.vector_norm(a_s) + torch.linalg.vector_norm(e_s)).item()
            metrics.append(torch.linalg.vector_norm(a_s - e_s).item() / denominator if denominator else 0.0)
            if not metrics[-1] <= profile["threshold"] and bool(oks[-1].all()):  # a failed point: its largest
                oks[-1] = oks[-1].clone().reshape(-1)  # error is outside tolerance
                oks[-1][diff.reshape(-1).argmax()] = False
        else:
            metrics.append(score.max().item())
    if profile["profile"] == "norm_ratio":
        point_passed = [m <= limit_of(profile) for m in metrics]
    else:
        point_passed = [bool(ok.all()) for ok in oks]
    failing = [i for i, p in enumerate(point_passed) if not p]
    worst = failing[0] if failing else max(range(len(metrics)), key=metrics.__getitem__)
    within, total = sum(int(ok.sum()) for ok in oks), sum(ok.numel() for ok in oks)
    verdict = Verdict(not failing, metrics[worst], within / total if total else 1.0, worst, total - within, total)
    pairs = [(x, y) for x, y in zip(actual, expected, strict=True) if x.numel()]
    abs_errors = [(x - y).abs().max().item() for x, y in pairs]
    rel = [((x - y).abs() / torch.clamp(y.abs() + x.abs(), min=1e-8)).max().item() for x, y in pairs]
    largest = lambda errors: max(errors, default=0.0) if all(map(math.isfinite, errors)) else None  # noqa: E731
    return verdict, largest(abs_errors), largest(rel)


def test_tolerance_profiles_in_numpy_match_the_per_point_torch_path():
    """Every profile compares all points at once in numpy (audit F9): the verdict, metric, worst point, counts and
    errors are the very floats the per-point torch path gave, for mixed shapes, empty and transposed tensors, NaN,
    infinities, -0.0, ties, overflow and values just inside and outside each rule."""
    from service.engine import tolerance

    profiles = [
        {"profile": "rel_error", "threshold": 1e-7},
        {"profile": "rel_error", "threshold": 0.0, "partial_credit": True},
        {"profile": "norm_ratio", "threshold": 2e-7},
        {"profile": "norm_ratio", "threshold": 1e-3},
        {"profile": "allclose", "rtol": 1e-5, "atol": 1e-8},
        {"profile": "allclose", "rtol": 0.0, "atol": 0.0, "partial_credit": True},
        {"profile": "round_atol", "decimals": 4, "atol": 1e-4},
        {"profile": "round_atol", "decimals": 0, "atol": 0.0},
        {"profile": "round_atol", "decimals": 15, "atol": 1e-4},
        {"profile": "exact"},
    ]
    special = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e308, -1e308, 5e-324, 0.00005, 0.5, 2.5, 1e-9]
    rng = np.random.RandomState(11)

    def sample(shape, kind):
        e = rng.randn(*shape) * 10.0 ** rng.randint(-12, 12)
        if kind in ("close", "exact"):
            a = e * (1 + rng.choice([0.0, 1e-12, 1e-8, 1e-6, 1e-3], size=shape))
        elif kind == "special":
            a, e = rng.choice(special, size=shape), rng.choice(special + [1.0], size=shape)
        else:
            a = rng.randn(*shape)
        return torch.from_numpy(np.asarray(e, dtype=np.float64)), torch.from_numpy(np.asarray(a, dtype=np.float64))

    shape_sets = [[(), (3,), (2, 3), (0,), (4, 1), (1,)]] + [
        [shape] * 4 for shape in [(2, 2), (), (5,), (0,), (40, 30)]
    ]
    cases = 0
    views = (None, "reference", "both")
    for shapes, kind, transposed in itertools.product(shape_sets, ("close", "special", "far", "exact"), views):
        points = [sample(shape, kind) for shape in shapes]
        if kind == "exact":  # every point exact: ties decide the worst point
            points = [(e, e.clone()) for e, _ in points]
        if transposed:  # a transposed reference (a network's dlai-layout intermediate is a view), and answer
            points = [
                (e.t(), a.t() if transposed == "both" else a.t().contiguous()) if e.dim() == 2 else (e, a)
                for e, a in points
            ]
        expected, actual = [e for e, _ in points], [a for _, a in points]
        for profile in profiles:
            for i in range(len(points)):  # each point alone too: a verdict shows only the worst point's metric
                alone = _torch_judge(profile, expected[i : i + 1], actual[i : i + 1])[0]
                assert repr(tolerance.judge(profile, expected[i : i + 1], actual[i : i + 1])) == repr(alone)
            verdict, abs_error, rel_error = _torch_judge(profile, expected, actual)
            assert repr(tolerance.judge(profile, expected, actual)) == repr(verdict), (shapes, kind, profile)
            result = {"title": "W", "max_points": 1.0, "passed": False, "points": 0.0}
            tolerance.apply(result, expected, actual, profile, lambda i: f" at point {i}")
            assert repr((result["abs_error"], result["rel_error"])) == repr((abs_error, rel_error)), (shapes, profile)
            assert repr(result["tolerance"]["value"]) == repr(verdict.metric)
            cases += 1
    assert cases == 6 * 4 * 3 * len(profiles)


# --- grading: diagnosis of classic mistakes --------------------------------------------------------------


def numpy_backprop(x, y, p, reg, bug=None):
    """CS231n's two-layer backward pass by hand, with one classic mistake planted when asked."""
    n = x.shape[0]
    z1 = x @ p["W1"] + p["b1"]
    a1 = np.maximum(0, z1)
    s = a1 @ p["W2"] + p["b2"]
    e = np.exp(s - s.max(1, keepdims=True))
    dscores = e / e.sum(1, keepdims=True)
    dscores[np.arange(n), y] -= 1
    if bug != "missing_1_over_n":
        dscores /= n
    l2 = {"l2_x2": 4 * reg, "l2_half": reg}.get(bug, 2 * reg)
    g = {"W2": a1.T @ dscores + l2 * p["W2"], "b2": dscores.sum(0)}
    da1 = dscores @ p["W2"].T
    dz1 = da1 if bug == "relu_mask" else da1 * (z1 > 0)
    g["W1"] = x.T @ dz1 + l2 * p["W1"]
    g["b1"] = dz1.sum(1) if bug == "bias_axis" else dz1.sum(0)
    if bug == "bias_reg":
        g["b1"] = g["b1"] + 2 * reg * p["b1"]
    if bug == "sign":
        g["W1"] = -g["W1"]
    if bug == "transposed":
        g["W1"] = g["W1"].T
    return g


BUGS = {
    "sign": ("W1", "sign is flipped"),
    "transposed": ("W1", "transposed"),
    "missing_1_over_n": ("W1", "1/N"),
    "l2_x2": ("W1", "twice too large"),
    "l2_half": ("W1", "half what it should be"),
    "bias_reg": ("b1", "biases are regularised"),
    "bias_axis": ("b1", "wrong axis"),
    "relu_mask": ("W1", "ReLU mask is missing"),
}


def planted_network():
    """(model, inputs, X, y, parameters) of the network the planted bugs are written for."""
    rng = np.random.RandomState(5)
    x, y = rng.randn(5, 3), np.array([0, 1, 2, 1, 0])
    p = {"W1": rng.randn(3, 4), "b1": rng.randn(4), "W2": rng.randn(4, 3), "b2": rng.randn(3)}
    model = {
        "kind": "network",
        "layout": "cs231n",
        "loss": {"type": "softmax_cross_entropy"},
        "l2": {"reg": 0.3, "form": "sum_sq"},
        "layers": [{"type": "linear", "out_features": 4, "activation": "relu"}, {"type": "linear", "out_features": 3}],
    }
    inputs = {"X": x.tolist(), "y": y.tolist(), **{k: v.tolist() for k, v in p.items()}}
    return model, inputs, x, y, p


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_each_planted_bug_is_named(client, bug):
    model, inputs, x, y, p = planted_network()
    right = numpy_backprop(x, y, p, 0.3)
    key, needle = BUGS[bug]
    wrong = numpy_backprop(x, y, p, 0.3, bug)[key]
    code, out = post(
        client,
        "/v1/check",
        {
            "model": model,
            "inputs": inputs,
            "tolerance": {"profile": "rel_error"},
            "submission": {"gradients": {key: wrong.tolist(), "W2": right["W2"].tolist()}},
        },
    )
    assert code == 200, out
    checks = {c["name"]: c for c in out["checks"]}
    assert checks["gradients.W2"]["passed"]  # the hand-written backprop is right where no bug was planted
    check = checks[f"gradients.{key}"]
    assert not check["passed"]
    assert needle in check["diagnosis"] and needle in check["message"]


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_each_planted_bug_rounded_to_6_decimals_is_named(client, bug):
    """The same mistakes typed to 6 decimals, graded at the default rtol/atol: named as when exact (audit L1)."""
    model, inputs, x, y, p = planted_network()
    key, needle = BUGS[bug]
    wrong = np.round(numpy_backprop(x, y, p, 0.3, bug)[key], 6)
    code, out = post(
        client, "/v1/check", {"model": model, "inputs": inputs, "submission": {"gradients": {key: wrong.tolist()}}}
    )
    assert code == 200, out
    check = out["checks"][0]
    assert not check["passed"] and needle in check["diagnosis"]


def test_first_wrong_layer_from_intermediates(client):
    ref = reference_toy(client)
    inter = {k: v["value"] for k, v in ref["intermediates"].items()}
    inter |= {f"d{k}": v["grad"] for k, v in ref["intermediates"].items()}
    inter["A1"] = (np.array(inter["A1"]) + 0.5).tolist()  # the ReLU output is wrong; Z1 is right
    inter["dZ2"] = (np.array(inter["dZ2"]) * 2).tolist()
    out = toy_check(
        client, {"intermediates": inter, "gradients": {"W1": (np.array(ref["gradients"]["W1"]) * 3).tolist()}}
    )
    assert out["first_wrong"]["intermediate"] == "A1" and out["first_wrong"]["layer"] == 1
    w1 = next(c for c in out["checks"] if c["name"] == "gradients.W1")
    assert "first goes wrong at A1 (layer 1)" in w1["message"]


def test_backward_layer_named_when_forward_is_right(client):
    ref = reference_toy(client)
    inter = {
        "Z1": ref["intermediates"]["Z1"]["value"],
        "dZ2": ref["intermediates"]["Z2"]["grad"],
        "dA1": (np.array(ref["intermediates"]["A1"]["grad"]) - 1).tolist(),
    }
    out = toy_check(client, {"intermediates": inter})
    assert out["first_wrong"] == {
        "intermediate": "dA1",
        "layer": 1,
        "message": "the backward pass first goes wrong at dA1 (layer 1); the intermediates before it are right",
    }


@pytest.mark.live
def test_layer_check_on_gradescope_live(live_server):
    """MyTorch's linear backward as a Gradescope test: the layer check with `dout` and round_atol."""
    fixture = FIXTURE["mytorch_linear_toy"]["request"]
    body = {
        "model": fixture["model"],
        "inputs": fixture["inputs"],
        "dout": fixture["dout"],
        "tolerance": {"profile": "round_atol"},
        "submission": {"gradients": {"W1": [[28, 30], [24, 30], [20, 30]], "b1": [[2, 6, 10]]}},
    }
    response = requests.post(live_server.url + "/v1/check?format=gradescope", json=body, timeout=30)
    assert response.status_code == 200, response.text
    tests = {t["name"]: t for t in response.json()["tests"]}
    assert tests["dL/dW1"]["status"] == "passed" and tests["dL/dW1"]["extra_data"]["id"] == "gradients.W1"
    assert "round" in tests["dL/dW1"]["output"]  # the profile's rule, not the default atol/rtol
    failed = tests["dL/db1"]
    assert failed["status"] == "failed" and "wrong shape" in failed["output"]


# --- docs/networks.md (its console examples run in tests/test_readme.py, like every doc's) ---------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "networks.md"


def test_doc_model_block_is_the_published_toy(client):
    """The model shown at the top of docs/networks.md loads and reproduces CS231n's 1.30378789133."""
    model = json.loads(re.search(r"```json\n(.*?)```", DOC.read_text(), re.S).group(1))
    body = {"model": model, "inputs": {"y": [0, 1, 2, 2, 1]}, "dtype": "float64", "include": []}
    code, out = post(client, "/v1/gradients", body)
    assert code == 200 and abs(out["loss"] - 1.30378789133) < 1e-10


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch.func.jvp's first use
@pytest.mark.parametrize(
    ("formula", "tangents"),
    [
        ("sin(x) * y", {"x": [1.0, 0.5], "y": 2.0}),
        ("x * y", {"y": 1.0}),
        ("x * 2", {"y": 1.0}),  # the output does not depend on y: J·v is zeros
        ("y + 0 * x", {"x": [1.0, -1.0]}),  # depends on x only through a zero factor
    ],
)
def test_expression_jvp_equals_torch_func(client, formula, tangents):
    """jacobian._double_backward_jvp (scalar backwards only, so torch never imports sympy) == torch.func.jvp."""
    inputs = {"x": [1.0, 2.0], "y": 3.0}
    r = client.post(
        "/v1/gradients",
        json={
            "model": {"kind": "expression", "formula": formula},
            "inputs": inputs,
            "tangents": tangents,
            "dtype": "float64",
        },
    )
    assert r.status_code == 200, r.json
    names = list(inputs)
    env = {"sin": torch.sin}

    def f(x, y):
        return eval(formula, env, {"x": x, "y": y})  # noqa: S307 - the test's own four formulas

    primals = tuple(torch.tensor(inputs[n], dtype=torch.float64) for n in names)
    vectors = tuple(
        torch.tensor(tangents.get(n, 0.0), dtype=torch.float64).expand_as(p)
        for n, p in zip(names, primals, strict=True)
    )
    _, want = torch.func.jvp(f, primals, vectors)
    assert torch.allclose(torch.tensor(r.json["jvp"], dtype=torch.float64), want, atol=1e-12)


def test_no_samples_with_the_over_2m_l2_term_is_a_422_not_a_500(client):
    """Found by an audit: lambda / (2m) with m = 0 raised ZeroDivisionError, a 500 on /v1/gradients and /v1/check."""
    model = {
        "kind": "network",
        "layout": "dlai",
        "layers": [{"type": "linear", "out_features": 1}],
        "loss": {"type": "bce"},
        "l2": {"reg": 0.1, "form": "over_2m"},
        "init": {"scheme": "zeros"},
    }
    body = {"model": model, "inputs": {"X": [[], []], "y": [[]]}}
    for path, extra in (("/v1/gradients", {"include": []}), ("/v1/check", {"submission": {"loss": 0.0}})):
        status, out = post(client, path, {**body, **extra})
        assert status == 422, out
        assert out["type"] == "/problems/shape-mismatch" and "m = 0" in out["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"model": {"kind": "expression", "formula": "2*y"}, "inputs": {"x": 1.0, "y": [1.0, 2.0]}, "wrt": ["x"]},
        {"model": {"kind": "expression", "formula": "3"}, "inputs": {"x": 1.0}},
    ],
    ids=["output-free-of-wrt", "constant"],
)
def test_jacobian_of_an_output_free_of_every_wrt_input_is_zero_blocks(client, body):
    """Found by an audit: torch.autograd.grad was called with no inputs, a 500."""
    status, out = post(client, "/v1/gradients", {**body, "include": ["jacobian"], "dtype": "float64"})
    assert status == 200, out
    assert out["independent"] == list(body.get("wrt", ["x"]))
    assert all(value in (0.0, [0.0, 0.0]) for value in out["jacobian"].values()), out["jacobian"]


def test_hinge_loss_over_no_samples_and_no_classes_is_answered(client):
    """F.one_hot refuses 0 classes: X of shape [0, 0] was a 500; now the empty mean, NaN with a warning."""
    model = {
        "kind": "network",
        "layout": "torch",
        "layers": [],
        "loss": {"type": "hinge"},
        "generate": {"X": {"scheme": "numpy_legacy", "seed": 1, "shape": [0, 0]}},
    }
    status, out = post(
        client, "/v1/gradients", {"model": model, "inputs": {"y": []}, "dtype": "float64", "include": []}
    )
    assert status == 200, out
    assert out["loss"] == "NaN" and out["gradients"]["X"] == []


def test_generated_inputs_follow_the_request_dtype(client):
    """Every input generated: the tensors were made in float64 whatever `dtype` said (priced at 4 bytes)."""
    model = {
        "kind": "network",
        "layout": "torch",
        "layers": [{"type": "linear", "out_features": 2}],
        "loss": {"type": "mse"},
        "init": {"scheme": "numpy_legacy", "seed": 0, "std": 0.1},
        "generate": {
            "X": {"scheme": "numpy_legacy", "seed": 1, "shape": [3, 2]},
            "y": {"scheme": "zeros", "shape": [3, 2]},
        },
    }
    answers = {}
    for dtype in ("float32", "float64"):
        status, out = post(client, "/v1/gradients", {"model": model, "inputs": {}, "dtype": dtype, "include": []})
        assert status == 200 and out["dtype"] == dtype, out
        answers[dtype] = out["loss"]
    assert answers["float32"] == pytest.approx(answers["float64"], rel=1e-6)
    assert repr(answers["float32"]) == str(np.float32(answers["float32"]))  # a float32's digits, not a double's
    assert repr(answers["float64"]) != str(np.float32(answers["float64"]))


@pytest.mark.parametrize(
    ("variance", "samples", "needs"), [("biased", 0, "at least 1 sample"), ("unbiased", 1, "at least 2")]
)
def test_batchnorm_without_enough_samples_names_its_own_variance(client, variance, samples, needs):
    model = {
        "kind": "network",
        "layout": "cs231n",
        "layers": [{"type": "linear", "out_features": 2}, {"type": "batchnorm", "variance": variance}],
        "loss": {"type": "none"},
        "init": {"scheme": "numpy_legacy", "seed": 0, "std": 0.1},
        "generate": {"X": {"scheme": "numpy_legacy", "seed": 1, "shape": [samples, 3]}},
    }
    status, out = post(client, "/v1/gradients", {"model": model, "inputs": {}, "include": []})
    assert status == 422 and needs in out["detail"], out


def test_a_network_without_layers_regularizes_nothing(client):
    """A final audit's fuzz: `layers: []` with `l2` was a 500 (torch.stack of no weights). The L2 term is 0."""
    model = {
        "kind": "network",
        "layout": "cs231n",
        "layers": [],
        "loss": {"type": "softmax_cross_entropy"},
        "l2": {"reg": 0.1, "form": "half_sum_sq"},
        "generate": {"X": {"scheme": "numpy_legacy", "seed": 1, "shape": [4, 2]}},
    }
    with_l2 = client.post("/v1/gradients", json={"model": model, "inputs": {"y": [0, 1, 1, 0]}})
    plain = {key: value for key, value in model.items() if key != "l2"}
    without = client.post("/v1/gradients", json={"model": plain, "inputs": {"y": [0, 1, 1, 0]}})
    assert with_l2.status_code == without.status_code == 200, with_l2.json
    assert with_l2.json["loss"] == without.json["loss"]


# --- the ninth audits: ties at a kink, advice for a non-scalar output, bce at 0 and 1, `output` ------------------


def svm_loss_naive(w: np.ndarray, x: np.ndarray, y: np.ndarray, margin: float, reduction: str):
    """CS231n's svm_loss_naive (assignment 1, linear_svm.py) written out: a class counts only where its margin is
    > 0. Returns (loss, dW, how many margins are exactly 0)."""
    dw, loss, ties = np.zeros_like(w), 0.0, 0
    for i in range(x.shape[0]):
        scores = x[i] @ w
        for j in range(w.shape[1]):
            if j == y[i]:
                continue
            m = scores[j] - scores[y[i]] + margin
            ties += m == 0
            if m > 0:
                loss += m
                dw[:, j] += x[i]
                dw[:, y[i]] -= x[i]
    if reduction == "mean":
        loss, dw = loss / x.shape[0], dw / x.shape[0]
    return loss, dw, ties


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("margin", [1.0, 0.0])
def test_hinge_margin_of_exactly_0_is_not_a_violation(client, margin, reduction):
    """Found by an audit: torch.clamp(min=0) passes the gradient at 0, so a tie counted as violated; CS231n's SVM
    (`margins > 0`) and torch's multi_margin_loss do not count it. Whole numbers make ties, as in a toy by hand."""
    rng = np.random.RandomState(4)
    x, w, y = rng.randint(-1, 3, (6, 3)).astype(float), rng.randint(-1, 2, (3, 4)).astype(float), rng.randint(0, 4, 6)
    loss, dw, ties = svm_loss_naive(w, x, y, margin, reduction)
    assert ties > 0  # the case this test is about
    model = {
        "kind": "network",
        "layout": "cs231n",
        "layers": [{"type": "linear", "out_features": 4, "bias": False}],
        "loss": {"type": "hinge", "margin": margin, "reduction": reduction},
    }
    body = {"model": model, "inputs": {"X": x.tolist(), "W1": w.tolist(), "y": y.tolist()}, "dtype": "float64"}
    status, out = post(client, "/v1/gradients", {**body, "include": []})
    assert status == 200, out
    assert out["loss"] == pytest.approx(loss, abs=1e-12)
    np.testing.assert_allclose(out["gradients"]["W1"], dw, atol=1e-12)
    xt = torch.tensor(x, requires_grad=True)
    per = F.multi_margin_loss(xt @ torch.tensor(w), torch.tensor(y), margin=margin, reduction="none") * 4
    (per.mean() if reduction == "mean" else per.sum()).backward()
    np.testing.assert_allclose(out["gradients"]["X"], xt.grad.numpy(), atol=1e-12)


def test_hinge_ties_from_the_audit(client):
    """The audit's two repros: a loss of 0 with a gradient, and the CS231n answer (zeros) graded wrong."""
    model = {"kind": "network", "layout": "cs231n", "layers": [], "loss": {"type": "hinge"}}
    body = {"model": model, "inputs": {"X": [[1, 0, 0], [2, 0, 3]], "y": [0, 2]}, "dtype": "float64", "include": []}
    status, out = post(client, "/v1/gradients", body)
    assert status == 200, out
    assert out["loss"] == 0.0 and out["gradients"]["X"] == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    model["layers"] = [{"type": "linear", "out_features": 3, "bias": False}]
    body = {
        "model": model,
        "inputs": {"X": [[1, 0], [0, 1]], "W1": [[1, 0, 0], [0, 1, 0]], "y": [0, 1]},
        "checks": {"loss": {"points": 1}, "gradients.W1": {"points": 1}},
        "submission": {"loss": 0.0, "gradients": {"W1": [[0, 0, 0], [0, 0, 0]]}},
    }
    status, out = post(client, "/v1/check", body)
    assert status == 200, out
    assert out["score"] == out["max_score"] == 2.0, out


def test_relu_at_exactly_0_passes_no_gradient(client):
    """The same kink in ReLU: CS231n's relu_backward is dout * (x > 0), so a Z of exactly 0 gets no gradient."""
    model = {"kind": "network", "layout": "torch", "layers": [{"type": "relu"}], "loss": {"type": "none"}}
    body = {"model": model, "inputs": {"X": [[-1.0, 0.0, 2.0]]}, "dout": [[5.0, 5.0, 5.0]], "dtype": "float64"}
    status, out = post(client, "/v1/gradients", {**body, "include": []})
    assert status == 200, out
    assert out["gradients"]["X"] == [[0.0, 0.0, 5.0]]


def test_a_network_output_without_dout_says_what_a_network_can_send(client):
    """Found by an audit: the 422 said "reduce it (sum(...) or mean(...))", formula advice a network cannot follow.
    It names `dout`, a loss, and (in /v1/gradients) the Jacobian; a formula's advice stays its own."""
    model = {
        "kind": "network",
        "layout": "torch",
        "layers": [{"type": "linear", "out_features": 2}],
        "loss": {"type": "none"},
        "init": {"scheme": "ones"},
    }
    body = {"model": model, "inputs": {"X": [[1, 2, 3]]}}
    for path, extra in (("/v1/gradients", {"include": []}), ("/v1/check", {"submission": {"gradients": {}}})):
        status, out = post(client, path, {**body, **extra})
        assert status == 422 and out["type"] == "/problems/non-scalar-output", out
        assert "shape [1, 2]" in out["detail"] and "`dout`" in out["detail"] and "`loss`" in out["detail"], out
        assert "jacobian" in out["detail"] and "sum(...)" not in out["detail"], out
    for extra in ({"dout": [[1.0, 1.0]]}, {"include": ["jacobian"]}):  # what the message advises, answered
        status, out = post(client, "/v1/gradients", {**body, **extra})
        assert status == 200, out
    formula = {"model": {"kind": "expression", "formula": "x**2"}, "inputs": {"x": [1, 2]}}
    status, out = post(client, "/v1/gradients", formula)
    assert status == 422 and "sum(...) or mean(...)" in out["detail"], out


def dlai_compute_cost(al: np.ndarray, y: np.ndarray) -> float:
    """deeplearning.ai's compute_cost, unclamped: -1/m * sum(Y log AL + (1 - Y) log(1 - AL))."""
    with np.errstate(all="ignore"):
        return float(-np.sum(y * np.log(al) + (1 - y) * np.log(1 - al)) / y.shape[1])


@pytest.mark.parametrize(
    ("dtype", "layers", "x", "advice"),
    [
        ("float32", [{"type": "linear", "out_features": 1, "activation": "sigmoid"}], [[20.0, -1.0]], "float64"),
        ("float64", [], [[1.0, 0.25]], "bce_with_logits"),  # a prediction of exactly y: NaN in any dtype
        ("float64", [], [[0.0, 0.25]], "bce_with_logits"),  # y = 1 with p = 0: infinite
    ],
    ids=["float32-sigmoid-rounds-to-1", "p-equals-y", "p-0-for-y-1"],
)
def test_bce_on_a_prediction_of_exactly_0_or_1_says_why_it_is_not_finite(client, dtype, layers, x, advice):
    """Found by an audit: a network's bce turned NaN or Infinity with only the generic "not finite" warnings, where
    the neuron explains it. The numbers stay deeplearning.ai's (unclamped); a warning says why, and what to do."""
    model = {"kind": "network", "layout": "dlai", "layers": layers, "loss": {"type": "bce"}}
    inputs = {"X": x, "y": [[1, 0]], **({"W1": [[1.0]], "b1": [[0.0]]} if layers else {})}
    status, out = post(client, "/v1/gradients", {"model": model, "inputs": inputs, "dtype": dtype, "include": []})
    assert status == 200, out
    assert out["loss"] in ("NaN", "Infinity"), out
    said = [w for w in out["warnings"] if "exactly 0 or 1" in w]
    assert len(said) == 1 and "bce_with_logits" in said[0] and advice in said[0], out["warnings"]
    assert "1 of 2" in said[0] and ('dtype "float64"' in said[0]) == (dtype == "float32"), said
    if not layers:  # /v1/check grades in float64: its 422 for the NaN reference says why too
        status, out = post(client, "/v1/check", {"model": model, "inputs": inputs, "submission": {"loss": 0.5}})
        assert status == 422 and out["type"] == "/problems/non-finite-reference", out
        assert "exactly 0 or 1" in out["detail"] and "bce_with_logits" in out["detail"], out
    if layers:  # in float64 the sigmoid stays below 1: deeplearning.ai's number, and nothing to explain
        status, out = post(client, "/v1/gradients", {"model": model, "inputs": inputs, "dtype": "float64"})
        assert out["loss"] == pytest.approx(dlai_compute_cost(1 / (1 + np.exp(-np.array(x))), np.array([[1, 0]])))
        assert out["loss"] == pytest.approx(0.156630844789688, abs=1e-15)
        assert not [w for w in out["warnings"] if "exactly 0 or 1" in w], out["warnings"]


def test_the_output_intermediate_is_the_output_with_dout_as_its_gradient(client):
    """Found by an audit: with `dout`, `intermediates` holds `output` when no layer's intermediate is the output (no
    layers: X itself), as a formula's and a per-sample neuron's do; its gradient is dout (it was null for X)."""
    model = {"kind": "network", "layout": "torch", "layers": [], "loss": {"type": "none"}}
    body = {"model": model, "inputs": {"X": [[1.5, -2.0]]}, "dout": [[-2.0, 3.0]], "dtype": "float64"}
    status, out = post(client, "/v1/gradients", {**body, "include": ["intermediates"]})
    assert status == 200, out
    assert out["intermediates"] == {"output": {"value": [[1.5, -2.0]], "grad": [[-2.0, 3.0]]}}
    assert out["gradients"]["X"] == [[-2.0, 3.0]]
    expression = {"model": {"kind": "expression", "formula": "x"}, "inputs": {"x": [1.0, 2.0]}, "dout": [1.0, 3.0]}
    status, out = post(client, "/v1/gradients", {**expression, "dtype": "float64", "include": ["intermediates"]})
    assert status == 200 and out["intermediates"] == {"output": {"value": [1.0, 2.0], "grad": [1.0, 3.0]}}, out
