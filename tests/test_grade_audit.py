"""Audit findings on grading (intermediates' spellings, exit codes, platform renderings, answers typed as text)."""

from __future__ import annotations

import json

import pytest
import requests

SIN = {"model": {"kind": "expression", "formula": "sin(x**2)"}, "inputs": {"x": 3}}


# --- an intermediate's answer in any spelling that parses to it, with checks too ------------------------------------


@pytest.mark.live
@pytest.mark.parametrize(("check", "answer"), [("x**2", "x ** 2"), ("x ** 2", "x**2"), ("(x ** 2)", "((x)**2)")])
def test_a_problem_files_intermediate_answer_in_another_spelling_is_graded(live_server, check, answer):
    """Audit F1: a check of `intermediates.x**2` with the answer keyed "x ** 2" (or the reverse) was "no answer
    given", 0 points: the answer was looked up by the exact key. It is matched by parse now, as without checks."""
    problem = {**SIN, "checks": {f"intermediates.{check}": {"points": 1, "title": "x squared"}}}
    body = {"problem": problem, "answers": {"intermediates": {answer: 9}}}
    response = requests.post(live_server.url + "/v1/grade", json=body, timeout=30)
    assert response.status_code == 200, response.text[:300]
    [graded] = response.json()["problems"][0]["checks"]
    assert graded["passed"] and graded["points"] == 1, graded["message"]
    wrong = {"problem": problem, "answers": {"intermediates": {answer: 8}}}
    [failed] = requests.post(live_server.url + "/v1/grade", json=wrong, timeout=30).json()["problems"][0]["checks"]
    assert not failed["passed"] and "no answer given" not in failed["message"]


@pytest.mark.live
@pytest.mark.parametrize(("check", "answer"), [("x**2", "x ** 2"), ("x ** 2", "(x**2)")])
def test_a_checks_intermediate_answer_in_another_spelling_is_graded(live_server, check, answer):
    """Audit F1 on /v1/check with `checks`: graded, and no "answer not graded" warning about the answer it took."""
    body = {**SIN, "checks": {f"intermediates.{check}": {"points": 2}}, "submission": {"intermediates": {answer: 9}}}
    response = requests.post(live_server.url + "/v1/check", json=body, timeout=30)
    assert response.status_code == 200, response.text[:300]
    result = response.json()
    assert result["score"] == 2 and result["checks"][0]["passed"], result["checks"][0]["message"]
    assert result["warnings"] == []
    other = {**body, "submission": {"intermediates": {answer: 9, "x**3": 1}}}
    assert requests.post(live_server.url + "/v1/check", json=other, timeout=30).json()["warnings"] == [
        "intermediates.x**3: answer not graded (not among the request's checks)"
    ]


def test_an_exact_key_is_taken_first_and_no_key_is_parsed_for_it(client, monkeypatch):
    """The common case costs nothing more: an answer under the check's own key is taken without parsing any key;
    another check's own key is never read as a spelling of this one."""
    from service.engine import check as check_module

    parsed = []
    real = check_module.canonical_text
    monkeypatch.setattr(check_module, "canonical_text", lambda text, limits: parsed.append(text) or real(text, limits))
    checks = {"intermediates.x ** 2": {"points": 1}, "loss": {"points": 1}}
    body = {**SIN, "checks": checks, "submission": {"loss": 0.412118, "intermediates": {"x ** 2": 9, "x*x": 1}}}
    response = client.post("/v1/check", json=body)
    assert response.status_code == 200 and response.json["score"] == 2 and parsed == []
    problem = {**SIN, "checks": checks}
    answers = {"loss": 0.412118, "intermediates": {"(x)**2": 9, "x ** 2": 9, "x*x": 1}}
    response = client.post("/v1/grade", json={"problem": problem, "answers": answers})
    assert response.status_code == 200 and response.json["score"] == 2 and parsed == []


