"""POST /v1/grade (problem files, instructor errors apart from student errors) and the `gradsvc grade` and
`gradsvc problem lint` commands: deadline, fallback documents, options before or after the command."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import urllib.parse

import pytest
import requests
import yaml
from platform_specs import (
    student_view,
    validate_autolab,
    validate_coderunner,
    validate_gradescope,
    validate_prairielearn,
)

from conftest import ROOT, balanced_sum, free_port
from gradsvc import Client, fallback
from gradsvc import grade as grading
from gradsvc.cli import lint_problem

PROBLEM = {
    "title": "Neuron",
    "key": "neuron",
    "model": {"kind": "neuron", "loss": "bce"},
    "inputs": {"x": 6.7, "y": 0.0, "w": 1.0, "b": 0.0},
    "checks": {"loss": {"points": 1}, "gradients.w": {"points": 2, "title": "dL/dw", "tags": ["chain-rule"]}},
}
RIGHT = {"loss": 6.7012, "gradients": {"w": 6.6918}}


SQRT_ON_NEGATIVES = {
    "key": "sqrtdom",
    "model": {"kind": "expression", "formula": "sqrt(x)"},
    "domain": {"x": [-1.0, 1.0]},
    "seed": 5,
    "n_points": 6,
    "checks": {"gradient_formulas.x": {"points": 2, "title": "d/dx sqrt(x)"}, "loss": {"points": 1}},
}
EXP_OVERFLOW = {
    "key": "f",
    "model": {"kind": "expression", "formula": "exp(x)"},
    "inputs": {"x": 1000.0},
    "checks": {"gradients.x": {"points": 1}},
}


def grade(client, body, fmt="json"):
    return client.post(f"/v1/grade?format={fmt}", json=body)


def test_one_problem_file_graded_in_every_format(client):
    for fmt in ("json", "gradescope", "prairielearn", "autolab", "coderunner"):
        response = grade(client, {"problem": PROBLEM, "answers": RIGHT}, fmt)
        assert response.status_code == 200, response.json
    doc = grade(client, {"problem": PROBLEM, "answers": {"neuron": RIGHT}}, "gradescope").json
    validate_gradescope(doc)
    assert (
        doc["score"] == 3 and doc["tests"][1]["tags"] == ["neuron", "chain-rule"] and doc["tests"][1]["name"] == "dL/dw"
    )
    assert doc["tests"][1]["extra_data"]["id"] == "gradients.w" and doc["execution_time"] >= 0


def test_no_query_string_answers_as_format_json(client):
    """Without a query string /v1/grade takes its schema's defaults loaded once (views/query.py), as ?format=json."""
    body = {"problem": PROBLEM, "answers": RIGHT}
    plain, explicit = client.post("/v1/grade", json=body), grade(client, body, "json")
    assert plain.status_code == explicit.status_code == 200
    assert plain.json.keys() == explicit.json.keys() and plain.json["score"] == explicit.json["score"] == 3
    assert client.post("/v1/grade?format=", json=body).status_code == 400  # a query string is still validated


@pytest.mark.parametrize(
    ("problem", "status", "where"),
    [
        ({**PROBLEM, "checks": {"gradient.w": {"points": 1}}}, 400, "checks"),  # the typo of the issue
        ({**PROBLEM, "checks": {}}, 400, "checks"),
        ({key: v for key, v in PROBLEM.items() if key != "model"}, 400, "model"),
        ({"problems": [PROBLEM, PROBLEM]}, 400, "problems"),  # repeated keys
        ({**PROBLEM, "checks": {"gradients.q": {"points": 1}}}, 422, "checks"),  # no input q
        ({**PROBLEM, "model": {"kind": "expression", "formula": "sin(q)"}, "inputs": {"x": 1.0}}, 422, "model"),
        ("not a problem file", 400, "problem"),
        (SQRT_ON_NEGATIVES, 422, "gradient_formulas.x"),  # NaN references: the audit's bad/nan_domain.yaml
        (EXP_OVERFLOW, 422, "gradients.x"),  # an infinite reference: bad/overflow.yaml
    ],
)
def test_instructor_errors_are_invalid_problem(client, problem, status, where):
    response = grade(client, {"problem": problem, "answers": RIGHT}, "gradescope")
    assert response.status_code == status
    body = response.json
    assert body["type"] == "/problems/invalid-problem" and body["party"] == "instructor"
    assert where in json.dumps(body["errors"]) and "course staff" in body["detail"]


