"""A ninth audit of grading correctness: a problem file grades as its /v1/check body does (tolerance, dout), a
check's own rtol/atol under the request's profile (allclose takes them, another refuses them), norm_ratio's partial
credit and magnitudes, /v1/grade's total rounded once, and a failed check's numbers printed apart."""

from __future__ import annotations

import argparse
import json
import math
from decimal import Decimal, localcontext

import pytest
import requests
from marshmallow import ValidationError

from gradsvc import Client
from gradsvc.cli import lint_problem
from schemas.grading import CheckRequestSchema
from service.engine import echo
from service.problems import COPIED

LAYER = {
    "kind": "network",
    "layout": "mytorch",
    "layers": [{"type": "linear", "out_features": 3}],
    "loss": {"type": "none"},
}
LAYER_INPUTS = {"X": [[-4, -3], [-2, -1], [0, 1], [2, 3]], "W1": [[-2, -1], [0, 1], [2, 3]], "b1": [[-1], [0], [1]]}
LAYER_DOUT = [[-4, -3, -2], [-1, 0, 1], [2, 3, 4], [5, 6, 7]]
PRODUCT = {"model": {"kind": "expression", "formula": "x*y"}, "inputs": {"x": 2.0, "y": 3.0}}
SUM_PRODUCT = {"model": {"kind": "expression", "formula": "sum(x*y)"}}


def post(server, path: str, body: dict) -> dict:
    response = requests.post(server.url + path, json=body, timeout=60)
    assert response.status_code == 200, response.text[:500]
    return response.json()


def check(server, body: dict, fmt: str = "json") -> dict:
    return post(server, f"/v1/check?format={fmt}", body)


def layer_reference(server) -> list:
    body = {"model": LAYER, "inputs": LAYER_INPUTS, "dout": LAYER_DOUT, "dtype": "float64", "include": []}
    return post(server, "/v1/gradients", body)["gradients"]["W1"]


def scaled(value, factor: float):
    return [scaled(v, factor) for v in value] if isinstance(value, list) else value * factor


# --- a problem file grades exactly as its /v1/check body ------------------------------------------------------------


def test_every_check_body_field_a_problem_carries_is_passed_on_to_grading():
    """Audit findings 1-2: `tolerance` and `dout` were accepted in a problem file and dropped by a hand list of the
    fields /v1/grade passes on. Every CheckRequestSchema field but the student's `submission` reaches the grader
    (`checks` too, without their file-only options): a field added to one schema and not the other fails here."""
    assert set(CheckRequestSchema().fields) == {*COPIED, "submission", "checks"}
    assert {"tolerance", "dout", "feedback", "rtol", "atol"} <= set(COPIED)


def problems(server) -> list[tuple[str, dict, dict]]:
    """(name, problem, answers): each problem's fields sent to /v1/check as they are in the file."""
    w1 = layer_reference(server)
    return [
        (  # the audit's: CS231n's rel_error at 1e-3 passes 3.003, the default rtol 1e-4 fails it
            "rel_error profile",
            {
                **PRODUCT,
                "tolerance": {"profile": "rel_error", "threshold": 1e-3},
                "checks": {"gradients.x": {"points": 2}},
            },
            {"gradients": {"x": 3.003}},
        ),
        (  # stricter than the default rtol: 3.00001 passes rtol 1e-4, fails 1e-7
            "strict rel_error with partial credit",
            {
                **SUM_PRODUCT,
                "inputs": {"x": [1.0, 1.0], "y": [2.0, 3.0]},
                "tolerance": {"profile": "rel_error", "threshold": 1e-7, "partial_credit": True},
                "checks": {"gradients.x": {"points": 3}, "gradients.y": {"points": 1}},
            },
            {"gradients": {"x": [2.0, 3.00001], "y": [1.0, 1.0]}},
        ),
        (
            "round_atol profile",
            {**PRODUCT, "tolerance": {"profile": "round_atol", "decimals": 2, "atol": 0.01}, "checks": {"loss": {}}},
            {"loss": 6.004},
        ),
        (  # dout on a scalar output: the gradient is dout * J
            "dout on a scalar",
            {**PRODUCT, "dout": 5.0, "checks": {"gradients.x": {"points": 1}, "gradients.y": {"points": 1}}},
            {"gradients": {"x": 15.0, "y": 10.0}},
        ),
        (  # a layer check (loss none): dout is what makes it gradable at all (it was a 422 in /v1/grade)
            "dout on a layer",
            {
                "model": LAYER,
                "inputs": LAYER_INPUTS,
                "dout": LAYER_DOUT,
                "checks": {"gradients.W1": {"points": 2}, "gradients.b1": {"points": 1}},
            },
            {"gradients": {"W1": w1, "b1": [[1.0], [2.0], [3.0]]}},
        ),
        (  # every other field: points drawn from a domain, request and check tolerances, feedback at both levels
            "domain, tolerances and feedback",
            {
                "model": {"kind": "expression", "formula": "sin(x)*y"},
                "domain": {"x": [-1.0, 1.0]},
                "inputs": {"y": 2.0},
                "seed": 3,
                "n_points": 2,
                "rtol": 1e-2,
                "atol": 0.0,
                "feedback": "error",
                "checks": {
                    "gradients.y": {"points": 0.5, "rtol": 1e-9, "feedback": "expected"},
                    "gradient_formulas.x": {"points": 0.25},
                },
            },
            {"gradients": {"y": [0.5, 0.5]}, "gradient_formulas": {"x": "2*cos(x)*1.001"}},
        ),
    ]


