"""The ready-made autograders in examples/, each run in its platform's layout (a temp root) against live gunicorn,
an unused port, a server that answers too slowly, and with an instructor's typo in the problem file. Every run must
exit 0 where the platform needs it and leave a document valid under the platform's own spec (platform_specs.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from platform_specs import (
    student_view,
    validate_autolab,
    validate_coderunner,
    validate_gradescope,
    validate_prairielearn,
)

from conftest import ROOT, free_port, require_binary

pytestmark = [pytest.mark.live]
EXAMPLES = ROOT / "examples"
DEADLINE = 4  # seconds, for the down and slow cases
RIGHT = json.loads((EXAMPLES / "gradescope" / "sample_submission.json").read_text())
SIN_RIGHT = {"gradient_formulas": {"x": "cos(x**2)*2*x"}}
NEURON_FORMULAS = {"dLdw": "(sigmoid(w*x+b) - y)*x", "dLdb": "sigmoid(w*x+b) - y"}


@pytest.fixture(scope="module")
def slow_url():
    """A local HTTP server that holds every request for 30 s (or until the test ends) before answering 503."""
    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):
            release.wait(30)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


# The harnesses call `python3`: make it this interpreter (where gradsvc's dependencies are installed), as an
# autograder image that installed gradsvc would, not whatever python3 the machine has first on PATH.
PATH = os.pathsep.join((os.path.dirname(sys.executable), os.environ.get("PATH", "")))


def run(argv, url, cwd=ROOT, **env):
    start = time.monotonic()
    proc = subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PATH": PATH,
            "PYTHONPATH": str(ROOT),
            "GRADSVC_URL": url,
            "GRADSVC_DEADLINE": str(DEADLINE),
            **env,
        },
    )
    return proc, time.monotonic() - start


def typo(text: str) -> str:
    """The instructor's slip the issue names: `gradient.w` for `gradients.w` (or the formula and .x forms)."""
    for name in ("gradients.w", "gradient_formulas.w", "gradients.x"):
        if name in text:
            return text.replace(name, name.replace("s.", ".", 1), 1)
    raise AssertionError("no check name to misspell")


# --- Gradescope ---------------------------------------------------------------------------------------


def gradescope(tmp_path, url, submission, problem_text=None):
    root = tmp_path / "autograder"
    (root / "submission").mkdir(parents=True)
    source = root / "source"
    shutil.copytree(EXAMPLES / "gradescope", source)
    if problem_text is not None:
        (source / "problem.yaml").write_text(problem_text)
    if submission is not None:
        text = submission if isinstance(submission, str) else json.dumps(submission)
        (root / "submission" / "submission.json").write_text(text)
    proc, took = run(["bash", str(source / "run_autograder")], url, AUTOGRADER_ROOT=str(root))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((root / "results" / "results.json").read_text())
    validate_gradescope(results)
    return results, took, proc


def test_gradescope_right_partial_wrong(live_server, tmp_path):
    results, _, _ = gradescope(tmp_path / "right", live_server.url, RIGHT)
    assert results["score"] == 10 and results["extra_data"]["max_score"] == 10
    assert [t["number"] for t in results["tests"]] == ["1.1", "1.2", "1.3", "2.1", "3.1"]
    assert [t["name"] for t in results["tests"]][:3] == ["neuron: loss L", "neuron: dL/dw", "neuron: dL/db"]
    assert results["tests"][2]["visibility"] == "after_due_date"
    assert results["tests"][1]["tags"] == ["neuron", "chain-rule"]
    partial = {
        "neuron": {"loss": 6.7012, "gradients": {"w": 6.5}},
        "sin_square": {"gradient_formulas": {"x": "cos(x**2)"}},
        "mean_square": RIGHT["mean_square"],
    }
    results, _, _ = gradescope(tmp_path / "partial", live_server.url, partial)
    assert results["score"] == 3
    tests = {t["number"]: t for t in results["tests"]}
    assert "chain rule" in tests["1.2"]["output"] and "no answer given" in tests["1.3"]["output"]
    assert tests["1.2"]["extra_data"]["expected"] == pytest.approx(6.6918, abs=1e-4)
    assert "1 of 2 checks passed" in results["output"].split("\n")[0] or "2 of 4" in results["output"]
    wrong = {
        "neuron": {"loss": 1, "gradients": {"w": 1, "b": 1}},
        "sin_square": {"gradient_formulas": {"x": "x"}},
        "mean_square": {"gradients": {"x": [1, 1, 1]}},
    }
    results, _, _ = gradescope(tmp_path / "wrong", live_server.url, wrong)
    assert results["score"] == 0 and all(t["status"] == "failed" for t in results["tests"])


