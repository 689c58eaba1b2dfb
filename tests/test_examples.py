"""The Gradescope autograder and the PrairieLearn grader in examples/, run as subprocesses against live gunicorn."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, free_port
from test_check import validate_gradescope, validate_prairielearn

pytestmark = [pytest.mark.live]
GRADESCOPE = ROOT / "examples" / "gradescope"
PRAIRIELEARN = ROOT / "examples" / "prairielearn"
RIGHT = json.loads((GRADESCOPE / "sample_submission.json").read_text())


def run(script, url, **env):
    return subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "GRADSVC_URL": url, "GRADSVC_RETRIES": "1", **env},
    )


def gradescope(tmp_path, url, submission):
    root = tmp_path / "autograder"
    (root / "submission").mkdir(parents=True)
    if submission is not None:
        text = submission if isinstance(submission, str) else json.dumps(submission)
        (root / "submission" / "submission.json").write_text(text)
    proc = run(GRADESCOPE / "run_autograder", url, AUTOGRADER_ROOT=str(root))
    results = root / "results" / "results.json"
    return proc, json.loads(results.read_text()) if results.exists() else None


def test_gradescope_right_submission_gets_full_marks(live_server, tmp_path):
    proc, results = gradescope(tmp_path, live_server.url, RIGHT)
    assert proc.returncode == 0, proc.stderr
    validate_gradescope(results)
    assert results["score"] == 10 and results["extra_data"]["max_score"] == 10
    assert all(t["status"] == "passed" for t in results["tests"]) and len(results["tests"]) == 5


def test_gradescope_partial_submission(live_server, tmp_path):
    partial = {"neuron": {"loss": 6.7012, "gradients": {"w": 6.5}},  # w off, b missing
               "sin_square": {"gradient_formulas": {"x": "cos(x**2)"}},  # forgot the inner derivative
               "mean_square": {"gradients": {"x": [0.6667, 1.3333, 2.0]}}}
    proc, results = gradescope(tmp_path, live_server.url, partial)
    assert proc.returncode == 0, proc.stderr
    validate_gradescope(results)
    assert results["score"] == 3  # loss 1 + mean_square 2
    tests = {t["name"]: t for t in results["tests"]}
    assert "chain rule" in tests["neuron: dL/dw (gradients.w)"]["output"]
    assert "no answer given" in tests["neuron: dL/db (gradients.b)"]["output"]


@pytest.mark.parametrize("submission", [None, "{oops", '["a list"]'])
def test_gradescope_unreadable_submission_scores_zero_with_a_reason(live_server, tmp_path, submission):
    proc, results = gradescope(tmp_path, live_server.url, submission)
    assert proc.returncode == 0
    validate_gradescope(results)
    assert results["score"] == 0 and "Could not read your submission" in results["output"]


def test_gradescope_wrongly_typed_answer_fails_that_problem_only(live_server, tmp_path):
    proc, results = gradescope(tmp_path, live_server.url, {**RIGHT, "neuron": {"gradients": {"w": "six"}}})
    assert proc.returncode == 0, proc.stderr
    validate_gradescope(results)
    assert results["score"] == 5  # the two expression problems
    assert "not in the expected format" in results["tests"][0]["output"]


def test_gradescope_service_down_writes_no_results(tmp_path):
    proc, results = gradescope(tmp_path, f"http://127.0.0.1:{free_port()}", RIGHT)
    assert proc.returncode == 3 and results is None


def prairielearn(tmp_path, url, answers, seed=7):
    root = tmp_path / "grade"
    (root / "data").mkdir(parents=True)
    (root / "tests").mkdir()
    shutil.copy(PRAIRIELEARN / "question" / "tests" / "check.json", root / "tests" / "check.json")
    (root / "data" / "data.json").write_text(json.dumps({"submitted_answers": answers, "variant_seed": seed, "params": {}}))
    proc = run(PRAIRIELEARN / "grader.py", url, GRADE_ROOT=str(root))
    return proc, json.loads((root / "results" / "results.json").read_text())


def test_prairielearn_right_answer(live_server, tmp_path):
    proc, results = prairielearn(tmp_path, live_server.url, {"dLdw": "(sigmoid(w*x+b) - y)*x", "dLdb": "sigmoid(w*x+b) - y"})
    assert proc.returncode == 0, proc.stderr
    validate_prairielearn(results)
    assert results["score"] == 1.0


def test_prairielearn_partial_answer_and_variant_points(live_server, tmp_path):
    answers = {"dLdw": "(sigmoid(w*x+b) - y)*x", "dLdb": "sigmoid(w*x+b)"}
    proc, results = prairielearn(tmp_path, live_server.url, answers)
    validate_prairielearn(results)
    assert results["score"] == pytest.approx(2 / 3)
    assert "dy_pred/dz" in results["tests"][1]["message"]
    _, other = prairielearn(tmp_path / "other", live_server.url, answers, seed=8)
    assert other["tests"][1]["message"] != results["tests"][1]["message"]  # another variant, other points


def test_prairielearn_unparsable_formula_is_a_failed_test(live_server, tmp_path):
    _, results = prairielearn(tmp_path, live_server.url, {"dLdw": "import os", "dLdb": ""})
    validate_prairielearn(results)
    assert results["score"] == 0.0 and "could not be evaluated" in results["tests"][0]["message"]
    assert "no answer given" in results["tests"][1]["message"]


def test_prairielearn_unreadable_number_is_not_gradable(live_server, tmp_path):
    root = tmp_path / "grade"
    (root / "data").mkdir(parents=True)
    (root / "data" / "data.json").write_text(json.dumps({"submitted_answers": {"w": "six"}}))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"check": {"model": {"kind": "expression", "formula": "w**2"}, "inputs": {"w": 3.0}},
                                  "answers": {"w": "gradients.w"}}))
    proc = run(PRAIRIELEARN / "grader.py", live_server.url, GRADE_ROOT=str(root), GRADER_CONFIG=str(config))
    results = json.loads((root / "results" / "results.json").read_text())
    assert proc.returncode == 0
    assert results["gradable"] is False and "six" in results["format_errors"][0]