def test_a_students_keys_past_their_allowance_are_a_failed_check_not_a_413(client, monkeypatch):
    """Each submitted key read as a spelling is charged to the request's allowance for them (cost.SPELLING_READ_BYTES)
    and read once; past it the check says so, without budget numbers, and no other key is read: the student's keys
    never make the instructor's file a 413."""
    from service.engine import check as check_module
    from service.engine import cost

    parsed = []
    real = check_module.canonical_text
    monkeypatch.setattr(check_module, "canonical_text", lambda text, limits: parsed.append(text) or real(text, limits))
    keys = {"+".join(f"x*{k + n}" for k in range(30)): 0.0 for n in range(4000)}
    problem = {"model": {"kind": "expression", "formula": "sin(x) * cos(x)"}, "inputs": {"x": 0.5}}
    problem["checks"] = {"intermediates.sin(x)": {"points": 1}, "intermediates.(cos(x))": {"points": 1}}
    response = client.post("/v1/grade", json={"problem": problem, "answers": {"intermediates": keys}})
    assert response.status_code == 200, response.json
    checks = response.json["problems"][0]["checks"]
    assert all("no answer given" in c["message"] and "there were too many" in c["message"] for c in checks)
    assert not any("MiB" in c["message"] for c in checks)
    assert 0 < len(parsed) < len(keys) and len(set(parsed)) == len(parsed)
    price = cost.intermediate_key_estimate(next(iter(keys))).total
    assert len(parsed) * price <= cost.SPELLING_READ_BYTES


JUNK = {f"q{n:04d}": 0.0 for n in range(30_000)}  # a third audit's drain: short keys, each read as a spelling


def test_a_students_junk_keys_take_nothing_from_another_problem(client):
    """Charged to the budget, 30,000 junk keys in problem p0 used it up and p1's own check keys were refused: the
    whole file a 413 ("too large to grade"). Now p1 is graded, p0's checks fail with the reason."""
    spelled = {"intermediates.x ** 2": {"points": 1}}
    problems = [{**SIN, "key": "p0", "checks": spelled}, {**SIN, "key": "p1", "checks": {"intermediates.x**2": {}}}]
    answers = {"p0": {"intermediates": JUNK}, "p1": {"intermediates": {"x**2": 9.0}}}
    response = client.post("/v1/grade", json={"problem": {"problems": problems}, "answers": answers})
    assert response.status_code == 200, response.json
    p0, p1 = response.json["problems"]
    assert p1["score"] == p1["max_score"] == 1
    assert "no answer given" in p0["checks"][0]["message"]


def test_a_students_junk_keys_take_nothing_from_a_later_job(client):
    """The same drain in a batch: after 25 jobs of junk keys, an honest job's exact answers scored 0 ("there is no
    intermediate named 'x**2'"). Its check keys are the instructor's, charged to the budget as before."""
    checks = {"intermediates.x**2": {"points": 1}, "loss": {"points": 1}}
    junk = {
        "check": {**SIN, "checks": checks, "submission": {"loss": 0.0, "intermediates": dict(list(JUNK.items())[:128])}}
    }
    honest = {"check": {**SIN, "checks": checks, "submission": {"loss": 0.412118, "intermediates": {"x**2": 9.0}}}}
    response = client.post("/v1/batch", json={"jobs": [junk] * 25 + [honest]})
    assert response.status_code == 200, response.json
    assert response.json["results"][-1]["score"] == 2, response.json["results"][-1]


def test_a_students_junk_keys_take_nothing_from_a_later_jobs_spelling(client):
    """A final audit: the spelling allowance was one per request, so 12 jobs of 127 junk keys spent it and a later
    honest job's answer under another spelling ("x**2" for the check's "x ** 2") scored 0. Each job has its share;
    the junk keys (distinct in each job: a key read once is free for the rest) drain their own and the pool."""
    checks = {"intermediates.x ** 2": {"points": 1}}
    keys = [{f"({'x+' * 20}{1000 * j + n})": 0.0 for n in range(127)} for j in range(12)]
    junk = [{"check": {**SIN, "checks": checks, "submission": {"intermediates": own}}} for own in keys]
    honest = {"check": {**SIN, "checks": checks, "submission": {"intermediates": {"x**2": 9.0}}}}
    response = client.post("/v1/batch", json={"jobs": [*junk, honest]})
    assert response.status_code == 200, response.json
    results = response.json["results"]
    assert results[-1]["score"] == 1, results[-1]["checks"][0]["message"]
    assert "there were too many" in results[-2]["checks"][0]["message"]  # the share and the pool spent


def test_one_answer_answers_one_check(client):
    """A third audit: checks `intermediates.x**2` (1 point) and `intermediates.(x ** 2)` (5 points) and one answer
    under a third spelling gave 6 points on /v1/check (a problem file refuses the two checks: a 422)."""
    checks = {"intermediates.x**2": {"points": 1}, "intermediates.(x ** 2)": {"points": 5}}
    body = {**SIN, "checks": checks, "submission": {"intermediates": {"x ** 2": 9.0}}}
    result = client.post("/v1/check", json=body).json
    assert result["score"] in (1, 5) and sum(c["passed"] for c in result["checks"]) == 1