def test_every_misnamed_check_of_the_file_is_named_in_one_422(live_server):
    """Three misnamed checks in two problems: one 422 names them all (it named the first and stopped there), and a
    file with one misnamed check gets the message it always got."""
    typos = {**PROBLEM, "checks": {"gradients.w": {"points": 2}, "gradients.bb": {"points": 1}, "intermediates.zz": {}}}
    second = {**PROBLEM, "key": "again", "checks": {"loss": {"points": 1}, "gradients.ww": {"points": 1}}}
    response = requests.post(
        live_server.url + "/v1/grade", json={"problem": {"problems": [typos, second]}, "answers": {}}, timeout=30
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"] == "/problems/invalid-problem" and body["party"] == "instructor"
    assert body["detail"] == (
        "Problem 'neuron': gradients.bb: there is no gradient named 'bb' to grade; known: x, y, w, b; "
        "intermediates.zz: there is no intermediate named 'zz' to grade; known: z, y_pred. "
        "Problem 'again': gradients.ww: there is no gradient named 'ww' to grade; known: x, y, w, b. "
        "This is an error in the problem file (course staff), not in the answers."
    )
    problems = body["errors"]["problem"]["problems"]
    assert {i: sorted(p["checks"]) for i, p in problems.items()} == {
        "0": ["gradients.bb", "intermediates.zz"],
        "1": ["gradients.ww"],
    }
    one = requests.post(
        live_server.url + "/v1/grade",
        json={"problem": {**PROBLEM, "checks": {"gradients.q": {"points": 1}}}, "answers": {}},
        timeout=30,
    ).json()
    assert one["detail"].startswith("Problem 'neuron': gradients.q: there is no gradient named 'q' to grade; known: ")


@pytest.mark.parametrize("fmt", ["json", "gradescope", "prairielearn", "autolab", "coderunner"])
@pytest.mark.parametrize(
    "answers",
    [
        {},
        {"gradient_formulas": {"x": "0.5/sqrt(x)"}, "loss": ["NaN"] * 6},
        {"gradient_formulas": {"x": "0.5/sqrt(abs(x))"}},
    ],
)
def test_a_non_finite_reference_is_never_a_students_score(client, answers, fmt):
    """NaN matched NaN (a NaN answer passed), a right answer failed against NaN: now no answer is graded at all,
    and the 422 names the problem, the check and the point."""
    response = grade(client, {"problem": SQRT_ON_NEGATIVES, "answers": answers}, fmt)
    assert response.status_code == 422
    body = response.json
    assert body["type"] == "/problems/invalid-problem" and body["party"] == "instructor"
    assert (
        "Problem 'sqrtdom'" in body["detail"]
        and "'gradient_formulas.x' (d/dx sqrt(x)) is nan at point 1 (x=-0.48" in body["detail"]
    )
    assert body["errors"]["problem"]["problems"]["0"]["checks"]["gradient_formulas.x"]


def test_a_non_finite_reference_in_check_and_batch_is_a_422_naming_it(client):
    body = {**{k: SQRT_ON_NEGATIVES[k] for k in ("model", "domain")}, "submission": {"loss": [0.0] * 5}}
    r = client.post("/v1/check?format=gradescope", json=body)
    assert r.status_code == 422 and r.json["type"] == "/problems/non-finite-reference"
    assert "of check 'loss' (f = sqrt(x)) is nan at point 2 (x=-0.0812341)" in r.json["detail"]
    job = {**{k: EXP_OVERFLOW[k] for k in ("model", "inputs")}, "submission": {"gradients": {"x": "Infinity"}}}
    results = client.post("/v1/batch", json={"jobs": [{"check": job}, {"check": {**job, "inputs": {"x": 1.0}}}]}).json
    assert results["results"][0]["error"]["type"] == "/problems/non-finite-reference"
    assert "is inf at x=1000" in results["results"][0]["error"]["detail"]
    assert results["results"][1]["passed"] is False  # the other job still runs: "Infinity" is wrong at x=1


@pytest.mark.parametrize(
    ("answers", "fragment", "gradable"),
    [
        ({"loss": "six", "gradients": {"w": 6.6918}}, "'six' is not a number", False),
        ({"loss": True, "gradients": {"w": 6.6918}}, "boolean", False),
        ("just text", "must be a JSON object", False),
        (None, "must be a JSON object", False),
        ({"loss": [[1], 2], "gradients": {"w": 6.6918}}, "rectangular", True),  # misshaped: graded, and wrong
    ],
)
def test_student_errors_are_failed_checks_not_http_errors(client, answers, fragment, gradable):
    result = grade(client, {"problem": PROBLEM, "answers": answers}).json
    assert result["graded"] is True and not result["passed"]
    assert any(fragment in c["message"] for c in result["problems"][0]["checks"]), result
    pl = grade(client, {"problem": PROBLEM, "answers": answers}, "prairielearn").json
    validate_prairielearn(pl)
    assert pl["gradable"] is gradable  # format errors charge no attempt by default
    assert pl["score"] == (pytest.approx(2 / 3) if gradable else 0)


def test_misshaped_answer_is_graded_wrong_not_a_format_error(client):
    pl = grade(
        client, {"problem": PROBLEM, "answers": {"loss": [1.0, 2.0], "gradients": {"w": 6.6918}}}, "prairielearn"
    ).json
    assert pl["gradable"] is True and pl["score"] == pytest.approx(2 / 3)
    assert "wrong shape" in pl["tests"][0]["message"]


def test_released_visibility_is_shown_and_variant_seed_moves_the_points(client):
    problem = {**PROBLEM, "checks": {**PROBLEM["checks"], "gradients.b": {"points": 1, "visibility": "after_due_date"}}}
    answers = {**RIGHT, "gradients": {"w": 6.6918, "b": 0.9988}}
    before = grade(client, {"problem": problem, "answers": answers}, "prairielearn").json
    after = grade(client, {"problem": problem, "answers": answers, "released": ["after_due_date"]}, "prairielearn").json
    assert len(before["tests"]) == 2 and len(after["tests"]) == 3 and before["score"] == after["score"] == 1.0
    domain = {
        **PROBLEM,
        "domain": {"x": [-2, 2]},
        "n_points": 3,
        "seed_from_variant": True,
        "checks": {"gradient_formulas.w": {"points": 1}},
    }
    points = [
        grade(client, {"problem": domain, "answers": {"gradient_formulas": {"w": "x"}}, "variant_seed": s}).json[
            "problems"
        ][0]["checks"][0]["expected"]
        for s in (1, 2)
    ]
    assert points[0] != points[1]


# --- the command line ------------------------------------------------------------------------------


def gradsvc(*args, timeout=60):
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "gradsvc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return proc, time.monotonic() - start


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "problem.yaml").write_text(json.dumps(PROBLEM))  # JSON is YAML
    (tmp_path / "answers.json").write_text(json.dumps(RIGHT))
    return tmp_path


