"""The `feedback` option (audit H4): what a failed check tells the student about the reference value.

"expected" (the default) is today's behaviour byte for byte; "error" and "verdict" keep the reference's digits out
of every document a platform gets."""

from __future__ import annotations

import json
import re

import feedback_cases as cases
import pytest
from platform_specs import (
    student_view,
    validate_autolab,
    validate_coderunner,
    validate_gradescope,
    validate_prairielearn,
)

from conftest import ROOT
from gradsvc.grade import read_problem_file
from service.engine import feedback


def test_default_responses_are_byte_identical_to_those_recorded_before_the_option(client):
    """tests/data/feedback_expected.json was recorded before `feedback` existed: without the option, and with
    "expected" given explicitly (per request, per problem, per check), every format answers the same bytes."""
    golden = json.loads(cases.GOLDEN.read_text())
    assert cases.responses(client) == golden


def test_feedback_expected_given_explicitly_changes_no_byte(client):
    golden = json.loads(cases.GOLDEN.read_text())
    for name, body in cases.CHECKS.items():
        per_check = {**body}
        if "checks" in body:
            per_check["checks"] = {k: {**v, "feedback": "expected"} for k, v in body["checks"].items()}
        for variant in ({**body, "feedback": "expected"}, per_check):
            for fmt in ("json", "gradescope", "prairielearn"):
                response = client.post(f"/v1/check?format={fmt}", json=variant)
                assert response.get_data(as_text=True) == golden[f"check {name} {fmt}"], (name, fmt)
    problems = cases.PROBLEM_FILE["problems"]
    for problem_file in (
        {**cases.PROBLEM_FILE, "feedback": "expected"},
        {**cases.PROBLEM_FILE, "problems": [{**p, "feedback": "expected"} for p in problems]},
        {
            **cases.PROBLEM_FILE,
            "problems": [
                {**p, "checks": {k: {**v, "feedback": "expected"} for k, v in p["checks"].items()}} for p in problems
            ],
        },
    ):
        for fmt in ("json", "gradescope", "prairielearn", "autolab", "coderunner"):
            doc = client.post(f"/v1/grade?format={fmt}", json={"problem": problem_file, "answers": cases.ANSWERS}).json
            doc.pop("execution_time", None)
            assert json.dumps(doc, sort_keys=True) == golden[f"grade {fmt}"], fmt


# --- no reference value in what a platform gets ------------------------------------------------------------

NEURON = {
    **cases.NEURON,
    "key": "neuron",
    "checks": {
        "loss": {"points": 1},
        "gradients.w": {"points": 2, "title": "dL/dw"},
        "gradients.b": {"points": 2, "title": "dL/db", "visibility": "hidden"},
    },
}
TENSOR = {
    "key": "tensor",
    "model": {"kind": "expression", "formula": "mean(x**2)"},
    "inputs": {"x": [1.1, 2.3, 3.7]},
    "checks": {"gradients.x": {"points": 2}, "intermediates.x ** 2": {"points": 1}},
}
FORMULA = {
    "key": "formula",
    "model": {"kind": "expression", "formula": "sin(x**2)"},
    "domain": {"x": [-3, 3]},
    "seed": 2026,
    "n_points": 4,
    "checks": {
        "gradient_formulas.x": {"points": 3},
        "loss": {"points": 1, "tolerance": {"profile": "rel_error", "partial_credit": True}},
    },
}
PROBLEMS = [NEURON, TENSOR, FORMULA]
ZEROS = {
    "neuron": {"loss": 0, "gradients": {"w": 0, "b": 0}},
    "tensor": {"gradients": {"x": [0, 0, 0]}, "intermediates": {"x ** 2": [0, 0, 0]}},
    "formula": {"gradient_formulas": {"x": "0*x"}, "loss": [0, 0, 0, 0]},
}
GRADE_FORMATS = ("json", "gradescope", "prairielearn", "autolab", "coderunner")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _flat(value) -> list[float]:
    if isinstance(value, list):
        return [x for item in value for x in _flat(item)]
    return [] if value is None else [float(value)]


def references(client) -> list[float]:
    """Every reference value of PROBLEMS, and the chain-rule factors that multiply to one (not dz/dw = x)."""
    result = client.post("/v1/grade", json={"problem": {"problems": PROBLEMS}, "answers": ZEROS}).json
    refs = []
    for check in (c for p in result["problems"] for c in p["checks"]):
        refs += _flat(check["expected"])
        for name, factor in (check["chain_rule"] or {}).items():
            refs += [] if name.startswith("dz/") else _flat(factor)
    assert len(refs) > 20 and 0 not in refs
    return refs