@pytest.mark.live
def test_a_problem_file_grades_as_its_check_body(live_server):
    """The same problem through /v1/check (its fields plus `submission`) and /v1/grade (the file and the answers):
    equal verdicts, points, references and messages. Before, the profile and `dout` were dropped: the rel_error
    problem scored 0 of 2 in /v1/grade, 2 in /v1/check; dout's reference was J, not dout * J."""
    compared = ("passed", "points", "max_points", "expected", "abs_error", "rel_error", "message", "worst_point")
    verdicts = {}
    for name, problem, answers in problems(live_server):
        checked = check(live_server, {**problem, "submission": answers})
        graded = post(live_server, "/v1/grade?format=json", {"problem": {"key": "p", **problem}, "answers": answers})
        assert graded["score"] == checked["score"] and graded["max_score"] == checked["max_score"], name
        assert graded["problems"][0]["tolerance_rule"] == checked["tolerance_rule"], name
        by_name = {c["name"]: c for c in graded["problems"][0]["checks"]}
        for result in checked["checks"]:
            mine = by_name[result["name"]]
            for key in (*compared, "tolerance", "feedback"):
                assert mine.get(key) == result.get(key), (name, result["name"], key, mine.get(key), result.get(key))
        verdicts[name] = [(c["passed"], c["points"]) for c in checked["checks"]]
    # what the two agree on is the profile's and dout's verdict, not the default rule's
    assert verdicts["rel_error profile"] == [(True, 2.0)]
    assert verdicts["strict rel_error with partial credit"] == [(False, 1.5), (True, 1.0)]
    assert verdicts["round_atol profile"] == [(True, 1.0)]
    assert verdicts["dout on a scalar"] == [(True, 1.0), (True, 1.0)]
    assert verdicts["dout on a layer"][0] == (True, 2.0)  # b1's answer is wrong: its sum over the batch is not 1 2 3
    assert verdicts["dout on a layer"][1] == (False, 0.0)


@pytest.mark.live
def test_problem_lint_accepts_a_layer_problem_with_dout(live_server, tmp_path, capsys):
    """Audit finding 2: `gradsvc problem lint` refused a layer check's problem with `dout` ("backward() needs a
    scalar, so reduce it"), which docs/networks.md tells authors to write."""
    problem = {"key": "layer", "model": LAYER, "inputs": LAYER_INPUTS, "dout": LAYER_DOUT}
    path = tmp_path / "layer.json"
    path.write_text(json.dumps({**problem, "checks": {"gradients.W1": {"points": 2}}}))
    assert lint_problem(argparse.Namespace(file=str(path), offline=False), Client(live_server.url, retries=0)) == 0
    assert "ok" in capsys.readouterr().out
    del problem["dout"]  # without it: the 422 that says to reduce the output
    path.write_text(json.dumps({**problem, "checks": {"gradients.W1": {"points": 2}}}))
    assert lint_problem(argparse.Namespace(file=str(path), offline=False), Client(live_server.url, retries=0)) == 1


# --- a check's own rtol/atol under an inherited profile: allclose takes them, any other refuses them --------------