@pytest.mark.parametrize("deadline", [2, 5])
def test_grade_against_an_unreachable_address_ends_within_the_deadline(files, deadline):
    proc, took = gradsvc(
        "grade",
        "--platform",
        "prairielearn",
        "--problem",
        str(files / "problem.yaml"),
        "--answers",
        str(files / "answers.json"),
        "--out",
        str(files / "out" / "results.json"),
        "--url",
        f"http://127.0.0.1:{free_port()}",
        "--deadline",
        str(deadline),
        "--retries",
        "50",
    )
    assert proc.returncode == 0, proc.stderr
    assert took < deadline + 1, took
    results = json.loads((files / "out" / "results.json").read_text())
    validate_prairielearn(results)
    assert results["gradable"] is False
    assert [p.name for p in (files / "out").iterdir()] == ["results.json"]  # no temp file left behind


@pytest.mark.live
def test_options_before_or_after_the_command(live_server, files):
    common = [
        "--platform",
        "gradescope",
        "--problem",
        str(files / "problem.yaml"),
        "--answers",
        str(files / "answers.json"),
    ]
    before, _ = gradsvc("--url", live_server.url, "--retries", "1", "grade", *common, "--out", str(files / "a.json"))
    after, _ = gradsvc("grade", *common, "--out", str(files / "b.json"), "--url", live_server.url, "--retries", "1")
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    a, b = (json.loads((files / name).read_text()) for name in ("a.json", "b.json"))
    assert a["score"] == b["score"] == 3
    proc, _ = gradsvc(
        "check", str(files / "answers.json"), "--retries", "0", "--url", f"http://127.0.0.1:{free_port()}"
    )
    assert proc.returncode == 3  # `check` took --retries after its argument too (and found nothing there)


@pytest.mark.live
def test_problem_lint(live_server, files):
    ok, _ = gradsvc("problem", "lint", str(files / "problem.yaml"), "--url", live_server.url)
    assert ok.returncode == 0 and "schema ok" in ok.stdout and "3 points" in ok.stdout
    (files / "typo.yaml").write_text(json.dumps({**PROBLEM, "checks": {"gradient.w": {}}}))
    bad, _ = gradsvc("problem", "lint", str(files / "typo.yaml"), "--offline")
    assert bad.returncode == 1 and "gradient.w" in bad.stderr
    (files / "q.yaml").write_text(json.dumps({**PROBLEM, "checks": {"gradients.q": {}}}))
    schema_ok, _ = gradsvc("problem", "lint", str(files / "q.yaml"), "--offline")
    assert schema_ok.returncode == 0
    computed, _ = gradsvc("problem", "lint", str(files / "q.yaml"), "--url", live_server.url)
    assert computed.returncode == 1 and "'q'" in computed.stderr
    assert computed.stdout == ""  # "schema ok" came first, then the failure: only a lint that passes says ok
    assert '"gradients.q"' in computed.stderr and '"problems"' not in computed.stderr  # named as in the file
    (files / "rtol.yaml").write_text(json.dumps({**PROBLEM, "rtol": -1}))
    rtol, _ = gradsvc("problem", "lint", str(files / "rtol.yaml"), "--offline")
    assert rtol.returncode == 1 and rtol.stdout == ""
    assert json.loads(rtol.stderr.split("\n", 1)[1])["rtol"][0].startswith("Must be greater than"), rtol.stderr
    (files / "nan.yaml").write_text(json.dumps(SQRT_ON_NEGATIVES))
    nan, _ = gradsvc("problem", "lint", str(files / "nan.yaml"), "--url", live_server.url)
    assert nan.returncode == 1 and "is nan at point 1" in nan.stderr, nan.stderr
    (files / "broken.yaml").write_text("problems: [")
    broken, _ = gradsvc("problem", "lint", str(files / "broken.yaml"))
    assert broken.returncode == 2 and "not valid YAML" in broken.stderr


@pytest.mark.live
def test_grading_recipe_writes_a_valid_results_file(live_server, tmp_path):
    """docs/grading.md's `gradsvc problem lint` and `gradsvc grade` lines, run as written (--url and --out moved)."""
    text = (ROOT / "docs" / "grading.md").read_text().replace("\\\n", " ")
    lines = [line.split("#")[0].split() for line in text.splitlines() if line.startswith("gradsvc ")]
    assert [argv[:2] for argv in lines] == [["gradsvc", "problem"], ["gradsvc", "grade"]]
    for argv in lines:
        argv = [str(tmp_path / "results.json") if a == "results.json" else a for a in argv[1:]]
        proc, _ = gradsvc(*argv, "--url", live_server.url)
        assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    validate_gradescope(results)
    assert results["score"] == 10