def leaked(document, refs: list[float], own: list[float] = ()) -> list[str]:
    """The numbers anywhere in the document (its text, as JSON) that pass a reference's default tolerance, but
    for the student's `own` answers (echoed to 6 significant digits)."""
    text = document if isinstance(document, str) else json.dumps(document)
    return [
        n
        for n in NUMBER.findall(text)
        if any(abs(float(n) - r) <= 1e-4 * abs(r) for r in refs)
        and not any(abs(float(n) - o) <= 1e-5 * abs(o) for o in own)
    ]


def nearly(answers, factor=1 + 3e-4):
    """The answers moved off by 3e-4 relative (failing rtol 1e-4), where the expected mode says by how much."""
    if isinstance(answers, dict):
        return {k: nearly(v, factor) for k, v in answers.items()}
    if isinstance(answers, list):
        return [nearly(v, factor) for v in answers]
    return answers * factor


@pytest.mark.parametrize("mode", ["error", "verdict"])
@pytest.mark.parametrize("fmt", GRADE_FORMATS)
def test_grade_documents_hold_no_reference_value(client, mode, fmt):
    """The whole document, staff fields and hidden checks included, in every /v1/grade format: no number in it
    passes a failed check, for a problem file default, per problem and per check."""
    refs = references(client)
    before = client.post(f"/v1/grade?format={fmt}", json={"problem": {"problems": PROBLEMS}, "answers": ZEROS}).json
    assert leaked(before, refs), "the default (expected) mode states the references: the detector sees them"
    for problem_file in (
        {"problems": PROBLEMS, "feedback": mode},
        {"problems": [{**p, "feedback": mode} for p in PROBLEMS]},
        {"problems": [{**p, "checks": {k: {**v, "feedback": mode} for k, v in p["checks"].items()}} for p in PROBLEMS]},
    ):
        response = client.post(f"/v1/grade?format={fmt}", json={"problem": problem_file, "answers": ZEROS})
        assert response.status_code == 200, response.json
        doc = response.json
        {
            "gradescope": validate_gradescope,
            "prairielearn": validate_prairielearn,
            "autolab": lambda d: validate_autolab(f"{json.dumps(d['feedback'])}\n{json.dumps(d['autoresult'])}\n"),
            "coderunner": lambda d: validate_coderunner(json.dumps(d)),
            "json": lambda d: None,
        }[fmt](doc)
        assert leaked(doc, refs) == [], (mode, fmt)
        text = json.dumps(doc)
        assert "autograd gives" not in text and "chain rule: dL/dw = dL/dy_pred (" not in text
        if fmt == "coderunner":
            assert {row[2] for row in doc["testresults"][1:]} == {"(not shown)"}


@pytest.mark.parametrize("mode", ["error", "verdict"])
def test_check_and_batch_documents_hold_no_reference_value(client, mode):
    refs = references(client)
    bodies = []
    for problem in PROBLEMS:
        body = {k: v for k, v in problem.items() if k != "key"}
        bodies.append({**body, "submission": ZEROS[problem["key"]], "feedback": mode})
    for body in bodies:
        for fmt in ("json", "gradescope", "prairielearn"):
            response = client.post(f"/v1/check?format={fmt}", json=body)
            assert response.status_code == 200 and leaked(response.json, refs) == [], (body["model"], fmt)
            assert leaked(client.post(f"/v1/check?format={fmt}", json={**body, "feedback": "expected"}).json, refs)
    batch = client.post("/v1/batch", json={"jobs": [{"check": b} for b in bodies]}).json
    assert len(batch["results"]) == 3 and all("checks" in r for r in batch["results"])
    assert leaked(batch, refs) == []


