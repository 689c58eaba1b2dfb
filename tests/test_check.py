"""POST /v1/check: verdicts against float64 autograd, tolerances, feedback, and the Gradescope/PrairieLearn formats."""

from __future__ import annotations

import itertools
import math

import pytest
import requests
from marshmallow import ValidationError
from platform_specs import validate_gradescope, validate_prairielearn

from conftest import python_steps
from schemas.grading import NOT_AN_ANSWER, Answer
from service.engine.limits import Limits
from service.engine.values import NON_FINITE
from service.views import check_loading

PROBLEM = "application/problem+json"
NEURON = {"model": {"kind": "neuron", "loss": "bce"}, "inputs": {"x": 6.7, "y": 0.0, "w": 1.0, "b": 0.0}}
SIN = {"model": {"kind": "expression", "name": "sin_square"}}
LIMITS = Limits()
MEAN = {"model": {"kind": "expression", "formula": "mean(x**2)"}, "inputs": {"x": [1.0, 2.0, 3.0]}}


def check(client, body, fmt=None):
    response = client.post("/v1/check" + (f"?format={fmt}" if fmt else ""), json=body)
    assert response.status_code == 200, response.json
    return response.json


def by_name(result):
    return {c["name"]: c for c in result["checks"]}


# --- right, wrong, partial, missing --------------------------------------------------------------------


def test_tutorial_answers_rounded_to_4_decimals_pass(client):
    body = {
        **NEURON,
        "submission": {
            "loss": 6.7012,
            "gradients": {"w": 6.6918, "b": 0.9988},
            "intermediates": {"z": 6.7, "y_pred": 0.9988},
        },
    }
    result = check(client, body)
    assert result["passed"] is True and result["score"] == result["max_score"] == 5
    assert result["rtol"] == 1e-4 and result["atol"] == 1e-6  # documented defaults, echoed
    w = by_name(result)["gradients.w"]
    assert w["expected"] == pytest.approx(6.691763, abs=1e-6) and w["actual"] == 6.6918
    assert w["abs_error"] == pytest.approx(abs(6.6918 - w["expected"]))
    assert w["rel_error"] == pytest.approx(w["abs_error"] / w["expected"])
    assert result["points"] == [{"x": 6.7, "y": 0.0, "w": 1.0, "b": 0.0}]


def test_partially_right_neuron_names_the_partial_and_the_chain_rule(client):
    result = check(client, {**NEURON, "submission": {"gradients": {"w": 6.5, "b": 0.9988}}})
    assert result["score"] == 1 and result["max_score"] == 2 and result["passed"] is False
    w = by_name(result)["gradients.w"]
    assert w["passed"] is False and w["points"] == 0
    assert "dL/dw is off" in w["message"] and "you gave 6.5" in w["message"] and "6.69176" in w["message"]
    assert "dL/dy_pred" in w["message"] and "dy_pred/dz" in w["message"] and "dz/dw" in w["message"]
    chain = w["chain_rule"]
    assert set(chain) == {"dL/dy_pred", "dy_pred/dz", "dz/dw"}
    assert chain["dz/dw"] == 6.7
    assert chain["dL/dy_pred"] * chain["dy_pred/dz"] * chain["dz/dw"] == pytest.approx(w["expected"])
    assert by_name(result)["gradients.b"]["passed"] is True


def test_worst_point_is_the_point_the_message_describes(client):
    """An audit read "index of the point with the largest error": a failed check's worst_point is its first failing
    point (the message and, with a profile, tolerance.value are about it), while abs_error and rel_error are the
    largest over every point (documented so in the schema, grading.md and networks.md)."""
    body = {
        "model": {"kind": "expression", "formula": "x**2"},
        "points": [{"x": 1.0}, {"x": 3.0}],
        "submission": {"gradients": {"x": [2.1, 100.0]}},
    }
    classic = by_name(check(client, body))["gradients.x"]
    assert classic["worst_point"] == 0 and "is off at point 0 (x=1)" in classic["message"]
    assert classic["abs_error"] == pytest.approx(94.0)  # point 1's
    profiled = by_name(check(client, {**body, "tolerance": {"profile": "rel_error"}}))["gradients.x"]
    assert profiled["worst_point"] == 0
    assert profiled["tolerance"]["value"] == pytest.approx(0.1 / 4.1)  # point 0's, below point 1's
    assert profiled["rel_error"] == pytest.approx(94.0 / 106.0)
    passed = by_name(check(client, {**body, "submission": {"gradients": {"x": [2.0, 6.0001]}}}))["gradients.x"]
    assert passed["passed"] and passed["worst_point"] == 1  # a passed check's: the largest error