# --- files that used to crash `gradsvc grade`, and one message per cause of "not graded" (audit H1, H2, M2, L4) ----

DEEP = "[" * 1000 + "]" * 1000  # deeper than Python's JSON parser goes (~990): json.loads raised RecursionError
OVERFLOW = '{"loss": 1e400, "gradients": {"w": 6.6918}}'  # valid JSON; Python reads 1e400 as inf


def grade_files(tmp_path, platform, answers_text, problem_text=None, url=None, name="problem.yaml"):
    (tmp_path / name).write_text(problem_text if problem_text is not None else json.dumps(PROBLEM))
    (tmp_path / "answers.json").write_text(answers_text)
    out = tmp_path / f"out.{platform}"
    proc, _ = gradsvc(
        "grade",
        "--platform",
        platform,
        "--problem",
        str(tmp_path / name),
        "--answers",
        str(tmp_path / "answers.json"),
        "--out",
        str(out),
        "--url",
        url or f"http://127.0.0.1:{free_port()}",
        "--retries",
        "0",
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc, out.read_text()


@pytest.mark.live
@pytest.mark.parametrize("platform", ["gradescope", "autolab", "coderunner"])
def test_deeply_nested_answers_are_a_readable_failure(live_server, tmp_path, platform):
    """The student's answers file (PrairieLearn's data.json is PrairieLearn's: see the setup test below)."""
    _, text = grade_files(tmp_path, platform, DEEP, url=live_server.url)
    validate = {"gradescope": validate_gradescope}
    if platform in validate:
        validate[platform](json.loads(text))
    elif platform == "autolab":
        validate_autolab(text)
    else:
        validate_coderunner(text)
    assert "nested too deeply to read" in student_view(platform, text if platform == "autolab" else json.loads(text))


@pytest.mark.live
def test_overflowing_number_is_graded_as_infinity(live_server, tmp_path):
    _, text = grade_files(tmp_path, "gradescope", OVERFLOW, url=live_server.url)
    doc = json.loads(text)
    validate_gradescope(doc)
    loss, w = doc["tests"]
    assert loss["status"] == "failed" and "you gave inf" in loss["output"] and w["status"] == "passed"
    check = tmp_path / "check.json"
    check.write_text(
        '{"model": {"kind": "expression", "formula": "x**2"}, "inputs": {"x": 1.0}, '
        '"submission": {"gradients": {"x": 1e400}}}'
    )
    proc, _ = gradsvc("check", str(check), "--url", live_server.url, "--retries", "0")
    assert "Traceback" not in proc.stderr and proc.returncode == 1, proc.stderr  # graded (a failed check), no crash
    check.write_text(check.read_text().replace('"x": 1.0', '"x": 1e400'))  # the problem itself at infinity
    proc, _ = gradsvc("check", str(check), "--url", live_server.url, "--retries", "0")
    assert "Traceback" not in proc.stderr and proc.returncode == 2 and "Reference not finite" in proc.stderr


@pytest.mark.live
@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("problem.json", json.dumps(PROBLEM).replace("6.7", "1e400")),  # a JSON problem file: inf before the fix
        ("problem.yaml", json.dumps(PROBLEM).replace("6.7", ".inf")),  # YAML's own infinity
    ],
)
def test_overflowing_number_in_a_problem_file_does_not_crash_grade_or_lint(live_server, tmp_path, name, text):
    _, out = grade_files(tmp_path, "gradescope", json.dumps(RIGHT), problem_text=text, url=live_server.url, name=name)
    validate_gradescope(json.loads(out))
    lint, _ = gradsvc("problem", "lint", str(tmp_path / name), "--url", live_server.url)
    assert "Traceback" not in lint.stderr and lint.returncode in (0, 1), lint.stderr  # the service's verdict


def test_reading_overflowing_and_deep_json():
    assert grading.load_json("[1e400, -1e400, NaN, 1e-400, 7, 1.5]") == ["Infinity", "-Infinity", "NaN", 0.0, 7, 1.5]
    assert grading.load_json("1" + "0" * 400) == "Infinity" and grading.load_json(str(2**70)) == float(2**70)
    with pytest.raises(grading.NestingError):
        grading.load_json(DEEP)
    proc, _ = gradsvc("check", "-", "--url", f"http://127.0.0.1:{free_port()}", "--retries", "0")
    assert proc.returncode == 2  # empty stdin: bad input, as before


