"""The tutorial's clamp where it bites (audit: y_pred outside [epsilon, 1 - epsilon], autograd's gradient 0 there).

/v1/check and batch check jobs grade against autograd and say so: the chain rule's factors include the clamp's
(0 where it bites), so their product is autograd's value, and the message names the clamp, the unclamped chain
rule's value and the author's way out. A problem file (/v1/grade, `gradsvc problem lint`, `gradsvc grade`) whose
points hit the clamp is the instructor's error, as a non-finite reference is. The "clamping hit" warning counts
the samples of every point. All against the real gunicorn server."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import requests
from platform_specs import validate_gradescope

from conftest import ROOT

pytestmark = pytest.mark.live

BCE = {"kind": "neuron", "loss": "bce"}
CLAMP_FACTOR = "dclamp(y_pred)/dy_pred"
# the audit's clamp_point.json: sigmoid(20) = 1 - 2.06e-9, outside [1e-8, 1 - 1e-8]; the chain rule's answers
AT_20 = {"x": 20.0, "y": 0.0, "w": 1.0, "b": 0.0}
CHAIN_RULE_ANSWERS = {"loss": 20.0, "gradients": {"w": 20.0, "b": 1.0}}
# the audit's clamp_problem.json: 8 points drawn from the domain, the clamp bites at point 7 (z = 25.5)
DOMAIN = {
    "domain": {"x": [-30, 30], "w": [-2, 2], "b": [-1, 1]},
    "inputs": {"x": 0.0, "y": 0.0, "w": 0.0, "b": 0.0},
    "n_points": 8,
    "seed": 3,
}
PROBLEM = {
    "title": "neuron",
    "key": "neuron",
    "model": BCE,
    **DOMAIN,
    "checks": {
        "gradient_formulas.w": {"points": 2, "title": "dL/dw", "answer": "dLdw"},
        "gradient_formulas.b": {"points": 1, "title": "dL/db", "answer": "dLdb"},
    },
}
FORMULAS = {"dLdw": "(sigmoid(w*x+b) - y)*x", "dLdb": "sigmoid(w*x+b) - y"}


def post(server, path: str, body: dict) -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=60)


def checks_by_name(body: dict) -> dict:
    return {c["name"]: c for c in body["checks"]}


def printed_product(message: str) -> float:
    """The value after "chain rule: dL/dw = f1 (v1) * ... = " in a check's message."""
    return float(re.search(r"chain rule: dL/d\w = [^;]*? = (\S+?)(?:;|$)", message).group(1))


def test_a_check_where_the_clamp_bites_says_so_and_its_product_is_autograds(live_server):
    body = post(live_server, "/v1/check", {"model": BCE, "inputs": AT_20, "submission": CHAIN_RULE_ANSWERS}).json()
    checks = checks_by_name(body)
    w = checks["gradients.w"]
    assert w["expected"] == 0 and not w["passed"]  # graded against autograd, as documented
    assert list(w["chain_rule"]) == ["dL/dy_pred", CLAMP_FACTOR, "dy_pred/dz", "dz/dw"]
    assert w["chain_rule"][CLAMP_FACTOR] == 0
    assert "* dclamp(y_pred)/dy_pred (0) * dy_pred/dz (2.06115e-09) * dz/dw (20) = 0;" in w["message"]
    assert printed_product(w["message"]) == w["expected"]  # was 20: the student's own answer
    for fragment in (
        "the tutorial's clamp bit at this point: y_pred = 1 - 2.06115e-09 is outside [epsilon, 1 - epsilon] = "
        "[1e-08, 1 - 1e-08], so autograd's gradient through the clamp is 0",
        "(without the clamp the chain rule gives 20)",
        'choose points where the clamp does not bite, or use loss "bce_with_logits"',
    ):
        assert fragment in w["message"]
    assert "(without the clamp the chain rule gives 1)" in checks["gradients.b"]["message"]
    loss = checks["loss"]  # 20 is the unclamped loss; autograd's is -log(1e-8) = 18.42
    assert (
        not loss["passed"]
        and "autograd's loss is the clamped one (without the clamp the loss is 20)" in (loss["message"])
    )
    # a batch check job grades the same way and says the same
    job = {"model": BCE, "inputs": AT_20, "submission": CHAIN_RULE_ANSWERS}
    batch = post(live_server, "/v1/batch", {"jobs": [{"check": job}, {"check": job}]}).json()
    assert [checks_by_name(r)["gradients.w"]["message"] for r in batch["results"]] == [w["message"]] * 2