@pytest.mark.live
def test_two_spellings_of_one_intermediate_are_the_files_error_in_grade_and_lint(live_server, tmp_path):
    """Two checks of one intermediate ("x**2", "x ** 2") would share one answer: a 422 naming the second, which
    `gradsvc problem lint` reports as it does a misnamed check; one check in any spelling lints ok."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    twice = {**SIN, "checks": {"intermediates.x**2": {}, "intermediates.x ** 2": {}}}
    response = requests.post(live_server.url + "/v1/grade", json={"problem": twice, "answers": {}}, timeout=30)
    assert response.status_code == 422 and "names the same intermediate as intermediates.x**2" in response.text
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def lint(problem: dict) -> subprocess.CompletedProcess:
        (tmp_path / "p.json").write_text(json.dumps(problem))
        argv = [sys.executable, "-m", "gradsvc", "problem", "lint", str(tmp_path / "p.json"), "--url", live_server.url]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)

    bad = lint(twice)
    assert bad.returncode == 1 and "names the same intermediate" in bad.stderr, bad.stderr
    for spelling in ("x**2", "(x ** 2)"):
        ok = lint({**SIN, "checks": {f"intermediates.{spelling}": {}}})
        assert ok.returncode == 0 and "ok" in ok.stdout, ok.stderr


# --- `gradsvc check` exits on the whole grade, whatever the format -------------------------------------------------

HIDDEN_FAILS = {
    "model": {"kind": "neuron", "loss": "bce"},
    "inputs": {"x": 6.7, "y": 0.0, "w": 1.0, "b": 0.0},
    "checks": {"loss": {"points": 1}, "gradients.w": {"points": 2, "visibility": "hidden"}},
    "submission": {"loss": 6.7012, "gradients": {"w": 0}},
}


@pytest.mark.live
def test_gradsvc_check_exits_1_on_a_failed_hidden_check_in_every_format(live_server, tmp_path):
    """Audit F2: `--format prairielearn` exited 0 with a hidden check failed (its document leaves hidden tests out);
    json and gradescope exited 1. The service's Grade-Passed header is the whole grade's verdict."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for submission, code in ((HIDDEN_FAILS["submission"], 1), ({"loss": 6.7012, "gradients": {"w": 6.6918}}, 0)):
        (tmp_path / "c.json").write_text(json.dumps({**HIDDEN_FAILS, "submission": submission}))
        for fmt in ("json", "gradescope", "prairielearn"):
            argv = [sys.executable, "-m", "gradsvc", "--url", live_server.url, "check", str(tmp_path / "c.json")]
            proc = subprocess.run(
                [*argv, "--format", fmt], capture_output=True, text=True, timeout=60, env=env, check=False
            )
            assert proc.returncode == code, (fmt, proc.returncode, proc.stderr)
    response = requests.post(live_server.url + "/v1/check?format=prairielearn", json=HIDDEN_FAILS, timeout=30)
    assert response.headers["Grade-Passed"] == "false" and len(response.json()["tests"]) == 1


# --- Autolab: one stage per problem, whatever their titles ---------------------------------------------------------


@pytest.mark.live
def test_autolab_keeps_every_problems_feedback_when_titles_repeat(live_server, tmp_path):
    """Audit F3: two problems titled "Part 1" shared one stage key, the second's rows overwrote the first's and
    "stages" listed the title twice. Each is "Part 1 (<key>)" now; validate_autolab refuses duplicate stages."""

    from platform_specs import validate_autolab
    from test_grade import grade_files

    def part(key: str, title: str | None, formula: str) -> dict:
        problem = {"key": key, "model": {"kind": "expression", "formula": formula}, "inputs": {"x": 2}}
        problem["checks"] = {"gradients.x": {"points": 1, "title": "dx"}}
        return {**problem, "title": title} if title else problem

    problems = [
        part("a", "Part 1", "x**2"),
        part("b", "Part 1", "x**3"),
        part("c", "stages", "x"),
        part("d", None, "x"),
    ]
    answers = {"a": {"gradients": {"x": 4}}, "b": {"gradients": {"x": 0}}, "c": {"gradients": {"x": 1}}}
    _, text = grade_files(tmp_path, "autolab", json.dumps(answers), json.dumps({"problems": problems}), live_server.url)
    feedback, autoresult = validate_autolab(text)
    assert feedback["stages"] == ["Part 1 (a)", "Part 1 (b)", "stages (c)", "d"]
    assert feedback["Part 1 (a)"] == {"1.1 dx": {"passed": True}}
    assert feedback["Part 1 (b)"]["2.1 dx"]["passed"] is False and "no answer given" in feedback["d"]["4.1 dx"]["hint"]
    assert autoresult["scores"] == {"a": 1, "b": 0, "c": 1, "d": 0}
    with pytest.raises(AssertionError, match="duplicate stage names"):
        validate_autolab(json.dumps({"_presentation": "semantic", "stages": ["P", "P"], "P": {}}) + '\n{"scores": {}}')