def test_wrong_shape_and_missing_answers_are_failed_checks(client):
    body = {
        **MEAN,
        "submission": {"gradients": {"x": [0.6667, 1.3333]}},
        "checks": {"gradients.x": {"points": 2}, "loss": {"points": 1}},
    }
    result = check(client, body)
    checks = by_name(result)
    assert result["score"] == 0 and result["max_score"] == 3
    assert "expected shape [3], got [2]" in checks["gradients.x"]["message"]
    assert checks["loss"]["actual"] is None and "no answer given" in checks["loss"]["message"]
    assert checks["loss"]["expected"] == pytest.approx(14 / 3)


def test_ragged_answer_and_unknown_names_fail_with_messages(client):
    body = {**MEAN, "submission": {"gradients": {"x": [[1], 2, 3], "q": 1.0}, "intermediates": {"nope": 1.0}}}
    checks = by_name(check(client, body))
    assert "rectangular" in checks["gradients.x"]["message"]
    assert "no gradient named 'q'" in checks["gradients.q"]["message"]
    assert "no intermediate named 'nope'" in checks["intermediates.nope"]["message"]
    assert checks["intermediates.nope"]["message"].endswith("; known: x ** 2, mean(x ** 2)")  # all of them, if few
    assert not any(c["passed"] for c in checks.values())


# --- misnamed checks: the list of known names is bounded, and so is the number of checks (audit finding 4) ------


FORTY_TERMS = {
    "model": {"kind": "expression", "formula": "sum(" + "+".join(f"sin(x*{k}.123456789)" for k in range(40)) + ")"},
    "inputs": {"x": [1.0, 2.0]},
}


def test_a_misnamed_check_names_at_most_twenty_known_names(client):
    """A 40-term sum has ~120 intermediates, ~22 KB of names: each misnamed check used to repeat them all."""
    body = {**FORTY_TERMS, "submission": {"loss": 1.0}, "checks": {f"intermediates.q{i}": {} for i in range(400)}}
    response = client.post("/v1/check", json=body)
    assert response.status_code == 200
    checks = response.json["checks"]
    assert len(checks) == 400 and not any(c["passed"] for c in checks)
    message = checks[0]["message"]
    assert message.startswith("intermediates.q0: there is no intermediate named 'q0' to grade; known: x * 0.123456789")
    assert message.endswith(" more") and len(message) < 1200
    assert len(response.data) < 1_000_000  # was 8.9 MB: 22 KB per check


def test_checks_over_the_cap_are_refused_before_they_load(client):
    body = {**FORTY_TERMS, "submission": {"loss": 1.0}, "checks": {f"intermediates.q{i}": {} for i in range(15000)}}
    response = client.post("/v1/check", json=body)
    assert response.status_code == 400 and response.json["errors"] == {"checks": ["Longer than maximum length 400."]}
    jobs = [{"check": body}, {"check": {**body, "checks": {"loss": {}}}}]
    first, second = client.post("/v1/batch", json={"jobs": jobs}).json["results"]
    assert first["error"]["status"] == 400 and first["error"]["errors"]["check"]["checks"]
    assert second["checks"][0]["name"] == "loss"


def test_vector_gradient_says_which_element_is_off(client):
    result = check(client, {**MEAN, "submission": {"gradients": {"x": [0.6667, 1.5, 2.0]}}})
    message = result["checks"][0]["message"]
    assert "x[1] is off" in message and "1 of 3 elements" in message


def test_checks_config_sets_points_and_ignores_extra_answers(client):
    body = {
        **NEURON,
        "submission": {"gradients": {"w": 6.6918, "b": 0.9988}, "loss": 1.0},
        "checks": {"gradients.w": {"points": 3, "visibility": "hidden", "title": "w"}},
    }
    result = check(client, body)
    assert [c["name"] for c in result["checks"]] == ["gradients.w"]
    assert result["score"] == 3 and result["checks"][0]["visibility"] == "hidden"
    assert any("loss" in w and "not graded" in w for w in result["warnings"])


# --- formulas at several points ------------------------------------------------------------------------


def test_formula_over_a_seeded_domain_is_deterministic(client):
    body = {
        **SIN,
        "domain": {"x": [-3, 3]},
        "seed": 7,
        "n_points": 6,
        "submission": {"gradient_formulas": {"x": "cos(x**2)*2*x"}},
    }
    first, second = check(client, body), check(client, body)
    assert first == second and first["passed"] and first["n_points"] == 6
    xs = [p["x"] for p in first["points"]]
    assert len(set(xs)) == 6 and all(-3 <= x <= 3 for x in xs)
    other = check(client, {**body, "seed": 8})
    assert [p["x"] for p in other["points"]] != xs
    c = first["checks"][0]
    assert c["expected"] == pytest.approx([math.cos(x * x) * 2 * x for x in xs], rel=1e-12)