@pytest.mark.parametrize("loss", ["bce", "bce_with_logits"])
@pytest.mark.parametrize("y", [0.0, 1.0])
@pytest.mark.parametrize("x", [-800.0, -40.0, -20.0, -6.7, 0.5, 6.7, 20.0, 30.0, 40.0, 800.0])
def test_the_printed_chain_rule_multiplies_to_autograds_gradient(live_server, x, y, loss):
    """At every point, clamped or not (at |x| = 40 y_pred rounds to 0 or 1; at 800 dL/dy_pred is infinite and
    dy_pred/dz 0: an audit saw inf * 0 = nan printed for bce_with_logits), the message's product is the reference
    the answer is graded against; the clamp's factor only where it bites."""
    inputs = {"x": x, "y": y, "w": 1.0, "b": 0.0}
    model = {"kind": "neuron", "loss": loss}
    body = post(live_server, "/v1/check", {"model": model, "inputs": inputs, "submission": {"gradients": {"w": 1e6}}})
    w = checks_by_name(body.json())["gradients.w"]
    assert math.isclose(printed_product(w["message"]), w["expected"], rel_tol=1e-5, abs_tol=1e-300)
    assert math.copysign(1, printed_product(w["message"])) == math.copysign(1, w["expected"])  # -0 too
    bites = abs(x) >= 20 and loss == "bce"
    assert (CLAMP_FACTOR in w["chain_rule"]) == bites == ("clamp bit" in w["message"])


@pytest.mark.parametrize("z", [6.7, 30.0, 40.0])
def test_the_chain_rules_factors_are_accurate_where_y_pred_nears_1(live_server, z):
    """dy_pred/dz is sigmoid(z) * sigmoid(-z): 1 - y_pred lost digits (dL/dy_pred 1.06974e+13 for 1.06865e+13 at
    z = 30) and was 0 once y_pred rounds to 1. With y = 0, dL/dy_pred = 1 / (1 - y_pred) = 1 + e^z."""
    inputs = {"x": z, "y": 0.0, "w": 1.0, "b": 0.0}
    model = {"kind": "neuron", "loss": "bce_with_logits"}
    body = post(live_server, "/v1/check", {"model": model, "inputs": inputs, "submission": {"gradients": {"w": 0.0}}})
    factors = checks_by_name(body.json())["gradients.w"]["chain_rule"]
    assert math.isclose(factors["dL/dy_pred"], 1 + math.exp(z), rel_tol=1e-12)
    assert math.isclose(factors["dy_pred/dz"], math.exp(-z) / (1 + math.exp(-z)) ** 2, rel_tol=1e-12)
    assert list(factors) == ["dL/dy_pred", "dy_pred/dz", "dz/dw"]  # y_pred - y, kept for the product, not shown


def test_feedback_error_names_the_tutorials_factors_only(live_server):
    """The clamp's factor would tell that the reference is 0: "error" mode names the tutorial's three, as before."""
    request = {"model": BCE, "inputs": AT_20, "submission": CHAIN_RULE_ANSWERS, "feedback": "error"}
    w = checks_by_name(post(live_server, "/v1/check", request).json())["gradients.w"]
    assert w["message"].endswith("chain rule: dL/dw = dL/dy_pred * dy_pred/dz * dz/dw")
    assert w["chain_rule"] is None and "clamp" not in w["message"]


def test_the_clamping_warning_counts_the_samples_of_every_point(live_server):
    """It counted one point's samples ("1 of 1") whatever the number of points; so did the y-outside warning."""
    domain = post(live_server, "/v1/check", {"model": BCE, **DOMAIN, "submission": {"loss": [0.0] * 8}}).json()
    assert domain["warnings"] == [
        "clamping hit: y_pred outside [epsilon, 1 - epsilon] for 1 of 8 sample(s); "
        "autograd's gradient through the clamp is 0 there"
    ]
    points = [AT_20, {**AT_20, "x": 1.0, "y": 2.0}, {**AT_20, "x": [-25.0, 0.0, 30.0], "y": [2.0, 0.0, 1.0]}]
    body = post(live_server, "/v1/check", {"model": BCE, "points": points, "submission": {"loss": [0.0] * 3}}).json()
    assert [w.split(";")[0].split(":")[0] for w in body["warnings"]] == [
        "y outside [0, 1] for 2 of 5 sample(s)",
        "clamping hit",
    ]
    assert "for 3 of 5 sample(s)" in body["warnings"][1]