@pytest.mark.parametrize("mode", ["error", "verdict"])
def test_answers_nearly_right_or_sign_flipped_learn_no_more(client, mode):
    """3e-4 off: the expected mode says by how much and with which sign (answer - error passes); a flipped sign:
    its diagnosis names the mistake (minus the answer passes). Neither in "error" or "verdict"."""
    refs = references(client)
    expected_mode = client.post("/v1/grade", json={"problem": {"problems": PROBLEMS}, "answers": ZEROS}).json
    right = {
        "neuron": {
            "loss": expected_mode["problems"][0]["checks"][0]["expected"],
            "gradients": {"w": expected_mode["problems"][0]["checks"][1]["expected"]},
        }
    }
    close = nearly(right)
    flipped = {"neuron": {"gradients": {"w": -right["neuron"]["gradients"]["w"]}}}
    default = client.post("/v1/grade", json={"problem": NEURON, "answers": flipped}).json
    assert "likely mistake: the sign is flipped" in default["problems"][0]["checks"][1]["message"]
    for answers in (close, flipped):
        own = [float(n) for n in NUMBER.findall(json.dumps(answers))]  # the student's may be echoed
        before = client.post("/v1/grade?format=coderunner", json={"problem": NEURON, "answers": answers}).json
        assert leaked(before, refs, own) or "likely mistake" in json.dumps(before)
        for fmt in GRADE_FORMATS:
            doc = client.post(
                f"/v1/grade?format={fmt}", json={"problem": {**NEURON, "feedback": mode}, "answers": answers}
            ).json
            text = json.dumps(doc)
            assert "likely mistake" not in text and "diagnosis" not in text and " relative" not in text
            assert leaked(doc, refs, own) == [], (answers, fmt)
    result = client.post("/v1/grade", json={"problem": {**NEURON, "feedback": mode}, "answers": close}).json
    for check in result["problems"][0]["checks"][:2]:
        assert check["feedback"] == mode and not check["passed"]
        assert check["expected"] is check["abs_error"] is check["rel_error"] is check["chain_rule"] is None
        if mode == "error":
            assert "off by less than 0.1% of the right value" in check["message"]
        else:
            assert check["message"] == f"{check['title']} is not correct"


def test_messages_per_mode(client):
    """What each mode says of a failed and a passed check, a shape error and a missing answer."""
    body = {
        **cases.NEURON,
        "submission": {"loss": 6.7012, "gradients": {"w": 7.0, "b": [1, 2]}},
        "checks": {"loss": {"points": 1}, "gradients.w": {"points": 1}, "gradients.b": {"points": 1}},
    }
    messages = {
        mode: [c["message"] for c in client.post("/v1/check", json={**body, "feedback": mode}).json["checks"]]
        for mode in ("error", "verdict")
    }
    assert messages["error"] == [
        "the loss L is correct (abs error 3.02e-05)",
        "dL/dw is off: you gave 7, off by 1% to 10% of the right value; "
        "chain rule: dL/dw = dL/dy_pred * dy_pred/dz * dz/dw",
        "dL/db: wrong shape: expected shape [], got [2]",
    ]
    assert messages["verdict"] == ["the loss L is correct", "dL/dw is not correct", messages["error"][2]]
    # the check's own mode wins over the request's; a check without one takes the request's
    mixed = {**body, "feedback": "verdict", "checks": {**body["checks"], "gradients.w": {"feedback": "expected"}}}
    checks = client.post("/v1/check", json=mixed).json["checks"]
    assert "autograd gives 6.69176" in checks[1]["message"] and checks[1]["expected"] == pytest.approx(6.69176)
    assert "feedback" not in checks[1] and checks[0]["feedback"] == "verdict" and checks[0]["expected"] is None
    missing = client.post("/v1/check", json={**body, "submission": {}, "feedback": "verdict"}).json["checks"][0]
    assert missing["message"] == 'the loss L: no answer given (add "loss" to the submission)'


def test_band_is_a_decade_without_sign():
    assert feedback.band(1.0003, 1.0) == feedback.band(0.9997, 1.0) == "less than 0.1%"
    assert feedback.band(1.05, 1.0) == feedback.band(-0.95, -1.0) == "1% to 10%"
    assert feedback.band(0.0, 3.0) == feedback.band(-3.0, 3.0) == feedback.band(5.0, 0.0) == "100% or more"
    assert feedback.band(1.5, 1.0) == "10% to 100%" and feedback.band(1.002, 1.0) == "0.1% to 1%"


@pytest.mark.parametrize(
    ("where", "path"),
    [
        ("file", ["feedback"]),
        ("problem", ["problems", "0", "feedback"]),
        ("check", ["problems", "0", "checks", "loss", "value", "feedback"]),
    ],
)
def test_an_unknown_mode_is_the_instructors_error(client, where, path):
    problem_file = {"problems": [NEURON]}
    if where == "file":
        problem_file["feedback"] = "full"
    elif where == "problem":
        problem_file["problems"] = [{**NEURON, "feedback": "full"}]
    else:
        problem_file["problems"] = [{**NEURON, "checks": {**NEURON["checks"], "loss": {"feedback": "full"}}}]
    response = client.post("/v1/grade?format=gradescope", json={"problem": problem_file, "answers": ZEROS})
    assert response.status_code == 400
    body = response.json
    assert body["type"] == "/problems/invalid-problem" and body["party"] == "instructor"
    errors = body["errors"]["problem"]
    for key in path:
        errors = errors[key]
    assert errors == ["Must be one of: expected, error, verdict."]