def test_wrong_formula_reports_the_point(client):
    body = {**SIN, "points": [{"x": 3.0}, {"x": 0.0}], "submission": {"gradient_formulas": {"x": "cos(x**2)"}}}
    c = check(client, body)["checks"][0]
    assert c["passed"] is False and c["worst_point"] == 0
    assert "at point 0 (x=3)" in c["message"] and "autograd gives -5.46678" in c["message"]
    assert "wrong at 2 of 2 points" in c["message"]


@pytest.mark.parametrize(
    ("formula", "words"),
    [
        ("cos(x**2)*2*", "invalid syntax"),
        ("__import__('os')", "unknown function"),
        ("cos(z)", "unknown variable"),
        ("x" * 2000, "too large"),
    ],
)
def test_bad_formulas_are_failed_checks_not_errors(client, formula, words):
    c = check(client, {**SIN, "inputs": {"x": 3.0}, "submission": {"gradient_formulas": {"x": formula}}})["checks"][0]
    assert c["passed"] is False and words in c["message"]
    assert c["formula"] == (formula if len(formula) <= 200 else formula[:200] + "… (2000 characters)")


def test_constant_formula_broadcasts_to_the_gradient_shape(client):
    body = {
        "model": {"kind": "expression", "formula": "sum(2*x)"},
        "inputs": {"x": [1.0, 5.0]},
        "submission": {"gradient_formulas": {"x": "2"}},
    }
    assert check(client, body)["passed"] is True


def test_neuron_formulas_on_a_domain_with_fixed_label(client):
    body = {
        "model": {"kind": "neuron"},
        "inputs": {"x": 0.0, "y": 1.0, "w": 0.0, "b": 0.0},
        "domain": {"x": [-4, 4], "w": [-2, 2], "b": [-1, 1]},
        "n_points": 5,
        "submission": {"gradient_formulas": {"w": "(sigmoid(w*x+b) - y)*x", "b": "sigmoid(w*x+b)"}},
    }
    result = check(client, body)
    checks = by_name(result)
    assert checks["gradient_formulas.w"]["passed"] is True
    assert checks["gradient_formulas.b"]["passed"] is False and "dz/db" in checks["gradient_formulas.b"]["message"]
    assert all(p["y"] == 1.0 for p in result["points"])


def test_numbers_at_several_points_are_lists_per_point(client):
    body = {**SIN, "points": [{"x": 3.0}, {"x": 1.0}], "submission": {"gradients": {"x": [-5.4668, 1.0806]}}}
    assert check(client, body)["passed"] is True
    body["submission"] = {"gradients": {"x": -5.4668}}
    assert "one value per point" in check(client, body)["checks"][0]["message"]


def test_an_intermediate_is_found_by_any_spelling_that_parses_to_it(live_server):
    """sin(x**2)'s intermediates are named "x ** 2" and "sin(x ** 2)"; "x**2" and "(x ** 2)" are the same
    expressions and are graded against them (they were "no intermediate named 'x**2'"); an unparsable key is not."""
    body = {
        "model": {"kind": "expression", "formula": "sin(x**2)"},
        "inputs": {"x": 3.0},
        "submission": {"intermediates": {"x**2": 9.0, "(x ** 2)": 9.0, "sin(x**2)": math.sin(9.0), "x**": 9.0}},
    }
    result = requests.post(live_server.url + "/v1/check", json=body, timeout=30).json()
    checks = by_name(result)
    for key in ("x**2", "(x ** 2)", "sin(x**2)"):
        assert checks[f"intermediates.{key}"]["passed"] is True, checks[f"intermediates.{key}"]["message"]
    assert checks["intermediates.x**2"]["expected"] == 9.0
    assert checks["intermediates.x**"]["message"] == (
        "intermediates.x**: there is no intermediate named 'x**' to grade; known: x ** 2, sin(x ** 2)"
    )
    wrong = {**body, "submission": {"intermediates": {"x**2": 8.0}}}
    assert requests.post(live_server.url + "/v1/check", json=wrong, timeout=30).json()["checks"][0]["passed"] is False


# --- tolerance edges ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("offset", "passed"), [(0.99, True), (1.01, False), (-0.99, True), (-1.01, False)])
def test_tolerance_edges(client, offset, passed):
    # d/dx x**2 at x = 1 is exactly 2; allowed |error| = atol + rtol * 2
    rtol, atol = 1e-3, 1e-4
    answer = 2.0 + offset * (atol + rtol * 2.0)
    body = {
        "model": {"kind": "expression", "formula": "x**2"},
        "inputs": {"x": 1.0},
        "submission": {"gradients": {"x": answer}},
        "rtol": rtol,
        "atol": atol,
    }
    c = check(client, body)["checks"][0]
    assert c["passed"] is passed and c["rtol"] == rtol and c["atol"] == atol