VECTOR = {**SUM_PRODUCT, "inputs": {"x": [1.0, 1.0], "y": [2.0, 3.0]}}
CUBE = {"model": {"kind": "expression", "formula": "x**3"}, "inputs": {"x": 2.0}}
SQUARES = {"model": {"kind": "expression", "formula": "sum(x**2)"}, "inputs": {"x": [1, 2, 3]}}
# the second-look audit's repros: under `exact` a lone atol was graded by the classic rule at the default rtol 1e-4
# (12.001 for 12 passed); under rel_error with partial credit a check's rtol took the partial credit away (2 -> 0)
STRICT_PROFILE_LONE_ATOL = {
    **CUBE,
    "tolerance": {"profile": "exact"},
    "submission": {"gradients": {"x": 12.001}},
    "checks": {"gradients.x": {"points": 1, "atol": 1e-12}},
}
PARTIAL_CREDIT_CHECK_RTOL = {
    **SQUARES,
    "tolerance": {"profile": "rel_error", "partial_credit": True},
    "submission": {"gradients": {"x": [2, 4, 7]}},
    "checks": {"gradients.x": {"points": 3, "rtol": 1e-3}},
}


def refused(errors: dict, name: str) -> dict:
    """The messages of check `name`'s own options in a 400's `errors`."""
    return errors["checks"][name]["value"]


@pytest.mark.parametrize(
    "profile", [{"profile": p} for p in ("rel_error", "norm_ratio", "round_atol", "exact")], ids=lambda p: p["profile"]
)
@pytest.mark.parametrize("own", [{"rtol": 1e-3}, {"atol": 1e-12}, {"rtol": 0.01, "atol": 0.01}], ids=str)
def test_a_checks_own_rtol_atol_under_another_inherited_profile_is_refused(profile, own):
    """Ambiguous, so refused: the classic rule at them filled the one unset with the default (1e-4: looser than
    `exact`) and dropped the profile's partial credit. The message names the fix: the check's own profile."""
    body = {**VECTOR, "tolerance": profile, "submission": {}, "checks": {"gradients.x": own, "gradients.y": {}}}
    with pytest.raises(ValidationError) as err:
        CheckRequestSchema().load(body)
    messages = refused(err.value.messages, "gradients.x")
    assert set(messages) == set(own) and set(err.value.messages["checks"]) == {"gradients.x"}
    message = messages[next(iter(own))][0]
    assert f'the inherited tolerance profile "{profile["profile"]}"' in message and "its own `tolerance`" in message
    suggested = json.loads(message[message.index("{") : message.rindex("}") + 1])
    if profile["profile"] == "round_atol" and "rtol" not in own:  # round_atol reads an atol inside the profile
        assert suggested == {"profile": "round_atol", "atol": own["atol"]}
    else:
        assert suggested == {"profile": "allclose", "rtol": own.get("rtol", 0.0), "atol": own.get("atol", 0.0)}


@pytest.mark.parametrize("profile", ["rel_error", "norm_ratio", "round_atol", "exact"])
def test_a_checks_own_rtol_atol_beside_its_own_other_profile_are_refused(profile):
    """A third look: beside the check's own `exact` (or another profile that does not read them) a check's rtol/atol
    loaded, were echoed in the result and not applied; they are refused as beside an inherited one."""
    checks = {"gradients.x": {"tolerance": {"profile": profile}, "rtol": 0.1}, "gradients.y": {}}
    body = {**VECTOR, "tolerance": {"profile": "allclose"}, "submission": {}, "checks": checks}
    with pytest.raises(ValidationError) as err:
        CheckRequestSchema().load(body)
    message = refused(err.value.messages, "gradients.x")["rtol"][0]
    assert f'its own tolerance profile "{profile}"' in message and set(err.value.messages["checks"]) == {"gradients.x"}


def test_what_a_checks_own_rtol_atol_may_be_given_with():
    """No inherited profile (the classic rule), an inherited allclose (it takes them), or the check's own profile:
    each loads, the check's rtol kept."""
    own = {"rtol": 1e-3}
    bodies = [
        {**VECTOR, "submission": {}, "checks": {"gradients.x": own}},
        {**VECTOR, "submission": {}, "tolerance": {"profile": "allclose"}, "checks": {"gradients.x": own}},
        {
            **VECTOR,
            "submission": {},
            "tolerance": {"profile": "exact"},
            "checks": {"gradients.x": {**own, "tolerance": {"profile": "allclose"}}},
        },
    ]
    for body in bodies:
        assert CheckRequestSchema().load(body)["checks"]["gradients.x"]["rtol"] == 1e-3