# --- a visible message names no check its reader cannot see ---------------------------------------------------------

TWO_LAYER = {
    "key": "net",
    "title": "Two-layer net",
    "model": {
        "kind": "network",
        "layout": "cs231n",
        "layers": [{"type": "linear", "out_features": 3, "activation": "relu"}, {"type": "linear", "out_features": 2}],
        "loss": {"type": "softmax_cross_entropy"},
        "init": {"scheme": "numpy_legacy", "seed": 0, "std": 0.5},
        "generate": {"X": {"scheme": "numpy_legacy", "seed": 1, "shape": [4, 2]}},
    },
    "inputs": {"y": [0, 1, 1, 0]},
}
WRONG_W2 = [[-0.3169045698203178, 0.3169045698203178], [0.0, 0.0], [-0.31408555164880947, 0.31408555164880947]]


@pytest.mark.live
@pytest.mark.parametrize(
    ("z1", "a1", "named"),
    [
        ("hidden", None, False),  # audit F4: "the forward pass first goes wrong at Z1" in the visible dW2
        ("after_due_date", None, False),  # not released with dW2: not named either
        ("visible", None, True),
        ("hidden", "visible", False),  # A1 named first-wrong would say the hidden Z1 before it is right
    ],
)
def test_a_visible_message_names_no_hidden_checks_verdict(live_server, z1, a1, named):
    """A gradient's message names the first wrong layer only when every intermediate check it speaks of (the first
    wrong one and those before it, "right") is visible, or released with it; in every format a student reads."""
    body = {k: v for k, v in TWO_LAYER.items() if k not in ("key", "title")}
    right = requests.post(
        live_server.url + "/v1/gradients", json={**body, "include": ["intermediates"]}, timeout=30
    ).json()
    z1_value = [[v + 0.5 for v in row] for row in right["intermediates"]["Z1"]["value"]]
    checks = {"gradients.W2": {"points": 2, "title": "dW2"}, "intermediates.Z1": {"points": 1, "visibility": z1}}
    answers = {"gradients": {"W2": WRONG_W2}, "intermediates": {"Z1": z1_value}}
    if a1:
        checks["intermediates.A1"] = {"points": 1, "visibility": a1}
        answers["intermediates"]["Z1"] = right["intermediates"]["Z1"]["value"]
        answers["intermediates"]["A1"] = [[v + 0.5 for v in row] for row in right["intermediates"]["A1"]["value"]]
    problem = {**TWO_LAYER, "checks": checks}
    for fmt in ("prairielearn", "gradescope", "coderunner", "autolab"):
        response = requests.post(
            f"{live_server.url}/v1/grade?format={fmt}", json={"problem": problem, "answers": answers}, timeout=30
        )
        assert response.status_code == 200, response.text[:300]
        text = json.dumps(response.json())
        assert ("first goes wrong at" in text) is named, (fmt, text[:2000])


@pytest.mark.parametrize("z1", [None, "[[1,2,3],"])  # not given; unreadable
def test_no_first_wrong_layer_is_named_past_an_intermediate_not_answered(client, z1):
    """A third audit: with Z1 missing (or unreadable) and A1 right, dW2's message said "the forward pass first goes
    wrong at Z1 ...; the intermediates before it are right". Where it first goes wrong is not known then."""
    body = {k: v for k, v in TWO_LAYER.items() if k not in ("key", "title")}
    right = client.post("/v1/gradients", json={**body, "include": ["intermediates"]}).json
    checks = {"gradients.W2": {"points": 2}, "intermediates.Z1": {"points": 1}, "intermediates.A1": {"points": 1}}
    answers = {"gradients": {"W2": WRONG_W2}, "intermediates": {"A1": right["intermediates"]["A1"]["value"]}}
    if z1 is not None:
        answers["intermediates"]["Z1"] = z1
    result = client.post("/v1/grade", json={"problem": {**TWO_LAYER, "checks": checks}, "answers": answers}).json
    assert "first goes wrong" not in json.dumps(result)
    wrong = {**answers, "intermediates": {**answers["intermediates"], "Z1": [[0.0] * 3] * 4}}
    named = client.post("/v1/grade", json={"problem": {**TWO_LAYER, "checks": checks}, "answers": wrong}).json
    assert "the forward pass first goes wrong at Z1" in json.dumps(named)  # a wrong Z1 is still named