@pytest.mark.parametrize(
    "submission",
    [
        {**RIGHT, "neuron": {"loss": "six", "gradients": {"w": [1, [2]], "b": True}}},  # mistyped and misshaped
        {**RIGHT, "sin_square": {"gradient_formulas": {"x": "cos(x**2"}}},  # unparsable formula
        "{oops",
        '["a list"]',
        None,  # not JSON, not an object, no file
    ],
)
def test_gradescope_malformed_answers_are_failed_tests(live_server, tmp_path, submission):
    results, _, _ = gradescope(tmp_path, live_server.url, submission)
    assert len(results["tests"]) == 5 and results["score"] < 10
    failed = [t for t in results["tests"] if t["status"] == "failed"]
    assert failed and all(t["output"] for t in failed)


def test_gradescope_service_down_or_slow_writes_not_graded(tmp_path, slow_url):
    for name, url in [("down", f"http://127.0.0.1:{free_port()}"), ("slow", slow_url)]:
        results, took, _ = gradescope(tmp_path / name, url, RIGHT)
        assert results["score"] == 0 and results["tests"] == [] and "Not graded" in results["output"]
        assert results["extra_data"]["graded"] is False
        assert took < DEADLINE + 3  # the harness's own start-up included


def test_gradescope_instructor_typo_is_a_configuration_error(live_server, tmp_path):
    text = typo((EXAMPLES / "gradescope" / "problem.yaml").read_text())
    results, _, proc = gradescope(tmp_path, live_server.url, RIGHT, problem_text=text)
    assert results["tests"] == [] and "configuration error" in results["output"]
    assert "gradient.w" in results["extra_data"]["reason"] and "problem file error" in proc.stdout


# --- PrairieLearn -------------------------------------------------------------------------------------


def prairielearn(tmp_path, url, answers, seed=7, problem=None):
    root = tmp_path / "grade"
    (root / "data").mkdir(parents=True)
    shutil.copytree(EXAMPLES / "prairielearn" / "question" / "tests", root / "tests")
    if problem is not None:
        (root / "tests" / "problem.json").write_text(problem)
    grader = root / "serverFilesCourse" / "gradsvc_grader"
    shutil.copytree(EXAMPLES / "prairielearn", grader, ignore=shutil.ignore_patterns("question"))
    shutil.copytree(ROOT / "gradsvc", grader / "gradsvc", ignore=shutil.ignore_patterns("__pycache__"))
    data = {"submitted_answers": answers, "variant_seed": seed, "params": {}}
    (root / "data" / "data.json").write_text(json.dumps(data))
    proc, took = run(["bash", str(grader / "run.sh")], url, GRADE_ROOT=str(root), PYTHONPATH="")
    assert proc.returncode == 0, proc.stderr  # PrairieLearn reads results.json only after exit 0
    (root / "job.log").write_text(proc.stdout + proc.stderr)  # the grading job's log: staff see it, students not
    results = json.loads((root / "results" / "results.json").read_text())
    validate_prairielearn(results)
    return results, took


def test_prairielearn_right_partial_wrong_and_variants(live_server, tmp_path):
    results, _ = prairielearn(tmp_path / "right", live_server.url, NEURON_FORMULAS)
    assert results["gradable"] is True and results["score"] == 1.0
    assert [t["name"] for t in results["tests"]] == ["1.1 dL/dw", "1.2 dL/db"]
    partial = {**NEURON_FORMULAS, "dLdb": "sigmoid(w*x+b)"}
    results, _ = prairielearn(tmp_path / "partial", live_server.url, partial)
    assert results["score"] == pytest.approx(2 / 3) and "dy_pred/dz" in results["tests"][1]["message"]
    other, _ = prairielearn(tmp_path / "other", live_server.url, partial, seed=8)
    assert other["tests"][1]["message"] != results["tests"][1]["message"]  # another variant, other points
    results, _ = prairielearn(tmp_path / "wrong", live_server.url, {"dLdw": "x", "dLdb": "w"})
    assert results["gradable"] is True and results["score"] == 0.0