@pytest.mark.live
def test_the_audits_ambiguous_checks_are_400s_in_check_batch_and_grade(live_server):
    """Both repros: a 400 naming the check's own option, in /v1/check, as a /v1/batch job (the same errors) and as a
    problem file in /v1/grade (the instructor's invalid-problem). Before: 12.001 for 12 passed under `exact`, and
    partial credit 2 of 3 became 0 of 3."""
    for body, key in ((STRICT_PROFILE_LONE_ATOL, "atol"), (PARTIAL_CREDIT_CHECK_RTOL, "rtol")):
        single = requests.post(live_server.url + "/v1/check", json=body, timeout=60)
        assert single.status_code == 400 and single.json()["type"] == "/problems/invalid-request", single.text[:300]
        assert set(refused(single.json()["errors"], "gradients.x")) == {key}
        [job] = post(live_server, "/v1/batch", {"jobs": [{"check": body}]})["results"]
        assert job["error"]["status"] == 400 and job["error"]["errors"] == {"check": single.json()["errors"]}
        problem = {key: value for key, value in body.items() if key != "submission"}
        graded = requests.post(
            live_server.url + "/v1/grade", json={"problem": problem, "answers": {"problem": body["submission"]}}
        )
        assert graded.status_code == 400 and graded.json()["type"] == "/problems/invalid-problem", graded.text[:300]
        assert set(refused(graded.json()["errors"]["problem"]["problems"]["0"], "gradients.x")) == {key}
    # what the instructor writes instead: the check's own profile keeps the partial credit and is as strict as asked
    fixed = dict(PARTIAL_CREDIT_CHECK_RTOL)
    fixed["checks"] = {
        "gradients.x": {
            "points": 3,
            "tolerance": {"profile": "allclose", "rtol": 1e-3, "atol": 0.0, "partial_credit": True},
        }
    }
    [result] = check(live_server, fixed)["checks"]
    assert result["points"] == 2.0 and not result["passed"]
    strict = dict(STRICT_PROFILE_LONE_ATOL)
    strict["checks"] = {"gradients.x": {"tolerance": {"profile": "allclose", "rtol": 0.0, "atol": 1e-12}}}
    [result] = check(live_server, strict)["checks"]
    assert not result["passed"] and (result["rtol"], result["atol"]) == (0.0, 1e-12)
    # a check that sets neither keeps the request's profile
    [result] = check(live_server, {**PARTIAL_CREDIT_CHECK_RTOL, "checks": {"gradients.x": {"points": 3}}})["checks"]
    assert result["points"] == 2.0 and result["tolerance"]["profile"] == "rel_error"


def test_problem_lint_refuses_a_checks_own_rtol_under_the_problems_profile(tmp_path, capsys):
    """`gradsvc problem lint` fails the file (the schema check, before the service is asked)."""
    problem = {key: value for key, value in PARTIAL_CREDIT_CHECK_RTOL.items() if key != "submission"}
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"key": "p", **problem}))
    assert lint_problem(argparse.Namespace(file=str(path), offline=True), Client("http://127.0.0.1:9", retries=0)) == 1
    assert "Ambiguous" in capsys.readouterr().err


@pytest.mark.live
def test_allclose_is_held_to_the_tolerances_it_echoes(live_server):
    """A request's allclose takes a check's own rtol/atol over its own (they were the other way round); a check's
    allclose naming rtol echoes that rtol (it echoed the request's 1e-4 while holding the answer to 1e-3)."""
    body = {
        **VECTOR,
        "tolerance": {"profile": "allclose", "rtol": 1e-6, "atol": 0.0, "partial_credit": True},
        "checks": {"gradients.x": {"points": 2, "rtol": 1e-2}, "gradients.y": {"points": 2}},
        "submission": {"gradients": {"x": [2.001, 3.0], "y": [1.0, 1.001]}},
    }
    loose, strict = check(live_server, body)["checks"]
    assert loose["passed"] and (loose["rtol"], loose["atol"]) == (0.01, 0.0) and "0.01" in loose["tolerance"]["rule"]
    assert not strict["passed"] and strict["points"] == 1.0 and (strict["rtol"], strict["atol"]) == (1e-6, 0.0)
    own = {key: value for key, value in body.items() if key != "tolerance"}
    own["checks"] = {"gradients.x": {"tolerance": {"profile": "allclose", "rtol": 1e-3}}}
    [result] = check(live_server, own)["checks"]
    assert result["passed"] and (result["rtol"], result["atol"]) == (1e-3, 1e-6)


