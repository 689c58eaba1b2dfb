"""JSON types are the document's: a number sent as a string, a boolean as 0/1 or "true", an integer as 2.5 are 400s
naming the field (marshmallow's Float, Integer and Boolean took them: schemas/fields.py); the same values as JSON
numbers and booleans are 200s. schemathesis's negative_data_rejection checks the rest (tests/test_openapi.py)."""

from __future__ import annotations

from copy import deepcopy

import pytest
import requests

from conftest import TUTORIAL_NEURON

PROBLEM = "application/problem+json"
SIN = {
    "model": {"kind": "expression", "formula": "sin(x)"},
    "domain": {"x": [0, 1]},
    "submission": {"gradient_formulas": {"x": "cos(x)"}},
}
NETWORK = {
    "kind": "network",
    "layout": "cs231n",
    "layers": [{"type": "linear", "out_features": 2, "bias": True}],
    "loss": {"type": "softmax_cross_entropy"},
    "l2": {"reg": 0.1, "form": "half_sum_sq", "include_biases": False},
    "init": {"scheme": "numpy_legacy", "seed": 0, "std": 0.01},
}
NETWORK_REQUEST = {"model": NETWORK, "inputs": {"X": [[1.0, 2.0]], "y": [1]}, "include": []}
SIN_PROBLEM = {key: value for key, value in SIN.items() if key != "submission"}
GRADE = {"problem": {**SIN_PROBLEM, "checks": {"gradient_formulas.x": {}}}, "answers": {"x": "cos(x)"}}


def with_value(body: dict, path: tuple, value) -> dict:
    """A copy of `body` with the item at `path` (keys and list indexes; missing objects made) set to `value`."""
    copy = deepcopy(body)
    node = copy
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
    node[path[-1]] = value
    return copy


# (endpoint, a valid body, where the typed field is, its value as a JSON type, the same value mistyped, the path of
#  its message in `errors`, the message)
CASES = [
    ("/v1/check", SIN, ("rtol",), 1e-4, "1e-4", ("rtol",), "Not a valid number."),
    ("/v1/check", SIN, ("seed",), 3, "3", ("seed",), "Not a valid integer."),
    ("/v1/check", SIN, ("seed",), 3, 2.5, ("seed",), "Not a valid integer."),  # was truncated to 2
    ("/v1/check", SIN, ("seed",), 3.0, "Infinity", ("seed",), "Not a valid integer."),  # 3.0: JSON Schema's integer
    ("/v1/check", SIN, ("n_points",), 4, True, ("n_points",), "Not a valid integer."),
    ("/v1/check", SIN, ("domain", "x", 0), 0, "0", ("domain", "x", "value", "0"), "Not a valid number."),
    (
        "/v1/check",
        SIN,
        ("checks",),
        {"gradient_formulas.x": {"points": 2}},
        {"gradient_formulas.x": {"points": "2"}},
        ("checks", "gradient_formulas.x", "value", "points"),
        "Not a valid number.",
    ),
    (
        "/v1/check",
        SIN,
        ("tolerance",),
        {"profile": "allclose", "partial_credit": True},
        {"profile": "allclose", "partial_credit": 1},
        ("tolerance", "partial_credit"),
        "Not a valid boolean.",
    ),
    ("/v1/gradients", TUTORIAL_NEURON, ("model", "epsilon"), 0.01, "0.01", ("model", "epsilon"), "Not a valid number."),
    (
        "/v1/gradients",
        NETWORK_REQUEST,
        ("model", "layers", 0, "bias"),
        False,
        0,
        ("model", "layers", "0", "bias"),
        "Not a valid boolean.",
    ),
    (
        "/v1/gradients",
        NETWORK_REQUEST,
        ("model", "l2", "include_biases"),
        True,
        "true",
        ("model", "l2", "include_biases"),
        "Not a valid boolean.",
    ),
    ("/v1/grade", GRADE, ("variant_seed",), 7, "7", ("variant_seed",), "Not a valid integer."),
    (
        "/v1/grade",
        GRADE,
        ("problem", "seed_from_variant"),
        False,
        "no",
        ("problem", "problems", "0", "seed_from_variant"),
        "Not a valid boolean.",
    ),
]


def message_at(errors: dict, path: tuple):
    for key in path:
        errors = errors[key]
    return errors


@pytest.mark.parametrize(("endpoint", "body", "where", "typed", "mistyped", "error_path", "message"), CASES)
def test_json_types_only(client, endpoint, body, where, typed, mistyped, error_path, message):
    good = client.post(endpoint, json=with_value(body, where, typed))
    assert good.status_code == 200, good.json
    bad = client.post(endpoint, json=with_value(body, where, mistyped))
    assert bad.status_code == 400 and bad.mimetype == PROBLEM, bad.json
    expected_type = "invalid-problem" if where[0] == "problem" else "invalid-request"
    assert bad.json["type"] == f"/problems/{expected_type}" and bad.json["status"] == 400
    assert message_at(bad.json["errors"], error_path) == [message], bad.json["errors"]


@pytest.mark.parametrize("value", [1, 0, "true", "yes", "on", "1", None, 1.0])
def test_a_boolean_is_true_or_false(client, value):
    body = with_value(SIN, ("tolerance",), {"profile": "allclose", "partial_credit": value})
    answer = client.post("/v1/check", json=body)
    assert answer.status_code == 400, answer.json
    assert answer.json["errors"]["tolerance"]["partial_credit"] == [
        "Field may not be null." if value is None else "Not a valid boolean."
    ]


@pytest.mark.parametrize("value", ["1e-4", "0.5", "NaN", "Infinity", True, [0.1], {"value": 0.1}])
def test_a_tolerance_is_a_json_number(client, value):
    answer = client.post("/v1/check", json={**SIN, "rtol": value})
    assert answer.status_code == 400 and answer.json["errors"] == {"rtol": ["Not a valid number."]}, answer.json


@pytest.mark.live
def test_live_numbers_as_strings_are_refused_and_numbers_accepted(live_server):
    """The same through gunicorn: the wire's JSON types decide, not what a string could be read as."""
    url = live_server.url + "/v1/check"
    refused = requests.post(url, json={**SIN, "rtol": "1e-4", "seed": "3"}, timeout=30)
    assert refused.status_code == 400 and refused.headers["Content-Type"] == PROBLEM
    assert refused.json()["errors"] == {"rtol": ["Not a valid number."], "seed": ["Not a valid integer."]}
    accepted = requests.post(url, json={**SIN, "rtol": 1e-4, "seed": 3}, timeout=30)
    assert accepted.status_code == 200 and accepted.json()["rtol"] == 1e-4, accepted.text