def test_an_unknown_mode_is_a_400_in_check_and_a_jobs_error_in_batch(client):
    body = {**cases.NEURON, "submission": {"loss": 0}}
    for bad in ({**body, "feedback": "full"}, {**body, "checks": {"loss": {"feedback": 1}}}):
        response = client.post("/v1/check", json=bad)
        assert response.status_code == 400, response.json
    results = client.post("/v1/batch", json={"jobs": [{"check": {**body, "feedback": "none"}}, {"check": body}]}).json
    assert results["results"][0]["error"]["status"] == 400 and results["results"][1]["score"] == 0


def test_openapi_documents_the_option(client):
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    for name in ("CheckRequest", "CheckOptions"):
        assert schemas[name]["properties"]["feedback"]["enum"] == ["expected", "error", "verdict"]
    assert schemas["CheckResult"]["properties"]["feedback"]["enum"] == ["error", "verdict"]


@pytest.mark.parametrize("mode", ["expected", "error", "verdict"])
def test_the_audits_replay_on_the_gradescope_example(client, mode):
    """The audit's repro: all-zero answers to examples/gradescope/problem.yaml, then every number the student can
    read resubmitted as each of the neuron's answers. The default hands over 3 points (loss and dL/dw; dL/db is
    shown after the due date); "error" and "verdict" none."""
    problem = read_problem_file(str(ROOT / "examples" / "gradescope" / "problem.yaml"))
    if mode != "expected":
        problem["feedback"] = mode
    zeros = {"neuron": {"loss": 0, "gradients": {"w": 0, "b": 0}}, "mean_square": {"gradients": {"x": [0, 0, 0]}}}
    doc = client.post("/v1/grade?format=gradescope", json={"problem": problem, "answers": zeros}).json
    assert doc["score"] == 0
    numbers = sorted({float(n) for n in NUMBER.findall(student_view("gradescope", doc))})
    replays = [{"neuron": {"loss": n, "gradients": {"w": n, "b": n}}} for n in numbers]
    results = client.post(
        "/v1/batch",
        json={
            "jobs": [
                {
                    "check": {
                        **cases.NEURON,
                        "submission": r["neuron"],
                        "checks": {"loss": {"points": 1}, "gradients.w": {"points": 2}},
                    }
                }
                for r in replays
            ]
        },
    ).json["results"]
    best = {
        name: max(c["points"] for r in results for c in r["checks"] if c["name"] == name)
        for name in ("loss", "gradients.w")
    }
    assert sum(best.values()) == (3 if mode == "expected" else 0), best


@pytest.mark.parametrize("mode", ["error", "verdict"])
def test_a_networks_planted_bug_is_not_diagnosed(client, mode):
    """test_network's sign-flipped dW1, diagnosed by default: in "error" and "verdict" no diagnosis, no values."""
    import numpy as np
    from test_network import numpy_backprop

    rng = np.random.RandomState(5)
    x, y = rng.randn(5, 3), np.array([0, 1, 2, 1, 0])
    p = {"W1": rng.randn(3, 4), "b1": rng.randn(4), "W2": rng.randn(4, 3), "b2": rng.randn(3)}
    body = {
        "model": {
            "kind": "network",
            "layout": "cs231n",
            "loss": {"type": "softmax_cross_entropy"},
            "l2": {"reg": 0.3, "form": "sum_sq"},
            "layers": [
                {"type": "linear", "out_features": 4, "activation": "relu"},
                {"type": "linear", "out_features": 3},
            ],
        },
        "inputs": {"X": x.tolist(), "y": y.tolist(), **{k: v.tolist() for k, v in p.items()}},
        "submission": {"gradients": {"W1": numpy_backprop(x, y, p, 0.3, "sign")["W1"].tolist()}},
    }
    default = client.post("/v1/check", json=body).json["checks"][0]
    assert "sign is flipped" in default["diagnosis"] and "likely mistake" in default["message"]
    check = client.post("/v1/check", json={**body, "feedback": mode}).json["checks"][0]
    assert "diagnosis" not in check and "likely mistake" not in check["message"] and check["expected"] is None
    assert check["message"] == (
        "dL/dW1[0, 2] is off: you gave -0.956562, off by 100% or more of the right value; 12 of 12 elements are off"
        if mode == "error"
        else "dL/dW1 is not correct"
    )