def test_deep_json_to_check_is_bad_input_exit_2(tmp_path):
    (tmp_path / "deep.json").write_text(DEEP)
    proc, _ = gradsvc("check", str(tmp_path / "deep.json"), "--url", f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 2 and "nested too deeply" in proc.stderr and "Traceback" not in proc.stderr


def test_deep_or_undatable_problem_files_are_the_instructors_error(tmp_path):
    (tmp_path / "deep.json").write_text('{"problems": ' + DEEP + "}")
    (tmp_path / "date.yaml").write_text(json.dumps(PROBLEM)[:-1] + ', "title": 2024-01-01}')
    for name in ("deep.json", "date.yaml"):
        with pytest.raises(grading.ProblemFileError):
            grading.read_problem_file(str(tmp_path / name))
        proc, _ = gradsvc("problem", "lint", str(tmp_path / name), "--offline")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr


# YAML 1.1 (PyYAML's) reads 1e-4, 1E5 and -2e-3 as strings; the service takes only JSON numbers there
YAML_NUMBERS = """\
key: numbers
model: {kind: expression, formula: "sin(x)"}
domain: {x: [-2e-3, 1E1]}
seed: 3
n_points: 4
rtol: 1e-4
atol: 1e-6
checks:
  gradient_formulas.x: {points: .5, rtol: 1E-3}
  loss: {points: 1E5, atol: 2e-3}
"""


def test_a_yaml_problem_file_reads_exponents_without_a_dot_as_numbers(client, tmp_path):
    """gradsvc/yamlfile.py: YAML 1.2's floats, so `rtol: 1e-4` reaches the service as a number (it refuses "1e-4")."""
    assert yaml.safe_load(YAML_NUMBERS)["rtol"] == "1e-4"  # what PyYAML alone reads
    (tmp_path / "problem.yaml").write_text(YAML_NUMBERS)
    problem = grading.read_problem_file(str(tmp_path / "problem.yaml"))
    assert problem["domain"] == {"x": [-0.002, 10.0]} and problem["seed"] == 3 and type(problem["seed"]) is int
    assert (problem["rtol"], problem["atol"]) == (1e-4, 1e-6)
    assert problem["checks"] == {
        "gradient_formulas.x": {"points": 0.5, "rtol": 1e-3},
        "loss": {"points": 1e5, "atol": 2e-3},
    }
    graded = grade(client, {"problem": problem, "answers": {"gradient_formulas": {"x": "cos(x)"}}})
    assert graded.status_code == 200, graded.json
    checks = {c["name"]: c for c in graded.json["problems"][0]["checks"]}
    assert checks["gradient_formulas.x"]["rtol"] == 1e-3 and checks["gradient_formulas.x"]["points"] == 0.5
    assert checks["loss"]["max_points"] == 1e5 and checks["loss"]["atol"] == 2e-3 and checks["loss"]["rtol"] == 1e-4
    lint, _ = gradsvc("problem", "lint", str(tmp_path / "problem.yaml"), "--offline")
    assert lint.returncode == 0 and "schema ok" in lint.stdout, lint.stderr


def test_the_problem_file_of_the_docs_is_graded(client, tmp_path):
    """docs/platforms.md's YAML problem file, as written (its `rtol: 1e-4` was `1.0e-4` for YAML 1.1's sake)."""
    text = (ROOT / "docs" / "platforms.md").read_text().split("## The problem file")[1]
    (tmp_path / "problem.yaml").write_text(text.split("```yaml\n")[1].split("```")[0])
    problem = grading.read_problem_file(str(tmp_path / "problem.yaml"))
    assert problem["problems"][0]["rtol"] == 1e-4 and problem["problems"][0]["checks"]["gradients.b"]["rtol"] == 1e-3
    graded = grade(client, {"problem": problem, "answers": {"neuron": RIGHT}})
    assert graded.status_code == 200 and graded.json["score"] == 3, graded.json


def test_a_quoted_number_in_a_yaml_problem_file_is_the_instructors_error(client, tmp_path):
    (tmp_path / "problem.yaml").write_text(YAML_NUMBERS.replace("rtol: 1e-4", 'rtol: "1e-4"'))
    problem = grading.read_problem_file(str(tmp_path / "problem.yaml"))
    refused = grade(client, {"problem": problem, "answers": {}})
    assert refused.status_code == 400 and refused.json["type"] == "/problems/invalid-problem"
    assert refused.json["errors"] == {"problem": {"problems": {"0": {"rtol": ["Not a valid number."]}}}}
    lint, _ = gradsvc("problem", "lint", str(tmp_path / "problem.yaml"), "--offline")
    assert lint.returncode == 1 and "Not a valid number." in lint.stderr, lint.stderr


class AppAdapter(requests.adapters.BaseAdapter):
    """requests -> a Flask test client: the real service in-process, with a config of the test's (no port)."""

    def __init__(self, app):
        super().__init__()
        self.app_client = app.test_client()

    def send(self, request, **kwargs):
        url = urllib.parse.urlsplit(request.url)
        answer = self.app_client.open(
            url.path, query_string=url.query, method=request.method, data=request.body, headers=dict(request.headers)
        )
        response = requests.Response()
        response.status_code, response._content, response.url, response.request = (
            answer.status_code,
            answer.get_data(),
            request.url,
            request,
        )
        response.headers = requests.structures.CaseInsensitiveDict(answer.headers)
        return response

    def close(self):
        pass


def in_process(api_key=None, **config):
    from conftest import TestConfig
    from service import create_app

    app = create_app(type("Config", (TestConfig,), config))
    session = requests.Session()
    session.mount("http://svc", AppAdapter(app))
    return Client("http://svc", api_key=api_key, retries=0, session=session)


def grade_in_process(tmp_path, client, platform="gradescope", answers=RIGHT, problem=PROBLEM):
    problem_path, answers_path = tmp_path / "problem.yaml", tmp_path / "answers.json"
    problem_path.write_text(problem if isinstance(problem, str) else json.dumps(problem))
    if platform == "prairielearn" and not isinstance(answers, str):  # PrairieLearn's data.json
        answers = {"submitted_answers": answers, "variant_seed": 7}
    answers_path.write_text(answers if isinstance(answers, str) else json.dumps(answers))
    args = argparse.Namespace(
        platform=platform,
        problem=str(problem_path),
        answers=str(answers_path),
        out=str(tmp_path / "out" / "results"),
        deadline=20.0,
        released=[],
    )
    assert grading.run(args, client) == 0
    text = (tmp_path / "out" / "results").read_text()
    return text if platform == "autolab" else json.loads(text)


def test_answers_over_the_body_limit_fail_every_check_saying_so(tmp_path):
    client = in_process(MAX_CONTENT_LENGTH=64 * 1024)
    big = {"loss": 6.7012, "gradients": {"w": [1.0] * 30000}}  # ~150 KB: the 413 is the student's
    doc = grade_in_process(tmp_path, client, answers=big)
    validate_gradescope(doc)
    assert doc["score"] == 0 and len(doc["tests"]) == 2 and "staff can regrade" not in json.dumps(doc)
    assert all("too large to grade" in t["output"] for t in doc["tests"])
    pl = grade_in_process(tmp_path, client, platform="prairielearn", answers=big)
    validate_prairielearn(pl)
    assert pl["gradable"] is False and "too large to grade" in pl["format_errors"][0]  # no attempt charged
    huge_problem = {**PROBLEM, "title": "x" * 100, "inputs": {**PROBLEM["inputs"], "pad": [0.0] * 30000}}
    doc = grade_in_process(tmp_path, client, problem=huge_problem)  # the problem file alone: the instructor's
    assert doc["extra_data"]["party"] == "instructor" and "Problem configuration error" in doc["output"]


def test_empty_problem_file_is_the_instructors_error(tmp_path):
    doc = grade_in_process(tmp_path, in_process(), problem="")
    validate_gradescope(doc)
    assert doc["extra_data"]["party"] == "instructor" and "is empty" in doc["extra_data"]["reason"]


def test_a_refused_api_key_is_a_configuration_error_for_grade_and_lint(tmp_path):
    keyed = {"API_KEYS": "alpha"}
    for platform in ("gradescope", "prairielearn", "json"):
        doc = grade_in_process(tmp_path, in_process("wrong", **keyed), platform=platform)
        text = json.dumps(doc)
        assert "not set up correctly" in text and "could not be reached" not in text, text
    assert grade_in_process(tmp_path, in_process("alpha", **keyed))["score"] == 3
    lint_args = argparse.Namespace(file=str(tmp_path / "problem.yaml"), offline=False)
    assert lint_problem(lint_args, in_process("wrong", **keyed)) == 3  # the file is valid: not 1 (invalid)
    assert lint_problem(lint_args, in_process("alpha", **keyed)) == 0


def test_an_unexpected_failure_still_writes_a_document(tmp_path, monkeypatch):
    client = in_process()
    monkeypatch.setattr(client, "grade", lambda *a, **k: {}["boom"])
    doc = grade_in_process(tmp_path, client, platform="prairielearn")
    validate_prairielearn(doc)
    assert doc["gradable"] is False and "autograder failed" in doc["message"]


def test_fallback_documents_keep_staff_details_out_of_student_fields(tmp_path):
    detail = "http://10.0.0.7:8000/v1/grade: unavailable after 1 attempt(s) (ConnectionError: HTTPConnectionPool)"
    for platform in ("gradescope", "prairielearn", "autolab", "coderunner"):
        doc = fallback.document(platform, fallback.SERVICE, detail, ["neuron", "sin"])
        shown = grading.render(platform, doc) if platform == "autolab" else doc
        assert "10.0.0.7" not in student_view(platform, shown) and "HTTPConnectionPool" not in student_view(
            platform, shown
        )
    _, autoresult = validate_autolab(
        grading.render("autolab", fallback.document("autolab", fallback.SERVICE, "x", ["a"]))
    )
    assert autoresult == {"scores": {"a": 0.0}, "scoreboard": [0.0, 0.0]}
    broken = "problems:\n  - key: neuron\n    model: {kind: neuron\n  - key: sin_square\n"  # a YAML syntax error
    _, autoresult = validate_autolab(grade_in_process(tmp_path, in_process(), platform="autolab", problem=broken))
    assert autoresult["scores"] == {"neuron": 0.0, "sin_square": 0.0} and len(autoresult["scoreboard"]) == 3


LOG_DOMAIN = {
    "key": "logdomain",
    "model": {"kind": "expression", "formula": "log(x) + x*sqrt(y)"},
    "domain": {"x": [0.5, 3.0], "y": [0.1, 2.0]},
    "seed": 3,
    "n_points": 6,
    "checks": {"gradient_formulas.x": {"points": 2, "title": "df/dx"}, "gradient_formulas.y": {"points": 2}},
}
# y outside [0, 1]: a warning about the reference (the instructor's), which only staff should read
CLAMPED = {**PROBLEM, "key": "clamped", "inputs": {**PROBLEM["inputs"], "y": 2.0}}
NON_FINITE_ANSWERS = {  # the audit's a_nanstr.json: non-finite numbers and formulas that are NaN at every point
    "logdomain": {"gradient_formulas": {"x": "log(-x)", "y": "x/0"}},
    "clamped": {"loss": "NaN", "gradients": {"w": "Infinity"}},
}


def test_warnings_never_reach_what_a_student_reads(client):
    """A student's own non-finite answers give no warning at all (the message says "you gave nan"); the
    reference's warnings go where only staff look, never with an internal path into student-visible text."""
    body = {"problem": {"problems": [LOG_DOMAIN, CLAMPED]}, "answers": NON_FINITE_ANSWERS}
    result = grade(client, body).json
    assert [w.split(" for ")[0] for w in result["warnings"]] == ["y outside [0, 1]"]  # no checks[0].actual[3]
    messages = [c["message"] for p in result["problems"] for c in p["checks"]]
    assert "your formula gives nan" in messages[0] and "you gave nan" in " ".join(messages)
    gs = grade(client, body, "gradescope").json
    validate_gradescope(gs)
    assert "arning" not in gs["output"] and gs["extra_data"]["warnings"] == result["warnings"]
    pl = grade(client, body, "prairielearn").json
    validate_prairielearn(pl)
    assert pl["output"] == "" and "arning" not in json.dumps(pl)
    cr = grade(client, body, "coderunner").json
    assert cr["epiloguehtml"] == "" and cr["instructorhtml"].startswith("<p>Warning: y outside [0, 1]")
    for doc in (gs, pl, cr, grade(client, body, "autolab").json):
        student_text = json.dumps(doc).replace(json.dumps(result["warnings"])[1:-1], "")
        assert "checks[" not in student_text and "checks\\\\[" not in student_text and "not finite" not in student_text


def test_a_students_formula_never_makes_the_whole_file_a_413(client):
    """Found by an audit: the student's charges for an earlier problem were added to what the later problems had
    already reserved, so a big formula answer to problem a turned the whole file into a 413. Now the student's
    formula is charged against what the problems left: it fails alone, and problem b is graded."""
    big = balanced_sum([f"x*{k}" for k in range(1, 126)])  # 499 nodes, evaluated at 100 points
    problem = {
        "problems": [
            {
                "key": "a",
                "model": {"kind": "expression", "formula": "x**2"},
                "domain": {"x": [0, 1]},
                "n_points": 100,
                "checks": {"gradient_formulas.x": {}},
            },
            {  # its reference reserves most of the budget
                "key": "b",
                "model": {"kind": "expression", "formula": "sum(sin(x)*cos(x)+exp(x))"},
                "inputs": {"x": [0.5] * 500_000},
                "checks": {"loss": {}},
            },
        ]
    }
    right_b = (math.sin(0.5) * math.cos(0.5) + math.exp(0.5)) * 500_000
    for formula, a_passes in (("2*x", True), (big, False)):
        body = {"problem": problem, "answers": {"a": {"gradient_formulas": {"x": formula}}, "b": {"loss": right_b}}}
        response = grade(client, body)
        assert response.status_code == 200, response.json
        a, b = response.json["problems"]
        assert a["checks"][0]["passed"] is a_passes, a["checks"][0]["message"]
        assert b["checks"][0]["passed"], b["checks"][0]["message"]  # graded as if a had been answered well


# --- format errors cost no attempt, consistently; hints point where the answer goes (audit L2, L3) -------------

SQUARE = {
    "key": "square",
    "model": {"kind": "expression", "formula": "x**2*y"},
    "inputs": {"x": 3.0, "y": 2.0},
    "checks": {
        "gradient_formulas.x": {"points": 1, "title": "df/dx", "answer": "dfdx"},
        "gradients.y": {"points": 1, "title": "SECRET dy", "visibility": "hidden"},
    },
}
TWO = {"problems": [PROBLEM, SQUARE]}
TWO_RIGHT = {"neuron": RIGHT, "square": {"gradients": {"y": 9.0}}, "dfdx": "2*x*y"}


def pl_grade(client, answers, problem=TWO):
    doc = grade(client, {"problem": problem, "answers": answers}, "prairielearn").json
    validate_prairielearn(doc)
    return doc


@pytest.mark.parametrize(
    ("answers", "line"),
    [
        (
            {**TWO_RIGHT, "neuron": [1, 2]},
            'the answers to \'neuron\' must be an object such as {"loss": ..., "gradients": {...}}, got a list',
        ),
        (
            {**TWO_RIGHT, "neuron": {"loss": 6.7012, "gradients": "12"}},
            '"gradients" in the answers to \'neuron\' must be an object with one entry per name ({"<name>": ...}), '
            "got text",
        ),
        (
            {**TWO_RIGHT, "dfdx": "2*x*z"},
            "square: df/dx: your formula '2*x*z' uses 'z', which is not a variable of this problem; "
            "the variables are x, y",
        ),
        (
            {**TWO_RIGHT, "dfdx": "2*sigm(x)"},
            "square: df/dx: your formula '2*sigm(x)' cannot be read: unknown function 'sigm'",
        ),
        ({**TWO_RIGHT, "dfdx": "  "}, "square: df/dx: the formula is empty: write it in terms of x, y"),
        ({**TWO_RIGHT, "neuron": {**RIGHT, "loss": ""}}, "neuron: the loss L: the answer is empty: enter a number"),
        (
            {**TWO_RIGHT, "dfdx": "z*q"},
            "square: df/dx: your formula 'z*q' uses 'z', 'q', which are not variables of this problem",
        ),
    ],
)
def test_answers_that_cannot_be_read_cost_no_attempt(client, answers, line):
    """Answers not of the expected form (a problem's or a section's answers not an object, a formula naming what
    the problem does not have, an empty formula) are PrairieLearn format errors: not gradable, one specific line."""
    assert pl_grade(client, TWO_RIGHT)["score"] == 1.0
    doc = pl_grade(client, answers)
    assert doc["gradable"] is False and doc["score"] == 0.0
    assert len(doc["format_errors"]) == 1 and doc["format_errors"][0].startswith(line), doc["format_errors"]
    result = grade(client, {"problem": TWO, "answers": answers}).json  # elsewhere: a failed check saying the same
    assert sum(c["format_error"] for p in result["problems"] for c in p["checks"]) >= 1


def test_a_hidden_checks_format_error_does_not_name_it(client):
    """The hidden check's title (and answer) stay out of PrairieLearn's format errors; the line says why."""
    doc = pl_grade(client, {**TWO_RIGHT, "square": {"gradients": {"y": True}}})
    assert doc["gradable"] is False and "SECRET" not in json.dumps(doc)
    assert doc["format_errors"] == [
        'square: an answer graded without being shown could not be read: Answers are numbers, "NaN"/"Infinity"/'
        '"-Infinity" or lists of those, got boolean.'
    ]
    unreadable = pl_grade(client, "not an object")
    assert unreadable["format_errors"] == [
        "your answers could not be read: the answers must be a JSON object keyed by problem, got text"
    ]


def test_missing_answers_say_where_they_go(client):
    """Several problems: the hint names the problem's key; a check with an `answer` name: that name (PrairieLearn's
    input box), not a JSON path. Missing answers are graded (and fail): they are not format errors."""
    doc = pl_grade(client, {"neuron": {"loss": 6.7012}, "square": {}})
    assert doc["gradable"] is True
    messages = {t["name"]: t["message"] for t in doc["tests"]}
    assert messages["1.2 neuron: dL/dw"] == (
        'dL/dw: no answer given (add "gradients": {"w": ...} under \'neuron\' in your answers)'
    )
    assert messages["2.1 square: df/dx"] == "df/dx: no answer given (fill in dfdx)"
    one = grade(client, {"problem": PROBLEM, "answers": {"loss": 6.7012}}).json["problems"][0]["checks"][1]
    assert one["message"] == 'dL/dw: no answer given (add "gradients": {"w": ...} to the submission)'  # as before


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "No such file"),
        (json.dumps({"variant_seed": 7, "params": {}}), 'no "submitted_answers"'),
        ('{"submitted_answers": {"loss": 6.7', "is not valid JSON"),
        ('{"submitted_answers": ' + DEEP + "}", "nested too deeply"),
    ],
    ids=["missing", "no submitted_answers", "not JSON", "too deep"],
)
def test_prairielearn_without_its_data_json_is_the_setup_not_the_student(tmp_path, capsys, text, reason):
    """A data.json that is missing, not JSON, too deep or without `submitted_answers` is not gradable and sends the
    student to course staff (PrairieLearn writes that file: the grader's setup is wrong); the reason is for the
    job's log only."""
    client = in_process()
    answers = tmp_path / "nowhere" / "data.json"
    if text is not None:
        answers.parent.mkdir()
        answers.write_text(text)
    problem = tmp_path / "problem.json"
    problem.write_text(json.dumps(PROBLEM))
    out = tmp_path / "results.json"
    args = argparse.Namespace(
        platform="prairielearn", problem=str(problem), answers=str(answers), out=str(out), deadline=20.0, released=[]
    )
    assert grading.run(args, client) == 0
    doc = json.loads(out.read_text())
    validate_prairielearn(doc)
    assert doc["gradable"] is False and "not set up correctly" in doc["message"]
    assert "Fix the format" not in json.dumps(doc) and "data.json" not in student_view("prairielearn", doc)
    log = capsys.readouterr().out
    assert "configuration error" in log and str(answers) in log and reason in log


@pytest.mark.parametrize("platform", ["gradescope", "autolab", "coderunner", "json"])
@pytest.mark.parametrize(("text", "reason"), [("{", "is not valid JSON"), (DEEP, "is nested too deeply to read")])
def test_unreadable_answers_stay_the_students_elsewhere(tmp_path, platform, text, reason):
    """Off PrairieLearn the answers file is the student's: not JSON or too deep is graded as unreadable answers."""
    answers = tmp_path / "answers.json"
    answers.write_text(text)
    found, why, seed = grading.read_answers(str(answers), platform)
    assert found is None and seed is None and why.startswith(f"answers.json {reason}")
    with pytest.raises(grading.SetupError, match=reason):  # the same file as PrairieLearn's data.json
        grading.read_answers(str(answers), "prairielearn")