def test_prairielearn_format_errors_are_not_gradable_and_missing_answers_fail(live_server, tmp_path):
    results, _ = prairielearn(tmp_path / "unparsable", live_server.url, {"dLdw": "(sigmoid(w*x+b) - y", "dLdb": "1"})
    assert results["gradable"] is False and "cannot be read" in results["format_errors"][0]
    results, _ = prairielearn(tmp_path / "mistyped", live_server.url, {"dLdw": 3, "dLdb": ["x"]})
    assert results["gradable"] is False and len(results["format_errors"]) == 2
    results, _ = prairielearn(tmp_path / "missing", live_server.url, {"dLdw": NEURON_FORMULAS["dLdw"]})
    assert results["gradable"] is True and results["score"] == pytest.approx(2 / 3)
    assert "no answer given" in results["tests"][1]["message"]
    problem = json.loads((EXAMPLES / "prairielearn" / "question" / "tests" / "problem.json").read_text())
    problem["format_errors"] = "failed_test"  # the per-problem switch: charge the attempt instead
    results, _ = prairielearn(
        tmp_path / "charged", live_server.url, {"dLdw": "(", "dLdb": "1"}, problem=json.dumps(problem)
    )
    assert results["gradable"] is True and "cannot be read" in results["tests"][0]["message"]


def test_prairielearn_down_slow_and_typo_are_not_gradable(live_server, tmp_path, slow_url):
    for name, url in [("down", f"http://127.0.0.1:{free_port()}"), ("slow", slow_url)]:
        results, took = prairielearn(tmp_path / name, url, NEURON_FORMULAS)
        assert results["gradable"] is False and "Not graded" in results["message"]
        assert took < DEADLINE + 3
    text = typo((EXAMPLES / "prairielearn" / "question" / "tests" / "problem.json").read_text())
    results, _ = prairielearn(tmp_path / "typo", live_server.url, NEURON_FORMULAS, problem=text)
    assert results["gradable"] is False and "configuration error" in results["message"]
    assert "gradient_formula.w" not in json.dumps(results)  # staff details: in the job's log, not for students
    assert "gradient_formula.w" in (tmp_path / "typo" / "grade" / "job.log").read_text()


# --- Autolab ------------------------------------------------------------------------------------------


def autolab(tmp_path, url, handin, problem_text=None):
    """Autolab's steps (docs/lab.md): handin + autograde.tar + autograde-Makefile as Makefile, then `make`."""
    lab = tmp_path / "lab"
    shutil.copytree(EXAMPLES / "autolab", lab)
    if problem_text is not None:
        (lab / "problem.json").write_text(problem_text)
    box = tmp_path / "box"
    box.mkdir()
    subprocess.run(
        ["bash", str(lab / "make_autograde_tar.sh"), str(box / "autograde.tar")],
        check=True,
        capture_output=True,
        timeout=30,
        env={**os.environ, "GRADSVC_REPO": str(ROOT)},
    )
    shutil.copy(lab / "autograde-Makefile", box / "Makefile")
    if handin is not None:
        (box / "answers.json").write_text(handin if isinstance(handin, str) else json.dumps(handin))
    proc, took = run(["make", "-s"], url, cwd=box, PYTHONPATH="")
    assert proc.returncode == 0, proc.stderr
    feedback, autoresult = validate_autolab(proc.stdout)
    return feedback, autoresult, proc.stdout, took