@pytest.mark.parametrize("fmt", ["json", "gradescope", "prairielearn", "autolab", "coderunner"])
def test_a_problem_file_that_hits_the_clamp_is_the_instructors_error(live_server, fmt):
    """The audit's problem scored a class 0/3 (the chain-rule answers are right): now it is a 422 naming the
    check, the point and the fix, in the path a non-finite reference takes, and no answer is scored."""
    for answers in (FORMULAS, {}):
        response = post(live_server, f"/v1/grade?format={fmt}", {"problem": PROBLEM, "answers": answers})
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["type"] == "/problems/invalid-problem" and body["party"] == "instructor"
        detail = body["errors"]["problem"]["problems"]["0"]["checks"]["gradient_formulas.w"][0]
        assert detail in body["detail"] and body["detail"].startswith("Problem 'neuron': ")
        for fragment in (
            "'gradient_formulas.w' (dL/dw) is computed where the tutorial's clamp bites at point 7 "
            "(b=0.092919, w=-1.8031, x=-14.092, y=0): y_pred = 1 - 8.40417e-12 is outside [epsilon, 1 - epsilon]",
            "(it bites at 1 of 8 points)",
            "choose points (inputs, points or domain) where y_pred = sigmoid(z) stays within the bounds, or use loss "
            '"bce_with_logits"',
        ):
            assert fragment in detail


def test_a_problem_file_without_the_clamp_grades_the_chain_rule_right(live_server):
    """The fixes the error names work: loss "bce_with_logits" at the same points, or points where it does not
    bite; a check of an intermediate (z, y_pred: before the clamp) is graded where it bites."""
    logits = {**PROBLEM, "model": {"kind": "neuron", "loss": "bce_with_logits"}}
    result = post(live_server, "/v1/grade", {"problem": logits, "answers": FORMULAS}).json()
    assert result["score"] == result["max_score"] == 3
    narrow = {**PROBLEM, "domain": {"x": [-3, 3], "w": [-2, 2], "b": [-1, 1]}}
    assert post(live_server, "/v1/grade", {"problem": narrow, "answers": FORMULAS}).json()["score"] == 3
    at_20 = {"key": "z", "model": BCE, "inputs": AT_20, "checks": {"intermediates.z": {"points": 1}}}
    assert (
        post(live_server, "/v1/grade", {"problem": at_20, "answers": {"intermediates": {"z": 20}}}).json()["score"] == 1
    )
    loss = {**at_20, "checks": {"loss": {"points": 1}}}
    refused = post(live_server, "/v1/grade", {"problem": loss, "answers": {"loss": 20}})
    assert (
        refused.status_code == 422
        and "'loss' (the loss L) is computed where the tutorial's clamp bites at " in (refused.json()["detail"])
    )
    assert "y_pred = 1 - 2.06115e-09" in refused.json()["detail"]


def gradsvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradsvc", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_lint_and_grade_refuse_a_problem_file_that_hits_the_clamp(live_server, tmp_path):
    """`gradsvc problem lint` exited 0 on it; `gradsvc grade` wrote a 0/3 results document."""
    problem, answers = tmp_path / "problem.yaml", tmp_path / "answers.json"
    problem.write_text(json.dumps(PROBLEM))  # JSON is YAML
    answers.write_text(json.dumps(FORMULAS))
    lint = gradsvc("problem", "lint", str(problem), "--url", live_server.url, "--retries", "1")
    assert lint.returncode == 1, lint.stdout + lint.stderr
    assert "clamp bites at point 7" in lint.stderr and "bce_with_logits" in lint.stderr
    out = tmp_path / "results.json"
    common = ["--problem", str(problem), "--answers", str(answers), "--out", str(out), "--url", live_server.url]
    graded = gradsvc("grade", "--platform", "gradescope", *common, "--retries", "1")
    assert graded.returncode == 0, graded.stderr
    doc = json.loads(out.read_text())
    validate_gradescope(doc)
    assert doc["tests"] == [] and "configuration error" in doc["output"]
    assert "clamp bites" in doc["extra_data"]["reason"]