@pytest.mark.live
def test_a_problems_allclose_takes_a_checks_own_tolerances_in_grade(live_server):
    """The same precedence in a problem file: the problem's allclose, the check's own rtol/atol above its own, its
    partial credit kept."""
    problem = {
        "key": "p",
        **VECTOR,
        "tolerance": {"profile": "allclose", "rtol": 1e-6, "atol": 0.0, "partial_credit": True},
        "checks": {"gradients.x": {"points": 2, "rtol": 0.01, "atol": 0.01}, "gradients.y": {"points": 2}},
    }
    answers = {"gradients": {"x": [2.001, 3.0], "y": [1.0, 1.001]}}
    graded = post(live_server, "/v1/grade?format=json", {"problem": problem, "answers": answers})
    own, strict = graded["problems"][0]["checks"]
    assert own["passed"] and (own["rtol"], own["atol"]) == (0.01, 0.01) and graded["score"] == 3
    assert strict["points"] == 1.0 and strict["tolerance"]["partial_credit"]


# --- norm_ratio: partial credit of a failed check, and extreme magnitudes ------------------------------------------


def norm_ratio_check(server, y: list, answer: list, partial_credit: bool = False, fmt: str = "json") -> dict:
    profile = {"profile": "norm_ratio", "partial_credit": partial_credit}
    body = {
        **SUM_PRODUCT,
        "inputs": {"x": [1.0] * len(y), "y": y},
        "checks": {"gradients.x": {"points": 2, "tolerance": profile}},
        "submission": {"gradients": {"x": answer}},
    }
    return check(server, body, fmt)


@pytest.mark.live
def test_norm_ratio_partial_credit_never_gives_a_failed_check_all_its_points(live_server):
    """Audit finding 4a: a reference of 0 against float noise 1e-15 failed the norm ratio (1) while every element
    was within CS231n's per-element rule: "failed", 2 of 2 points, and Grade-Passed false. A point the norm ratio
    fails has its largest error counted outside tolerance."""
    result = norm_ratio_check(live_server, [0.0, 0.0], [1e-15, 0.0], partial_credit=True)
    [failed] = result["checks"]
    assert not failed["passed"] and failed["points"] == 1.0 and result["score"] == 1.0, failed["message"]
    assert "1 of 2 elements are outside tolerance" in failed["message"]
    assert failed["tolerance"]["fraction_within"] == 0.5
    [test] = norm_ratio_check(live_server, [0.0, 0.0], [1e-15, 0.0], True, "gradescope")["tests"]
    assert test["status"] == "failed" and test["score"] < test["max_score"]
    # one element of four wrong: the elements' share as before (the wrong one is the largest error already)
    [one_off] = norm_ratio_check(live_server, [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0], True)["checks"]
    assert one_off["points"] == 1.5 and "1 of 4 elements" in one_off["message"]


def oracle_ratio(y: list, answer: list) -> float:
    """||a - e|| / (||a|| + ||e||) in 50-digit decimals, from the doubles' exact values (math.hypot loses digits
    on subnormals)."""
    with localcontext() as context:
        context.prec = 50
        a, e = [Decimal(v) for v in answer], [Decimal(v) for v in y]
        norm = lambda values: sum(v * v for v in values).sqrt()  # noqa: E731
        return float(norm([p - q for p, q in zip(a, e, strict=True)]) / (norm(a) + norm(e)))