def test_autolab_right_partial_malformed(live_server, tmp_path):
    require_binary("make", package="make")
    answers = json.loads((EXAMPLES / "autolab" / "answers.json").read_text())
    feedback, autoresult, _, _ = autolab(tmp_path / "right", live_server.url, answers)
    assert autoresult == {"scores": {"neuron": 5, "sin_square": 3}, "scoreboard": [8, 5, 3]}
    assert all(row["passed"] for stage in feedback["stages"] for row in feedback[stage].values())
    partial = {
        "neuron": {"loss": 6.7012, "gradients": {"w": "six", "b": 0.9988}},
        "sin_square": {"gradient_formulas": {"x": "cos(x**2"}},
    }
    feedback, autoresult, _, _ = autolab(tmp_path / "partial", live_server.url, partial)
    assert autoresult["scores"] == {"neuron": 3, "sin_square": 0}
    hints = [row.get("hint", "") for stage in feedback["stages"] for row in feedback[stage].values()]
    assert any("'six' is not a number" in h for h in hints) and any("cannot be read" in h for h in hints)
    _, autoresult, _, _ = autolab(tmp_path / "garbage", live_server.url, "{oops")
    assert autoresult["scores"] == {"neuron": 0, "sin_square": 0}


def test_autolab_down_slow_typo(live_server, tmp_path, slow_url):
    require_binary("make", package="make")
    answers = json.loads((EXAMPLES / "autolab" / "answers.json").read_text())
    for name, url in [("down", f"http://127.0.0.1:{free_port()}"), ("slow", slow_url)]:
        feedback, autoresult, _, took = autolab(tmp_path / name, url, answers)
        assert autoresult["scores"] == {"neuron": 0, "sin_square": 0} and feedback["stages"] == ["Not graded"]
        assert took < DEADLINE + 3
    text = typo((EXAMPLES / "autolab" / "problem.json").read_text())
    feedback, autoresult, stdout, _ = autolab(tmp_path / "typo", live_server.url, answers, problem_text=text)
    assert autoresult["scores"] == {"neuron": 0, "sin_square": 0} and "configuration error" in stdout


# --- CodeRunner ---------------------------------------------------------------------------------------