def test_per_check_tolerance_overrides_the_request(client):
    body = {
        "model": {"kind": "expression", "formula": "x**2"},
        "inputs": {"x": 1.0},
        "submission": {"gradients": {"x": 2.1}},
        "checks": {"gradients.x": {"atol": 0.2}},
    }
    c = check(client, body)["checks"][0]
    assert c["passed"] is True and c["atol"] == 0.2 and c["rtol"] == 1e-4


def test_non_finite_answers(client):
    body = {
        "model": {"kind": "expression", "formula": "x**2"},
        "inputs": {"x": 1.0},
        "submission": {"gradients": {"x": "NaN"}},
    }
    c = check(client, body)["checks"][0]
    assert c["passed"] is False and c["abs_error"] is None and c["actual"] == "NaN"


@pytest.mark.parametrize("expected", [0.12344, 0.50004, 2.00004, -7.00006, 123.45674, 0.00004])
def test_round_atol_counts_whole_units_of_the_rounding_at_every_magnitude(live_server, expected):
    """One unit of the 4th decimal off is within atol 1e-4 whatever the magnitude, two units are not: the rounded
    floats' difference was 1e-4 give or take an ulp, so 0.12346 vs 0.12344 failed with "0.0001 > 0.0001"."""

    def graded(answer: float) -> dict:
        body = {
            "model": {"kind": "expression", "formula": f"{expected!r}*x"},
            "inputs": {"x": 1.0},
            "submission": {"gradients": {"x": answer}},
            "checks": {"gradients.x": {"points": 1, "tolerance": {"profile": "round_atol"}}},
        }
        response = requests.post(live_server.url + "/v1/check", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["checks"][0]

    one_off = graded(expected + 2e-5)  # rounds one unit up: 0.1234 vs 0.1235
    assert one_off["passed"] is True, one_off["message"]
    assert one_off["tolerance"]["value"] == 1e-4
    assert one_off["message"].endswith("(max |round(a) - round(e)| 0.0001, within 0.0001)")
    two_off = graded(expected + 1.2e-4)  # 0.1234 vs 0.1236
    assert two_off["passed"] is False and two_off["tolerance"]["value"] == 2e-4, two_off["message"]
    assert graded(expected)["tolerance"]["value"] == 0.0


def test_rel_error_is_what_the_openapi_description_says_for_every_profile(live_server):
    """CheckResult.rel_error: max |a - e| / |e| under rtol/atol, CS231n's max |a - e| / max(1e-8, |a| + |e|) with
    any profile (the description said the first only)."""
    document = requests.get(live_server.url + "/openapi.json", timeout=30).json()
    description = document["components"]["schemas"]["CheckResult"]["properties"]["rel_error"]["description"]
    assert "/ |expected| over the elements whose expected value is not zero" in description
    assert "With any tolerance profile" in description and "max(1e-8, |actual| + |expected|)" in description
    body = {
        "model": {"kind": "expression", "formula": "sum(x**2)"},
        "inputs": {"x": [1.0, 2.0]},
        "submission": {"gradients": {"x": [2.0, 4.001]}},
    }
    classic = (4.001 - 4.0) / 4.0
    cs231n = (4.001 - 4.0) / (4.001 + 4.0)
    for profile in (None, "rel_error", "norm_ratio", "allclose", "round_atol", "exact"):
        options = {"tolerance": {"profile": profile}} if profile else {}
        sent = {**body, "checks": {"gradients.x": {"points": 1, **options}}}
        result = requests.post(live_server.url + "/v1/check", json=sent, timeout=30).json()["checks"][0]
        assert result["rel_error"] == pytest.approx(cs231n if profile else classic, rel=1e-9), profile


@pytest.mark.parametrize("profile", ["rel_error", "allclose", "round_atol", "norm_ratio"])
def test_a_profile_check_with_a_non_finite_error_is_null_in_every_format(client, profile):
    """A tolerance profile's abs_error and rel_error are null when an error at any point is not finite, as under
    the classic rule, in every format: the worst point here is finite, so another point's infinity used to reach
    the result, written null by JSON and "Infinity" (with a warning) by Gradescope."""
    body = {
        "model": {"kind": "expression", "formula": "x**2"},
        "points": [{"x": 1.0}, {"x": 2.0}],
        "submission": {"gradients": {"x": [5.0, "Infinity"]}, "loss": [2.0, "NaN"]},
        "tolerance": {"profile": profile},
    }
    plain = check(client, body)
    for c in plain["checks"]:
        assert not c["passed"] and c["abs_error"] is None and c["rel_error"] is None
    graded = client.post("/v1/check?format=gradescope", json=body).get_json()
    assert [t["extra_data"]["abs_error"] for t in graded["tests"]] == [None, None]
    assert [t["extra_data"]["rel_error"] for t in graded["tests"]] == [None, None]
    assert "warnings" not in graded["extra_data"]
    finite = {**body, "submission": {"gradients": {"x": [5.0, 4.5]}, "loss": [2.0, 4.0]}}
    assert all(c["abs_error"] == 3.0 for c in check(client, finite)["checks"][1:])


# --- diagnosis at the check's own tolerance (audit L1) -------------------------------------------------------

SIGN_FLIPPED = "the sign is flipped (a gradient ascent step, or a - where the chain rule has a +)"
TRANSPOSED = "it is transposed (check the layout: which axis is in, which is out)"
# df/dW of sum(W*M) is M; M is nearly antisymmetric, so -M and M.T are both within rtol 5% of an answer near them
NEAR_ANTISYMMETRIC = {
    "model": {"kind": "expression", "formula": "sum(W*M)"},
    "inputs": {"W": [[1.0, 2.0], [3.0, 4.0]], "M": [[0.0, 1.0], [-1.02, 0.0]]},
    "rtol": 0.05,
}


@pytest.mark.parametrize("tolerance", [None, {"profile": "round_atol"}, {"profile": "allclose", "rtol": 1e-3}])
def test_a_rounded_sign_flip_is_diagnosed(client, tolerance):
    """-6.6918 is the flipped dL/dw (6.691763...) to the grading tolerance: the mistake is named, as for the exact
    negated value; the right value rounded the same way passes without any diagnosis."""
    extra = {"tolerance": tolerance} if tolerance else {}
    w = by_name(check(client, {**NEURON, **extra, "submission": {"gradients": {"w": -6.6918}}}))["gradients.w"]
    assert not w["passed"] and w["diagnosis"] == SIGN_FLIPPED
    assert w["message"].endswith(f"; likely mistake: {SIGN_FLIPPED}")
    right = by_name(check(client, {**NEURON, **extra, "submission": {"gradients": {"w": 6.6918}}}))["gradients.w"]
    assert right["passed"] and "diagnosis" not in right and "likely" not in right["message"]


def test_a_rounded_mistake_outside_the_tolerance_is_not_diagnosed(client):
    """-6.69 is 1.8e-3 from the flipped value, where rtol 1e-4 allows 6.7e-4: no diagnosis."""
    w = by_name(check(client, {**NEURON, "submission": {"gradients": {"w": -6.69}}}))["gradients.w"]
    assert not w["passed"] and "diagnosis" not in w


def test_a_mistake_whose_values_would_pass_is_never_named(client):
    """d(x**2)/dx at x=1e-7 is 2e-7: its negation is within atol 1e-6 of it, so "sign flipped" cannot be a mistake
    at this tolerance, though the wrong answer -1.1e-6 is within atol of -2e-7."""
    body = {"model": {"kind": "expression", "formula": "x**2"}, "inputs": {"x": 1e-7}}
    x = by_name(check(client, {**body, "submission": {"gradients": {"x": -1.1e-6}}}))["gradients.x"]
    assert not x["passed"] and "diagnosis" not in x


@pytest.mark.parametrize(
    ("answer", "mistake"),
    [([[0, -1.0], [1.019, 0]], SIGN_FLIPPED), ([[0, -1.019], [1.0, 0]], TRANSPOSED)],
)
def test_two_mistakes_within_tolerance_name_the_closest(client, answer, mistake):
    """-M and M.T both match either answer at rtol 5%: the one nearer the answer is named, whatever the order."""
    result = check(client, {**NEAR_ANTISYMMETRIC, "submission": {"gradients": {"W": answer}}})
    assert by_name(result)["gradients.W"]["diagnosis"] == mistake


# --- formats -------------------------------------------------------------------------------------------

PARTIAL = {
    **NEURON,
    "submission": {"loss": 6.7012, "gradients": {"w": 6.5, "b": 0.9988}},
    "checks": {
        "loss": {"points": 1},
        "gradients.w": {"points": 2},
        "gradients.b": {"points": 2, "visibility": "after_due_date"},
    },
}


def test_gradescope_format(client):
    body = check(client, PARTIAL, "gradescope")
    validate_gradescope(body)
    assert body["score"] == 3 and body["extra_data"]["max_score"] == 5
    statuses = {t["name"]: t["status"] for t in body["tests"]}
    assert statuses == {"the loss L": "passed", "dL/dw": "failed", "dL/db": "passed"}  # ids in extra_data
    assert [t["number"] for t in body["tests"]] == ["1.1", "1.2", "1.3"]
    assert [t["extra_data"]["id"] for t in body["tests"]] == ["loss", "gradients.w", "gradients.b"]
    assert body["tests"][2]["visibility"] == "after_due_date"
    assert "chain rule" in body["tests"][1]["output"]
    assert "1 of 2 checks passed" in body["output"]  # the always-visible summary counts only visible tests


def test_prairielearn_format(client):
    body = check(client, PARTIAL, "prairielearn")
    validate_prairielearn(body)
    assert body["score"] == pytest.approx(0.6)  # the grade counts every check ...
    assert [t["name"] for t in body["tests"]] == ["1.1 the loss L", "1.2 dL/dw"]  # ... the student sees the visible


def test_fractional_points_add_up_as_written_in_every_format(live_server):
    """0.1 + 0.2 points score 0.3, as a person adds them (floats added one by one gave 0.30000000000000004 in
    JSON and Gradescope); integer points keep their bytes."""
    answers = {"gradients": {"w": 6.6918, "b": 0.9988}}
    body = {**NEURON, "checks": {"gradients.w": {"points": 0.1}, "gradients.b": {"points": 0.2}}, "submission": answers}
    plain = requests.post(live_server.url + "/v1/check", json=body, timeout=30)
    assert '"score":0.3,"max_score":0.3,' in plain.text and "0.30000000000000004" not in plain.text
    assert plain.json()["summary"] == "2 of 2 checks passed; score 0.3 of 0.3"
    graded = requests.post(live_server.url + "/v1/check?format=gradescope", json=body, timeout=30).json()
    assert graded["score"] == 0.3 and graded["extra_data"]["max_score"] == 0.3
    problem = {"key": "neuron", **body, "checks": {**body["checks"], "loss": {"points": 0.4}}}
    del problem["submission"]
    filed = requests.post(
        live_server.url + "/v1/grade", json={"problem": problem, "answers": {**answers, "loss": 6.7012}}, timeout=30
    )
    assert filed.json()["score"] == filed.json()["max_score"] == 0.7  # 0.1 + 0.2 + 0.4: 0.7000000000000001 as floats
    whole = {**body, "checks": {"gradients.w": {"points": 2}, "gradients.b": {"points": 1}}}
    assert '"score":3.0,"max_score":3.0,' in requests.post(live_server.url + "/v1/check", json=whole, timeout=30).text


def test_a_summary_beside_hidden_checks_says_they_count_without_naming_them(live_server):
    """PrairieLearn's score counts hidden checks: its message said "2 of 2 checks passed (3 of 3 points)" beside a
    score of 0.6; it now says other checks count, and nothing of which, how many or their points."""
    body = {
        **NEURON,
        "checks": {
            "loss": {"points": 1},
            "gradients.w": {"points": 2, "visibility": "hidden"},
            "gradients.b": {"points": 2, "tolerance": {"profile": "allclose", "partial_credit": True}},
        },
        "submission": {"loss": 6.7012, "gradients": {"w": 6.0, "b": 0.9988}},
    }
    graded = requests.post(live_server.url + "/v1/check?format=prairielearn", json=body, timeout=30).json()
    assert graded["score"] == pytest.approx(0.6)
    assert graded["message"] == (
        "2 of 2 checks passed (3 of 3 points); other checks, not shown here, count in the score too"
    )
    assert [t["name"] for t in graded["tests"]] == ["1.1 the loss L", "1.2 dL/db"]
    shown = {k: v for k, v in body["checks"].items() if k != "gradients.w"}
    alone = requests.post(
        live_server.url + "/v1/check?format=prairielearn", json={**body, "checks": shown}, timeout=30
    ).json()
    assert alone["score"] == 1.0 and alone["message"] == "2 of 2 checks passed (3 of 3 points)"
    problem = {"key": "neuron", **{k: v for k, v in body.items() if k != "submission"}}
    coderunner = requests.post(
        live_server.url + "/v1/grade?format=coderunner",
        json={"problem": problem, "answers": body["submission"]},
        timeout=30,
    ).json()
    assert coderunner["fraction"] == pytest.approx(0.6) and "count in the score too" in coderunner["prologuehtml"]


def test_all_right_in_every_format(client):
    right = {**PARTIAL, "submission": {"loss": 6.7012, "gradients": {"w": 6.6918, "b": 0.9988}}}
    assert check(client, right)["passed"] is True
    validate_gradescope(gs := check(client, right, "gradescope"))
    assert gs["score"] == 5
    validate_prairielearn(pl := check(client, right, "prairielearn"))
    assert pl["score"] == 1.0


# --- malformed requests are problems --------------------------------------------------------------------

MALFORMED = [  # body, status, the field `errors` names
    ({**NEURON}, 400, "submission"),
    ({**NEURON, "submission": {}}, 400, "submission"),
    ({**NEURON, "submission": {"gradients": {"w": True}}}, 400, "submission"),
    ({**NEURON, "submission": {"gradients": {"w": "six"}}}, 400, "submission"),
    ({**NEURON, "submission": {"loss": 1}, "rtol": -1}, 400, "rtol"),
    ({**NEURON, "submission": {"loss": 1}, "bogus": 1}, 400, "bogus"),
    ({**NEURON, "submission": {"loss": 1}, "points": [NEURON["inputs"]]}, 400, "points"),
    ({**SIN, "submission": {"loss": 1}}, 400, "inputs"),
    ({**SIN, "inputs": {"x": 1.0}, "seed": 3, "submission": {"loss": 1}}, 400, "seed"),
    ({**SIN, "domain": {"x": [2, 1]}, "submission": {"loss": 1}}, 400, "domain"),
    ({"model": {"kind": "neuron"}, "inputs": {"x": 1.0}, "submission": {"loss": 1}}, 400, "inputs"),
    ({**NEURON, "submission": {"loss": 1}, "checks": {"gradient.w": {}}}, 400, "checks"),
    (
        {"model": {"kind": "expression", "formula": "x**2"}, "inputs": {"x": [1.0, 2.0]}, "submission": {"loss": 1}},
        422,
        None,
    ),
    ({"model": {"kind": "expression", "formula": "x*y"}, "inputs": {"x": 1.0}, "submission": {"loss": 1}}, 422, None),
    (
        {
            "model": {"kind": "expression", "formula": "sum(x**2)"},
            "inputs": {"x": [0.0] * 10},
            "domain": {"x": [0, 1]},
            "n_points": 100,
            "submission": {"loss": 1},
        },
        200,
        None,
    ),
]


@pytest.mark.parametrize(("body", "status", "field"), MALFORMED)
def test_malformed_requests(client, body, status, field):
    response = client.post("/v1/check", json=body)
    assert response.status_code == status, response.json
    if status != 200:
        assert response.mimetype == PROBLEM
        if field:
            assert field in response.json["errors"]


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (True, "boolean"),
        (["nan"], "str"),
        ([1, [2, [{}]]], "dict"),
        ([[True], 1, [None, "NaN"]], "NoneType"),  # several: the first a walk from the end meets, as always
        ([[None], 1, ["Infinity", True]], "boolean"),
    ],
)
def test_an_answer_that_is_not_numbers_is_a_400_naming_what_is_in_it(client, answer, kind):
    """The answer field reads a whole level's types at once (a list of millions of numbers, without a copy of it);
    anything else in it is named as it was when every item was walked."""
    response = client.post("/v1/check", json={**SIN, "inputs": {"x": 1.0}, "submission": {"gradients": {"x": answer}}})
    assert response.status_code == 400 and response.json["errors"]["submission"]["gradients"]["x"]["value"] == [
        f'Answers are numbers, "NaN"/"Infinity"/"-Infinity" or lists of those, got {kind}.'
    ]