@pytest.mark.live
@pytest.mark.parametrize(
    ("y", "answer", "passed"),
    [
        ([1e-170, 1e-170], [5e-170, -3e-170], False),  # underflowed: ratio 0, passed
        ([1e200, 2e200], [1e200 * (1 + 1e-8), 2e200], True),  # overflowed: ratio nan, failed
        ([1e160, 1e160], [1.0000000001e160, 1e160], True),  # passed, but with ratio 0
        ([3e-320, 1e-320], [3e-320, 2e-320], False),  # subnormal
        ([1.5, -2.5], [1.5, -2.5000001], True),
    ],
)
def test_norm_ratio_is_right_at_extreme_magnitudes(live_server, y, answer, passed):
    """Audit finding 4b: the norms squared unscaled values, overflowing past ~1e154 and underflowing below
    ~1e-162. They are scaled first; the ratio is the exact one to a few ulps."""
    [result] = norm_ratio_check(live_server, y, answer)["checks"]
    assert result["passed"] is passed, result["message"]
    assert result["tolerance"]["value"] == pytest.approx(oracle_ratio(y, answer), rel=1e-12)


# --- /v1/grade's total: every check's points added up once ----------------------------------------------------------


@pytest.mark.live
def test_grade_total_is_the_checks_points_rounded_once(live_server):
    """Audit finding 5: points 2.5, 1/3, 0.2 and 10, 1/3, 10 made 23.366666666666664 (two problems' rounded totals
    added); the points as JSON writes them, added exactly and rounded once, make 23.366666666666667, which is also
    what Gradescope's tests add up to."""
    third = 1 / 3
    points = {"a": (2.5, third, 0.2), "b": (10, third, 10)}
    problem = {
        "problems": [
            {
                "key": key,
                "model": {"kind": "expression", "formula": "x*y*z"},
                "inputs": {"x": 1.0, "y": 2.0, "z": 3.0},
                "checks": {f"gradients.{v}": {"points": p} for v, p in zip("xyz", values, strict=True)},
            }
            for key, values in points.items()
        ]
    }
    right = {"gradients": {"x": 6, "y": 3, "z": 2}}
    body = {"problem": problem, "answers": {"a": right, "b": right}}
    exact = float(sum(Decimal(repr(float(p))) for values in points.values() for p in values))
    assert exact == 23.366666666666667
    graded = post(live_server, "/v1/grade?format=json", body)
    assert graded["score"] == graded["max_score"] == exact
    gradescope = post(live_server, "/v1/grade?format=gradescope", body)
    assert gradescope["score"] == exact == float(sum(Decimal(repr(t["score"])) for t in gradescope["tests"]))


# --- a failed check's numbers, printed apart ---------------------------------------------------------------------


def test_apart_prints_six_digits_unless_more_tell_the_numbers_apart():
    assert echo.apart(0.1, 6.691762) == ("0.1", "6.69176")
    assert echo.apart(0.12345671, 0.12345678) == ("0.1234567", "0.1234568")
    assert echo.apart(1.0, math.nextafter(1.0, 2.0)) == ("1", "1.0000000000000002")
    assert echo.apart(float("nan"), 2.0) == ("nan", "2")
    assert echo.apart(3.0, 3.0) == ("3", "3")


@pytest.mark.live
def test_a_failed_checks_message_tells_the_answer_from_the_reference(live_server):
    """Audit finding 6: rtol 1e-7 failed 0.12345671 against 0.12345678, and the message said "you gave 0.123457,
    autograd gives 0.123457". Where 6 digits tell them apart the message is as it was."""
    tight = {**PRODUCT, "inputs": {"x": 1.0, "y": 0.12345678}, "rtol": 1e-7, "atol": 0}
    [result] = check(live_server, {**tight, "submission": {"gradients": {"x": 0.12345671}}})["checks"]
    assert "you gave 0.1234567, autograd gives 0.1234568 (off by -7e-08" in result["message"]
    exact = {**tight, "tolerance": {"profile": "exact"}, "submission": {"gradients": {"x": 0.12345671}}}
    [profiled] = check(live_server, exact)["checks"]
    assert "(you gave 0.1234567, autograd gives 0.1234568)" in profiled["message"]
    formula = {**tight, "submission": {"gradient_formulas": {"x": "y*(1+1e-6)"}}}
    [formula_result] = check(live_server, formula)["checks"]
    assert "your formula gives 0.1234569, autograd gives 0.1234568" in formula_result["message"]
    [coarse] = check(live_server, {**PRODUCT, "submission": {"gradients": {"x": 3.5}}})["checks"]
    assert "you gave 3.5, autograd gives 3 (off by +0.5" in coarse["message"]