# --- numbers typed as text ------------------------------------------------------------------------------------------

SQUARE = {
    "key": "q",
    "model": {"kind": "expression", "formula": "x**2"},
    "inputs": {"x": 0.25},
    "checks": {"gradients.x": {"points": 1, "title": "dfdx", "answer": "dfdx"}},
}
VECTOR = {
    "key": "v",
    "model": {"kind": "expression", "formula": "sum(x*x)"},
    "inputs": {"x": [0.25, -1.0]},
    "checks": {"gradients.x": {"points": 1, "title": "dx", "answer": "dx"}},
}


@pytest.mark.live
@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (SQUARE, ".5"),
        (SQUARE, "+0.5"),
        (SQUARE, " 5e-1 "),
        (SQUARE, "+.5E0"),
        (VECTOR, "[.5, -2.]"),
        (VECTOR, "[+0.5,-2]"),
        (VECTOR, "[0.5, -2]"),
    ],
)
def test_numbers_typed_as_students_type_them_are_read(live_server, problem, text):
    """Audit F5: ".5" and "+0.5" were "not a number" (json.loads); plain decimals are read now, in lists too."""
    name = problem["checks"]["gradients.x"]["answer"]
    body = {"problem": problem, "answers": {name: text}}
    response = requests.post(live_server.url + "/v1/grade?format=prairielearn", json=body, timeout=30)
    assert response.status_code == 200, response.text[:300]
    result = response.json()
    assert result["gradable"] and result["score"] == 1.0, result


@pytest.mark.live
@pytest.mark.parametrize(
    "text",
    ["1_0", "infinity", "nan", "0x1", "[.5,]", "[.5 1]", "++.5", ". 5", "1e5e5", "[[.5]", "٠.٥", "０.５", "\x1c.5"],
)
def test_text_that_is_no_number_stays_a_format_error(live_server, text):
    """Python's float() reads "1_0", "infinity", "nan": a student's number is read by a strict pattern instead."""
    body = {"problem": SQUARE, "answers": {"dfdx": text}}
    response = requests.post(live_server.url + "/v1/grade?format=prairielearn", json=body, timeout=30)
    assert response.status_code == 200, response.text[:300]
    result = response.json()
    assert result["gradable"] is False and "is not a number or a list of numbers" in result["format_errors"][0]


@pytest.mark.live
@pytest.mark.parametrize("depth", [500, 1000, 5000])
@pytest.mark.parametrize("fmt", ["json", "prairielearn"])
def test_an_answer_text_nested_deeply_is_a_format_error_not_a_500(live_server, depth, fmt):
    """Audit repro_grade_500: text holding lists nested 1000 deep was json.loads's RecursionError, a 500 with a
    traceback. Past Python's parser it is a format error; within it, a mis-shaped answer graded wrong, as when sent
    as JSON."""
    problem = {**VECTOR, "checks": {"gradients.x": {"answer": "dx"}}}
    body = {"problem": problem, "answers": {"dx": "[" * depth + "]" * depth}}
    response = requests.post(f"{live_server.url}/v1/grade?format={fmt}", json=body, timeout=30)
    assert response.status_code == 200, response.text[:300]
    text = json.dumps(response.json())
    assert "Traceback" not in text and ("nested too deeply to read" in text or "wrong shape" in text), text[:500]
    if depth >= 1000:
        assert "nested too deeply to read" in text


@pytest.mark.live
@pytest.mark.parametrize("text", ["1" * 4301, "[" + "9" * 5000 + ", .5]", "-" + "7" * 30, ".5e" + "9" * 5000])
def test_a_typed_integer_of_any_length_is_read_not_a_500(live_server, text):
    """A second audit: past 4,300 digits int() raises (Python's limit on integer digits) where the typed-number
    reader called it after json.loads failed: a 500. Past 64 bits such an integer is a float (inf past its range),
    as orjson reads one in a body; the answer is graded, wrong."""
    body = {"problem": SQUARE, "answers": {"dfdx": text}}
    for fmt in ("json", "prairielearn"):
        response = requests.post(f"{live_server.url}/v1/grade?format={fmt}", json=body, timeout=30)
        assert response.status_code == 200, response.text[:300]
        assert "Traceback" not in response.text