def coderunner(tmp_path, url, student_answer: str, problem_text=None):
    """What Jobe runs: the combinator template with STUDENT_ANSWER substituted (Twig's e('py') escaping), in a
    directory with the question's support file problem.json; gradsvc on the PYTHONPATH."""
    tmp_path.mkdir(parents=True)
    escaped = student_answer.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    source = (EXAMPLES / "coderunner" / "template.py").read_text().replace("{{ STUDENT_ANSWER | e('py') }}", escaped)
    (tmp_path / "prog.py").write_text(source)
    shutil.copy(EXAMPLES / "coderunner" / "problem.json", tmp_path / "problem.json")
    if problem_text is not None:
        (tmp_path / "problem.json").write_text(problem_text)
    proc, took = run([sys.executable, "prog.py"], url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return validate_coderunner(proc.stdout), took


def test_coderunner_right_partial_malformed(live_server, tmp_path):
    doc, _ = coderunner(tmp_path / "right", live_server.url, json.dumps(NEURON_FORMULAS))
    assert doc["fraction"] == 1.0 and [r[0] for r in doc["testresults"][1:]] == [True, True]
    partial = json.dumps({**NEURON_FORMULAS, "dLdb": "sigmoid(w*x+b)"})
    doc, _ = coderunner(tmp_path / "partial", live_server.url, partial)
    assert doc["fraction"] == pytest.approx(2 / 3) and "2 checks" in doc["prologuehtml"]
    doc, _ = coderunner(tmp_path / "unparsable", live_server.url, json.dumps({"dLdw": "x*(", "dLdb": 2}))
    assert doc["fraction"] == 0 and "cannot be read" in doc["testresults"][1][4]
    doc, _ = coderunner(tmp_path / "notjson", live_server.url, "sigmoid(w*x+b) - y")
    assert doc["fraction"] == 0 and "could not be read" in doc["testresults"][1][4]


def test_coderunner_down_slow_typo(live_server, tmp_path, slow_url):
    for name, url in [("down", f"http://127.0.0.1:{free_port()}"), ("slow", slow_url)]:
        doc, took = coderunner(tmp_path / name, url, json.dumps(NEURON_FORMULAS))
        assert doc["fraction"] == 0 and "Not graded" in doc["prologuehtml"] and doc["instructorhtml"]
        assert took < DEADLINE + 3
    text = typo((EXAMPLES / "coderunner" / "problem.json").read_text())
    doc, _ = coderunner(tmp_path / "typo", live_server.url, json.dumps(NEURON_FORMULAS), problem_text=text)
    assert "configuration error" in doc["prologuehtml"] and "gradient_formula.w" in doc["instructorhtml"]


# --- GitHub Classroom: exit-code grading --------------------------------------------------------------


def test_github_classroom_workflow_runs_gradsvc_check(live_server, tmp_path):
    """classroom-resources/autograding-command-grader: a test passes when its command exits 0."""
    workflow = yaml.safe_load((EXAMPLES / "github-classroom" / ".github" / "workflows" / "classroom.yml").read_text())
    steps = workflow["jobs"]["run-autograding-tests"]["steps"]
    grader = next(s for s in steps if s.get("uses", "").startswith("classroom-resources/autograding-command-grader"))
    command = grader["with"]["command"]
    assert "gradsvc check submission.json" in command
    template = json.loads((EXAMPLES / "github-classroom" / "submission.json").read_text())
    argv = [sys.executable, "-m", "gradsvc", "check", "submission.json", "--url", live_server.url, "--retries", "0"]
    for submission, code in [
        ({}, 1),
        ({"loss": 6.7012, "gradients": {"w": 6.6918, "b": 0.9988}}, 0),
        ({"loss": 6.7012, "gradients": {"w": 6.5, "b": 0.9988}}, 1),
    ]:
        (tmp_path / "submission.json").write_text(json.dumps({**template, "submission": submission}))
        proc, _ = run(argv, live_server.url, cwd=tmp_path)
        assert proc.returncode == code, proc.stderr


# --- hidden checks: never in what a student sees ------------------------------------------------------

HIDDEN_PROBLEM = {
    "problems": [
        {
            "key": "mean_square",
            "model": {"kind": "expression", "formula": "mean(x**2)"},
            "inputs": {"x": [1.0, 2.0, 3.0]},
            "checks": {
                "gradients.x": {"points": 2, "title": "d mean(x**2) / dx"},
                "loss": {"points": 3, "title": "SECRET-loss-check", "visibility": "hidden"},
                "intermediates.x ** 2": {"points": 1, "title": "LATER-square", "visibility": "after_due_date"},
            },
        }
    ],
}


@pytest.mark.parametrize("platform", ["gradescope", "prairielearn", "autolab", "coderunner"])
def test_hidden_checks_are_not_shown(live_server, tmp_path, platform):
    problem, answers, out = tmp_path / "problem.json", tmp_path / "answers.json", tmp_path / "out" / "doc"
    problem.write_text(json.dumps(HIDDEN_PROBLEM))
    answered = {"mean_square": {"gradients": {"x": [0.6667, 1.3333, 2.0]}, "loss": 1.0}}
    answers.write_text(json.dumps({"submitted_answers": answered} if platform == "prairielearn" else answered))
    proc, _ = run(
        [
            sys.executable,
            "-m",
            "gradsvc",
            "grade",
            "--platform",
            platform,
            "--problem",
            str(problem),
            "--answers",
            str(answers),
            "--out",
            str(out),
        ],
        live_server.url,
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    doc = {
        "gradescope": lambda: json.loads(text),
        "prairielearn": lambda: json.loads(text),
        "autolab": lambda: text,
        "coderunner": lambda: json.loads(text),
    }[platform]()
    {
        "gradescope": validate_gradescope,
        "prairielearn": validate_prairielearn,
        "autolab": validate_autolab,
        "coderunner": validate_coderunner,
    }[platform](doc if platform != "coderunner" else text)
    seen = student_view(platform, doc)
    for secret in ("SECRET", "LATER", "4.66", "1.2 ", "1.3 ", "of 3 checks", "of 6 points", "of 2 checks"):
        assert secret not in seen, (secret, seen)
    assert "1 of 1 checks passed" in seen or platform == "autolab"
    if platform == "gradescope":  # Gradescope hides them itself: they are there, with their visibility
        assert [t["visibility"] for t in doc["tests"]] == ["visible", "after_due_date", "hidden"]
        assert doc["score"] == 2  # the wrong hidden loss costs its points, silently
