"""Hardening: schemathesis against a live gunicorn, autograd = finite differences on generated formulas,
the wall-time limit cutting off a long request, and the fast response path agreeing with marshmallow."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import TUTORIAL_NEURON, GunicornServer
from schemas import GradientRequestSchema
from service.engine import compute
from service.engine.catalog import CATALOG
from service.engine.errors import EngineError
from service.engine.limits import Limits
from service.jsonio import dumps_bytes
from service.views.gradients import RESPONSE_KEYS, gradient_response

LIMITS = Limits()
request_schema = GradientRequestSchema()
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def run(body: dict) -> dict:
    """One loaded request through the engine, as the view runs it."""
    return compute(request_schema.load(body), LIMITS)


# --- schemathesis v4 CLI against a live gunicorn ---------------------------------------------------


@pytest.mark.live
@pytest.mark.slow
def test_schemathesis_cli_finds_nothing(live_server, tmp_path):
    """Every check schemathesis has, over every documented operation, bounded in examples and time.

    positive_data_acceptance is excluded. It demands a 2xx for every body the OpenAPI document accepts, and the
    document cannot say everything the service rightly enforces: a ragged tensor, a formula's syntax, unique
    problem keys are 400s (the rules across fields it can say, such as a neuron's x, y, w, b or `points` apart
    from `inputs`, it does: tests/test_openapi.py). Other schema-valid bodies are rightly 422
    (x and w of different lengths, a formula naming a missing input, a non-scalar output in grad mode) or 413
    (limits on values: AST depth, numeric/hessian elements). All of those are documented problem+json answers,
    which status_code_conformance, response_schema_conformance, not_a_server_error etc. still verify.
    negative_data_rejection runs: every body the document refuses (a number as a string, 0/1 for a boolean, at
    any depth) must be a 4xx.
    """
    cmd = [
        str(SCHEMATHESIS),
        "run",
        f"{live_server.url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        "25",
        "--max-time",
        "35",
        "--seed",
        "5",
        "--request-timeout",
        "20",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    selected = re.search(r"Selected: (\d+)/(\d+)", proc.stdout)
    assert selected and selected[1] == selected[2] and f"Tested: {selected[1]}" in proc.stdout, (
        tail
    )  # every operation ran
    assert "Failures:" not in proc.stdout, tail


# --- autograd = finite differences on formulas generated from the grammar ----------------------------

UNARY = (
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "sinh",
    "cosh",
    "tanh",
    "exp",
    "expm1",
    "log",
    "log1p",
    "log2",
    "log10",
    "sqrt",
    "abs",
    "sigmoid",
    "relu",
    "softplus",
    "square",
)
BINARY_FUNCTIONS = ("maximum", "minimum")
OPERATORS = ("+", "-", "*", "/", "**")


def formulas(depth: int) -> st.SearchStrategy[str]:
    """Numbers, names, constants, + - * / **, unary minus, whitelisted functions; at most `depth` levels."""
    leaf = st.one_of(
        st.sampled_from(("x", "y", "x", "y", "pi", "e")),
        st.integers(0, 9).map(str),
        st.floats(0.1, 5.0).map(lambda v: f"{v:.3g}"),
    )
    if depth == 0:
        return leaf
    sub = formulas(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(sub, st.sampled_from(OPERATORS), sub).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        sub.map(lambda s: f"(-{s})"),
        st.tuples(st.sampled_from(UNARY), sub).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(BINARY_FUNCTIONS), sub, sub).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
    )


points = st.floats(-3.0, 3.0, allow_nan=False).map(lambda v: round(v, 3))


def value_at(formula: str, inputs: dict) -> float:
    body = run(
        {
            "model": {"kind": "expression", "formula": formula},
            "inputs": inputs,
            "mode": "inference",
            "dtype": "float64",
            "include": [],
        }
    )
    return float(body["loss"]) if not isinstance(body["loss"], str) else math.nan


def smooth_derivative(formula: str, inputs: dict, name: str) -> float | None:
    """d/d(name) by central differences when the function looks smooth there, else None.

    Smooth means: finite around the point, the left and right one-sided slopes agree (no kink such as
    abs or relu at 0, maximum at a tie), and two step sizes agree (no cancellation noise, no pole nearby).
    """
    x = inputs[name]
    estimates = []
    for h in (1e-4 * max(1.0, abs(x)), 1e-5 * max(1.0, abs(x))):
        f0, up, down = (value_at(formula, {**inputs, name: x + d}) for d in (0.0, h, -h))
        if not all(map(math.isfinite, (f0, up, down))):
            return None
        right, left = (up - f0) / h, (f0 - down) / h
        if abs(right - left) > 1e-3 * max(1.0, abs(right), abs(left)):
            return None
        estimates.append((up - down) / (2 * h))
    if abs(estimates[0] - estimates[1]) > 1e-4 * max(1.0, abs(estimates[0])):
        return None
    return estimates[1]


def close(a: float, b: float, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    return abs(a - b) <= atol + rtol * max(abs(a), abs(b))


@given(formula=formulas(3), x=points, y=points)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_generated_formula_autograd_equals_finite_differences(formula, x, y):
    # At a tie inside a kink (maximum(x, minimum(x, y)) at x = y = 0) the composite can be smooth while autograd
    # returns a subgradient (0.75 where the slope is 1): with 3-decimal points, ties are x == y or a zero.
    assume(x != y and 0.0 not in (x, y))
    inputs = {"x": x, "y": y}
    try:
        body = run(
            {
                "model": {"kind": "expression", "formula": formula},
                "inputs": inputs,
                "dtype": "float64",
                "include": ["numeric"],
            }
        )
    except EngineError:  # e.g. a limit; the grammar stays well inside them, but a 4xx is not this test's subject
        assume(False)
    assume(not body["warnings"])  # no non-finite value anywhere
    for name in ("x", "y"):
        autograd = float(body["gradients"][name])
        reference = smooth_derivative(formula, inputs, name)
        if reference is None:
            continue
        assert close(autograd, reference, rtol=1e-3, atol=1e-5), (formula, inputs, name, autograd, reference)
        # the service's own numeric extra (step 6e-6) agrees where the function is smooth
        assert close(float(body["numeric"]["gradients"][name]), reference, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CATALOG))
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_catalog_autograd_equals_hand_derived_and_finite_differences(name, data):
    entry = CATALOG[name]
    inputs = {}
    for var, example in entry.example.items():
        shape_len = len(example) if isinstance(example, list) else None
        value = st.floats(0.2, 2.5).map(lambda v: round(v, 3))
        inputs[var] = data.draw(
            st.lists(value, min_size=shape_len, max_size=shape_len) if shape_len else value, label=var
        )
    if name == "quadratic_form":  # keep the example's shapes (a matrix and a vector)
        inputs = entry.example
    body = run(
        {
            "model": {"kind": "expression", "name": name},
            "inputs": inputs,
            "dtype": "float64",
            "include": ["manual", "numeric"],
        }
    )
    assume(not body["warnings"])
    assert float(body["manual"]["max_abs_diff"]) <= 1e-9 * max(1.0, _largest(body["gradients"]))
    assert float(body["numeric"]["max_rel_error"]) <= 1e-5 or float(body["numeric"]["max_abs_error"]) <= 1e-7


def _largest(gradients: dict) -> float:
    import numpy as np  # noqa: PLC0415

    return max(float(np.max(np.abs(np.asarray(g, dtype=float)))) if np.size(g) else 0.0 for g in gradients.values())


# --- the fast response path (no marshmallow dump) is byte-for-byte marshmallow's dump -------------------

FAST_PATH_BODIES = [
    TUTORIAL_NEURON,
    {**TUTORIAL_NEURON, "include": ["graph", "dot", "intermediates", "manual", "numeric", "hessian"]},
    {
        "model": {"kind": "neuron", "reduction": "none"},
        "inputs": {"x": [[1, 2], [3, 4]], "y": [0, 1], "w": [0.5, -0.5], "b": 0},
        "include": ["graph", "intermediates", "manual", "numeric"],
    },
    {
        "model": {"kind": "neuron", "loss": "bce_with_logits"},
        "inputs": {"x": [1, 2, 3], "y": [0, 1, 1], "w": 0.3, "b": 0.1},
    },
    {"model": {"kind": "neuron"}, "inputs": {"x": 20, "y": 0, "w": 1, "b": 0}, "include": ["graph", "intermediates"]},
    {
        "model": {"kind": "expression", "formula": "sum(x * x) + log(y)"},
        "inputs": {"x": [1, "NaN"], "y": -1},
        "include": ["graph", "dot"],
    },
    {
        "model": {"kind": "expression", "name": "sin_square"},
        "inputs": {"x": 3},
        "include": ["manual", "hessian", "graph"],
    },
    {
        "model": {"kind": "expression", "formula": "x**2"},
        "inputs": {"x": [1, 2]},
        "mode": "inference",
        "include": ["intermediates", "numeric"],
    },
    {"model": {"kind": "expression", "formula": "9**9**9**9"}, "inputs": {}, "dtype": "float64"},
]


@pytest.mark.parametrize("body", FAST_PATH_BODIES, ids=range(len(FAST_PATH_BODIES)))
def test_fast_response_path_is_marshmallows_dump(client, body):
    response = client.post("/v1/gradients", json=body)
    assert response.status_code == 200, response.json
    assert response.data == dumps_bytes(gradient_response.dump(run(body)))
    assert list(response.json) == list(RESPONSE_KEYS)


# --- the wall-time limit on a live gunicorn ---------------------------------------------------------


def _workers(server: GunicornServer) -> set[int]:
    path = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
    return {int(pid) for pid in path.read_text().split()}


@pytest.mark.live
@pytest.mark.slow
def test_long_request_is_cut_off_and_the_worker_recovers(tmp_path):
    # a request the cost model lets through (a raised budget) that runs past the wall time
    server = GunicornServer(
        env={"MAX_WALL_SECONDS": "0.2", "MAX_NUMERIC_ELEMENTS": "100000", "MAX_REQUEST_BYTES": str(2**40)},
        log_path=tmp_path / "gunicorn.log",
    ).start()
    try:
        deadline = time.monotonic() + 30
        while len(_workers(server)) < 2 and time.monotonic() < deadline:  # /readyz answered: one worker is up
            time.sleep(0.05)
        workers = _workers(server)
        assert len(workers) == 2
        long_job = {
            "model": {"kind": "expression", "formula": "sum(sin(x)**2 + exp(-x))"},
            "inputs": {"x": [i / 1000 for i in range(20_000)]},
            "include": ["numeric"],
        }
        start = time.monotonic()
        r = requests.post(
            server.url + "/v1/gradients",
            data=json.dumps(long_job),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        elapsed = time.monotonic() - start
        assert r.status_code == 503, r.text[:500]
        assert r.headers["Content-Type"] == "application/problem+json"
        assert r.headers.get("Retry-After")
        problem = r.json()
        assert problem["type"] == "/problems/deadline-exceeded" and problem["status"] == 503
        assert elapsed < 10  # cut off by the app's limit, not by gunicorn's worker timeout (60 s)
        for _ in range(4):  # both workers answer normally afterwards
            ok = requests.post(
                server.url + "/v1/gradients",
                data=json.dumps(TUTORIAL_NEURON),
                headers={"Content-Type": "application/json"},
                timeout=10,
            )
            assert ok.status_code == 200 and round(ok.json()["loss"], 4) == 6.7012
        assert _workers(server) == workers  # no worker was killed or restarted
    finally:
        server.stop()
    assert "WORKER TIMEOUT" not in (tmp_path / "gunicorn.log").read_text()


# --- large inputs go through numpy (faster), with the same values as torch.tensor ---------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_conversion_of_large_inputs_equals_torch_tensor(dtype):
    import random  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from service.engine.compute import DTYPES, NUMPY_FROM, _tensor  # noqa: PLC0415

    rng = random.Random(7)
    specials = [
        0,
        -0.0,
        1,
        2**24 + 1,
        2**53 + 1,
        2**63,
        2**64 - 1,
        -(2**63),
        1e-45,
        3.4028235e38,
        3.5e38,
        1e308,
        float("nan"),
        float("inf"),
        float("-inf"),
        0.1,
        1 / 3,
    ]
    values = [
        rng.choice((rng.uniform(-1e6, 1e6), rng.randrange(-(10**6), 10**6), rng.choice(specials)))
        for _ in range(NUMPY_FROM * 2)
    ]
    fast = _tensor(values, (2, NUMPY_FROM), DTYPES[dtype])
    slow = torch.tensor(values, dtype=DTYPES[dtype]).reshape(2, NUMPY_FROM)
    assert fast.dtype == slow.dtype and fast.shape == slow.shape
    assert torch.equal(fast.nan_to_num(), slow.nan_to_num()) and torch.equal(fast.isnan(), slow.isnan())