def grade_texts_past_the_request_total(client, text: str) -> dict:
    """/v1/grade of enough problems, each answered by `text` (a typed vector of TYPED_CHARS // 3 numbers, at most
    TYPED_CHARS characters), to take the request past TYPED_READ_CHARS of typed text in all."""
    from service.problems import TYPED_CHARS, TYPED_READ_CHARS

    assert len(text) <= TYPED_CHARS
    vector = {"model": {"kind": "expression", "formula": "sum(x**2)"}, "inputs": {"x": [1.0] * (TYPED_CHARS // 3)}}
    n = TYPED_READ_CHARS // len(text) + 2
    problems = [{**vector, "key": f"p{i}", "checks": {"gradients.x": {}}} for i in range(n)]
    answers = {f"p{i}": {"gradients": {"x": text}} for i in range(n)}
    return client.post("/v1/grade", json={"problem": {"problems": problems}, "answers": answers}).json


def test_typed_texts_are_re_read_within_a_bound(client):
    """A third audit: 140 typed lists of 100,000 characters (14 MB) ran to the deadline in the Python tokenizer. A
    text is re-read up to 10,000 characters, and 200,000 in all per request; past that a format error says so."""
    from service.problems import TYPED_CHARS

    long = "[" + ",".join([".5"] * (TYPED_CHARS // 3)) + "]"  # under 10,000 characters, no JSON
    result = grade_texts_past_the_request_total(client, long)
    messages = [p["checks"][0]["message"] for p in result["problems"]]
    assert "as typed numbers" not in messages[0]
    assert "is not read as typed numbers: these answers hold more than 200000 characters" in messages[-1]
    over = {"problem": {**SQUARE}, "answers": {"dfdx": "." + "5" * TYPED_CHARS}}
    assert "too long to read as typed numbers" in json.dumps(client.post("/v1/grade", json=over).json)


def test_json_readable_texts_are_read_within_the_request_total(client):
    """A fourth audit: a text JSON reads skipped the typed-text bounds (json.loads first, the bounds only for the
    tokenizer after it): 8 MB of integers in one text took 1.2 s, the same numbers as a JSON list 0.45 s. Every text
    answer counts against the request's total, whichever reader reads it; the 10,000 characters a text bound only
    the tokenizer: a 600-number gradient typed as JSON text (12,317 characters) is read and graded (a fifth audit:
    holding JSON texts to it made that right answer a format error)."""
    from service.problems import TYPED_CHARS, TYPED_READ_CHARS

    long = json.dumps([1] * (TYPED_CHARS // 3))  # "[1, 1, ...]": JSON, under 10,000 characters
    result = grade_texts_past_the_request_total(client, long)
    messages = [p["checks"][0]["message"] for p in result["problems"]]
    assert "as typed numbers" not in messages[0] and not result["problems"][0]["checks"][0]["format_error"]
    assert "is not read as typed numbers: these answers hold more than 200000 characters" in messages[-1]
    x = [(-1) ** i * (i + 0.123456789) / 601 for i in range(600)]
    text = json.dumps([2 * v for v in x])
    assert TYPED_CHARS < len(text) < TYPED_READ_CHARS
    problem = {"key": "g", "model": {"kind": "expression", "formula": "sum(x**2)"}, "inputs": {"x": x}}
    right = {"problem": {**problem, "checks": {"gradients.x": {"points": 1}}}, "answers": {"gradients": {"x": text}}}
    result = client.post("/v1/grade", json=right).json
    assert (result["score"], result["max_score"], result["format_errors"]) == (1.0, 1.0, [])
    typed = "[" + ",".join([".5"] * 600) + "," + " " * TYPED_CHARS + ".5]"  # no JSON: the tokenizer's cap applies
    result = client.post("/v1/grade", json={**right, "answers": {"gradients": {"x": typed}}}).json
    assert "too long to read as typed numbers" in result["problems"][0]["checks"][0]["message"]
    short = {"problem": {**SQUARE}, "answers": {"dfdx": "0.5"}}  # short texts JSON reads are read as before
    assert client.post("/v1/grade", json=short).json["score"] == 1.0


@pytest.mark.live
def test_an_answer_of_objects_nested_deeply_is_described_not_a_500(live_server):
    """A second audit: the summary of an answer that cannot be echoed printed str() of each previewed item, and an
    object nested 990 deep overflowed Python's stack (a 500). Items that are no number are named by their kind."""
    problem = {**VECTOR, "checks": {"gradients.x": {"answer": "dx"}}}
    nested = '{"a":' * 980 + "{}" + "}" * 980  # written by hand: json.dumps recurses as deep as the object
    body = json.dumps({"problem": problem, "answers": {"dx": ["NESTED", None, True, "s", 1.5]}})
    body = body.replace('"NESTED"', nested)
    headers = {"Content-Type": "application/json"}
    response = requests.post(f"{live_server.url}/v1/grade", data=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text[:300]
    assert "[{…}, null, true, s, 1.5]" in json.dumps(response.json(), ensure_ascii=False)


# --- what the docs say of hidden checks is what happens ------------------------------------------------------------


def test_hidden_checks_count_in_the_score_as_the_openapi_document_says(client):
    """Audit F7: /v1/grade's OpenAPI description (and service/platforms.py) said hidden checks are "neither shown nor
    counted"; they count in the score on every platform. The description says so now, and a failed hidden check
    lowers the score of a document that does not show it."""
    import service.platforms

    description = client.get("/openapi.json").json["paths"]["/v1/grade"]["post"]["description"]
    for text in (description, service.platforms.__doc__):
        assert "nor counted" not in text and "count" in text.replace("\n", " ")
    assert "not shown in what the student\nreads" in description and "but count in the score" in description
    problem = {**SQUARE, "checks": {"loss": {"points": 1}, "gradients.x": {"points": 3, "visibility": "hidden"}}}
    body = {"problem": problem, "answers": {"loss": 0.0625, "gradients": {"x": 0}}}
    result = client.post("/v1/grade?format=prairielearn", json=body).json
    assert result["score"] == 0.25 and [t["name"] for t in result["tests"]] == ["1.1 f = x**2"]
    assert result["message"].endswith("other checks, not shown here, count in the score too")


# --- numbers and CodeRunner's Got column ----------------------------------------------------------------------------

NEURON = {"model": {"kind": "neuron", "loss": "bce"}, "inputs": {"x": 6.7, "y": 0.0, "w": 1.0, "b": 0.0}}


@pytest.mark.parametrize(
    ("released", "names"),
    [
        ([], ["1.1 loss L"]),
        (["after_due_date"], ["1.1 loss L", "1.2 dL/db"]),  # was 1.1, 1.3: the gap told of an unreleased check
        (["after_published"], ["1.1 loss L", "1.2 dL/dw"]),
        (["after_published", "after_due_date"], ["1.1 loss L", "1.2 dL/dw", "1.3 dL/db"]),
    ],
)
def test_tests_shown_are_numbered_without_gaps(client, released, names):
    """Audit F8: with after_due_date released and after_published not, PrairieLearn showed tests 1.1 and 1.3."""
    checks = {
        "loss": {"points": 1, "title": "loss L"},
        "gradients.w": {"points": 2, "title": "dL/dw", "visibility": "after_published"},
        "gradients.b": {"points": 2, "title": "dL/db", "visibility": "after_due_date"},
    }
    body = {
        "problem": {**NEURON, "checks": checks},
        "answers": {"loss": 6.7012, "gradients": {"w": 6.6918, "b": 0.9988}},
    }
    result = client.post("/v1/grade?format=prairielearn", json={**body, "released": released}).json
    assert [t["name"] for t in result["tests"]] == names


def test_a_problem_whose_checks_are_all_hidden_leaves_no_gap(client):
    """A third audit: a problem with only hidden checks kept its place's number, so students saw "1.1, 3.1"."""
    visible, hidden = {"loss": {"title": "loss L"}}, {"loss": {"title": "loss L", "visibility": "hidden"}}
    problems = [
        {**NEURON, "key": "a", "checks": visible},
        {**NEURON, "key": "b", "checks": hidden},
        {**NEURON, "key": "c", "checks": visible},
    ]
    answers = {key: {"loss": 6.7012} for key in "abc"}
    body = {"problem": {"problems": problems}, "answers": answers}
    result = client.post("/v1/grade?format=prairielearn", json=body).json
    assert [t["name"].split()[0] for t in result["tests"]] == ["1.1", "2.1"]
    everything = client.post("/v1/grade", json=body).json  # every check (staff's view): the hidden one last
    assert [p["checks"][0]["number"] for p in everything["problems"]] == ["1.1", "3.1", "2.1"]


@pytest.mark.parametrize(
    ("answer", "got"),
    [("abc", "'abc'"), (".5.5", "'.5.5'"), ([1, "a"], "2 value(s) in shape [2]: [1, a]"), ({"a": 1}, "an object")],
)
def test_coderunners_got_column_says_what_could_not_be_read(client, answer, got):
    """Audit F8: an answer that could not be read left CodeRunner's Got column empty."""
    from platform_specs import validate_coderunner

    body = {"problem": SQUARE, "answers": {"dfdx": answer}}
    response = client.post("/v1/grade?format=coderunner", json=body)
    assert response.status_code == 200, response.json
    validate_coderunner(json.dumps(response.json))
    header, row = response.json["testresults"]
    assert not row[0] and got in row[header.index("Got")], row
    unreadable = client.post("/v1/grade?format=coderunner", json={"problem": SQUARE, "answers": []}).json
    assert unreadable["testresults"][1][3] == "(could not be read)"


# --- PrairieLearn's 1 MB ---------------------------------------------------------------------------------------------


def many_failed_checks(
    problems: int, title: str = "Problem number {p} with a reasonably descriptive title", checks: int = 100
) -> dict:
    """Audit F9's file: `problems` problems of 100 checks each (d/da_i of a sum of squares), all answered wrong."""
    names = [f"a{i}" for i in range(checks)]
    formula = "+".join(f"({'+'.join(f'{n}*{n}' for n in names[k : k + 10])})" for k in range(0, checks, 10))
    problem_file = {
        "title": "Big",
        "problems": [
            {
                "key": f"p{p}",
                "title": title.format(p=p),
                "model": {"kind": "expression", "formula": formula},
                "inputs": {n: 0.5 + i / 100 for i, n in enumerate(names)},
                "checks": {
                    f"gradients.{n}": {"points": 1, "title": f"derivative of the sum of squares with respect to {n}"}
                    for n in names
                },
            }
            for p in range(problems)
        ],
    }
    answers = {f"p{p}": {"gradients": dict.fromkeys(names, 123.456)} for p in range(problems)}
    return {"problem": problem_file, "answers": answers}


@pytest.mark.live
@pytest.mark.parametrize("problems", [2, 25])
def test_prairielearn_results_stay_under_1_mb(live_server, problems):
    """Audit F9: 25 problems of 100 failed checks made a 1.65 MB results.json, which PrairieLearn refuses. Texts
    are cut to one length that fits now, and the message says so; a document that fits is left as it was."""
    from platform_specs import validate_prairielearn

    body = many_failed_checks(problems)
    response = requests.post(live_server.url + "/v1/grade?format=prairielearn", json=body, timeout=60)
    assert response.status_code == 200, response.text[:300]
    doc = response.json()
    validate_prairielearn(doc)
    assert doc["score"] == 0.0 and len(doc["tests"]) == 100 * problems
    cut = "to keep these results under PrairieLearn's 1 MB" in doc["message"]
    assert cut is (problems > 2)
    messages = [t["message"] for t in doc["tests"]]
    assert all(m.startswith("derivative of the sum of squares") for m in messages)
    assert all(m.endswith("…") for m in messages) is cut and len(json.dumps(doc)) < 1_000_000


def test_prairielearn_format_errors_stay_under_1_mb(client):
    """Not gradable: every check's format error is a line of `format_errors` and of `output`; cut alike."""
    from platform_specs import validate_prairielearn

    body = many_failed_checks(50, title="{p}" + "t" * 400, checks=50)
    for problem in body["problem"]["problems"]:
        for options in problem["checks"].values():
            options["title"] += " " + "long " * 25
    body["answers"] = {
        f"p{p}": {"gradients": dict.fromkeys([f"a{i}" for i in range(50)], "x" * 300)} for p in range(50)
    }
    response = client.post("/v1/grade?format=prairielearn", json=body)
    assert response.status_code == 200, response.json
    doc = response.json
    validate_prairielearn(doc)
    assert doc["gradable"] is False and len(doc["format_errors"]) == 2500 and doc["output"].endswith("…")
    assert doc["message"].endswith("to keep these results under PrairieLearn's 1 MB; the score counts every check.")


@pytest.mark.live
def test_gradsvc_grade_writes_prairielearns_big_results_under_1_mb(live_server, tmp_path):
    """The file on disk too: indented, audit F9's 950,000-byte document was 1.06 MB; past 1 MB it is written compact."""
    from platform_specs import validate_prairielearn
    from test_grade import grade_files

    body = many_failed_checks(25)
    data = json.dumps({"submitted_answers": body["answers"]})
    _, text = grade_files(tmp_path, "prairielearn", data, json.dumps(body["problem"]), live_server.url, "p.json")
    assert len(text.encode()) < 1_000_000
    validate_prairielearn(json.loads(text))