def _hostile_answers(n: int = 100_000) -> dict[str, list]:
    """An answer of n numbers with something else in it: at its start, middle or end, in a matrix, after a ragged
    row, nested deep, a bad string among valid non-finite ones, and a bad item on every level of a comb."""
    flat = [0.25] * n
    cases = {}
    for where, at in (("start", 0), ("middle", n // 2), ("end", n - 1)):
        for bad in (True, "x", None):
            cases[f"{type(bad).__name__} at {where}"] = flat[:at] + [bad] + flat[at + 1 :]
    matrix = [[0.25] * 100 for _ in range(n // 100)]
    matrix[len(matrix) // 2][50] = True
    cases["matrix"] = matrix
    ragged = [[0.25] * 100 for _ in range(n // 100)]
    ragged[3] = [0.25, [None]]
    ragged[-2][7] = {}  # the later one in row-major order, at a shallower depth than the null
    cases["ragged"] = ragged
    deep = [True, *flat]
    for _ in range(200):
        deep = [deep]
    cases["nested 200 deep"] = deep
    cases["strings"] = ["NaN", *flat, "Infinity", "nan", "-Infinity"]
    comb = [0.25, True]
    for _ in range(200):
        comb = [0.25] * 500 + [None, comb]
    cases["comb"] = comb
    return cases


def _walked_from_the_end(value) -> str:
    """The kind named before: the first non-number a walk from the answer's end meets, one item at a time."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool) or not (
            isinstance(item, (int, float)) or (isinstance(item, str) and item in NON_FINITE)
        ):
            return "boolean" if isinstance(item, bool) else type(item).__name__
    raise AssertionError("no non-number in the answer")


@pytest.mark.parametrize(("case", "answer"), _hostile_answers().items())
def test_a_non_number_among_many_is_named_without_walking_the_numbers(case, answer):
    """An answer of 100,000 numbers with something else in it is refused by C loops over its levels: the Python
    steps grow with its depth, not with its numbers (they were ~6 per number: a 4 M-number answer with a `true` at
    its start took ~5 s before its 400), and the kind named is the one a walk from the end meets, as before."""
    field = Answer()
    with pytest.raises(ValidationError) as refused:
        field.deserialize(answer)
    assert refused.value.messages == [f"{NOT_AN_ANSWER}, got {_walked_from_the_end(answer)}."]
    depth, level = 0, [answer]  # the answer's nesting depth: the steps may grow with it (~50 a level)
    while level:
        depth, level = depth + 1, [item for item in itertools.chain.from_iterable(level) if isinstance(item, list)]
    assert python_steps(lambda: pytest.raises(ValidationError, field.deserialize, answer)) < 500 + 60 * depth


def test_a_refused_answer_is_read_once_with_the_whole_bodys_errors(client, monkeypatch):
    """A check body whose answer part fails (its problem part loads) raises the answer part's errors, which are
    the whole body's: the answer is read once, as a valid one is (it was read twice: once per part, once whole)."""
    bodies = [
        {**SIN, "inputs": {"x": 1.0}, "submission": {"gradients": {"x": [0.5] * 1000 + [True]}}},
        {**SIN, "inputs": {"x": 1.0}, "submission": {"loss": None, "gradients": {"x": "x"}}, "rtol": -1},
        {**NEURON, "submission": {}},
        {**NEURON, "submission": {"loss": [[1], 2, [True]]}, "checks": {"bogus": {}}},
        {**NEURON, "submission": {"loss": 1}, "feedback": "all", "unknown": 1},
    ]
    reads = []
    deserialize = Answer._deserialize
    monkeypatch.setattr(
        Answer, "_deserialize", lambda self, value, *a, **k: reads.append(1) or deserialize(self, value, *a, **k)
    )
    for body in bodies:
        with pytest.raises(ValidationError) as whole:
            check_loading.check_request.load(body)
        reads.clear()
        with pytest.raises(ValidationError) as loaded:
            check_loading.load_check(body, LIMITS)
        assert loaded.value.messages == whole.value.messages
        submission = body["submission"]
        answers = [submission.get("loss"), *submission.get("gradients", {}).values()]
        assert len(reads) == sum(answer is not None for answer in answers), body
        response = client.post("/v1/check", json=body)
        assert response.status_code == 400 and response.json["errors"] == whole.value.messages


@pytest.mark.parametrize("path", ["/v1/check", "/v1/grade"])
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("format=GRADESCOPE", "Must be one of: json, gradescope, prairielearn"),
        ("format=json&format=gradescope", "Given more than once."),
    ],
)
def test_a_bad_query_string_is_reported_as_the_query_not_the_body(client, path, query, message):
    """The body is fine (or not even read): `detail` blames the query string, `errors` keys it under `query`."""
    response = client.post(f"{path}?{query}", json={**NEURON, "submission": {"loss": 1}})
    problem = response.json
    assert (response.status_code, problem["type"]) == (400, "/problems/invalid-request")
    assert problem["detail"] == "The query string does not match the schema; see `errors.query`."
    assert list(problem["errors"]) == ["query"] and list(problem["errors"]["query"]) == ["format"]
    assert problem["errors"]["query"]["format"][0].startswith(message)


def test_no_query_string_answers_as_format_json(client):
    """Without a query string the view takes its schema's defaults loaded once (views/query.py): the same bytes as
    an explicit ?format=json."""
    body = {**NEURON, "submission": {"loss": 6.7012, "gradients": {"w": 6.7}}}
    plain, explicit = client.post("/v1/check", json=body), client.post("/v1/check?format=json", json=body)
    assert plain.status_code == explicit.status_code == 200
    assert plain.data == explicit.data
    assert client.post("/v1/check?format=", json=body).status_code == 400  # a query string is still validated


def test_points_over_the_element_limit_are_413():
    from conftest import TestConfig
    from service import create_app
    from service.engine.limits import Limits

    class TinyConfig(TestConfig):
        LIMITS = Limits(max_total_elements=50)

    tiny = create_app(TinyConfig).test_client()
    body = {
        "model": {"kind": "expression", "formula": "sum(x)"},
        "inputs": {"x": [0.0] * 10},
        "domain": {"x": [0, 1]},
        "n_points": 6,
        "submission": {"loss": 1},
    }
    response = tiny.post("/v1/check", json=body)
    assert response.status_code == 413 and response.json["limit"] == {"name": "max_total_elements", "value": 50}
