"""/v1/grade's answers priced for depth as /v1/check's and /v1/batch's are (a fifth audit): 50 problems of 41 answers
nested 1000 deep held a worker to the 10 s deadline, and a file refused with a 422 still walked its answers."""

from __future__ import annotations

import json  # not orjson to send the bodies: orjson writes at most 254 levels

import pytest

import service.problems as problems_module
from schemas.problems import GradeRequestSchema
from service.engine import cost
from service.engine.errors import LimitExceeded
from service.engine.limits import Limits

LIMITS = Limits()
PROBLEM = "application/problem+json"
N = 40
FORMULA = "+".join(f"x{i}" for i in range(N))
LEVEL_PRICE = (900 - LIMITS.max_tensor_dims - 1) * cost.ANSWER_LEVEL_BYTES  # one answer nested 900 deep


def nested(depth: int, leaf) -> list:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def grade_body(problems: int, depth: int, flat: bool = False) -> dict:
    """`problems` problems of f = x0 + ... + x39 checking the loss and 40 gradients, every answer nested `depth`
    deep: under each problem's key, or (`flat`) by platform name at the top level."""
    answer = nested(depth, 1.0)
    checks = {"loss": {}, **{f"gradients.x{i}": {} for i in range(N)}}
    file, answers = [], {}
    for p in range(problems):
        named = {name: {"answer": f"p{p}_{name.replace('.', '_')}"} if flat else {} for name in checks}
        file.append({"key": f"p{p}", "model": {"kind": "expression", "formula": FORMULA}, "checks": named})
        file[-1]["inputs"] = {f"x{i}": 1.0 for i in range(N)}
        if flat:
            answers.update({f"p{p}_{name.replace('.', '_')}": answer for name in checks})
        else:
            answers[f"p{p}"] = {"loss": answer, "gradients": {f"x{i}": answer for i in range(N)}}
    return {"problem": {"problems": file}, "answers": answers}


def post(client, body: dict):
    return client.post("/v1/grade", data=json.dumps(body), content_type="application/json")


@pytest.mark.parametrize("flat", [False, True], ids=["by-problem", "by-platform-name"])
def test_deep_answers_are_priced_before_any_is_read(client, monkeypatch, flat):
    """4 problems x 41 answers 900 deep (164 answers: ~1 s of walks) are over the budget at ANSWER_LEVEL_BYTES a
    level past max_tensor_dims + 1: a 413 naming `deep answers`, before any answer is read (was a 200)."""
    read = []
    monkeypatch.setattr(problems_module, "_read_answer", lambda *a, **k: read.append(a[0]) or (None, "read"))
    response = post(client, grade_body(4, 900, flat))
    assert response.status_code == 413 and response.mimetype == PROBLEM, response.data[:300]
    breakdown = response.json["limit"]["breakdown"]
    assert breakdown["deep answers"] >= LEVEL_PRICE  # counted until over the budget (levels_past stops there)
    assert read == []


def test_deep_answers_within_the_budget_are_graded_as_before(client):
    """One problem's 41 answers 900 deep fit the budget: graded, each a wrong-shape failed check with its summary."""
    response = post(client, grade_body(1, 900))
    assert response.status_code == 200, response.data[:300]
    checks = response.json["problems"][0]["checks"]
    assert len(checks) == N + 1 and not any(c["passed"] for c in checks)
    assert all("nested 900 deep" in c["actual_summary"] for c in checks)
    shallow = post(client, grade_body(1, LIMITS.max_tensor_dims + 1))  # a tensor's depth: not a deep answer
    assert shallow.status_code == 200


def test_a_file_refused_for_a_misnamed_check_reads_no_answer_of_it(client, monkeypatch):
    """A check naming nothing makes the file a 422: its answer is not read, nor any answer of a later problem
    (the 422 at 900 deep took 2.6-3.8 s of walks)."""
    body = grade_body(3, 900)
    body["problem"]["problems"][0]["checks"]["gradients.nope"] = {}
    body["answers"]["p0"]["gradients"]["nope"] = nested(900, 1.0)
    read = []
    real = problems_module._read_answer
    monkeypatch.setattr(problems_module, "_read_answer", lambda *a, **k: read.append(a[0]) or real(*a, **k))
    response = post(client, body)
    assert response.status_code == 422 and "gradients.nope" in response.json["detail"], response.data[:300]
    assert "gradients.nope" not in read and len(read) == N + 1  # the first problem's own checks only


def test_a_typed_text_nested_past_a_tensor_is_priced_before_it_is_walked():
    """A text answer JSON reads into lists nested 900 deep is priced as the same list sent as JSON (json.loads reads
    about 990 levels; 200,000 characters of such texts were ~0.5 s of walks): over the budget, a 413."""
    problem = {"key": "q", "model": {"kind": "expression", "formula": "x**2"}, "inputs": {"x": 0.25}}
    problem["checks"] = {"gradients.x": {"answer": "dfdx"}}

    def grade(answer, budget: int):
        body = GradeRequestSchema().load({"problem": problem, "answers": {"dfdx": answer}})
        return problems_module.grade_file(body, Limits(max_request_bytes=budget))

    text = "[" * 900 + "0.5" + "]" * 900
    assert grade("0.5", LEVEL_PRICE)["score"] == 1.0  # the problem fits this budget, with no deep answer...
    with pytest.raises(LimitExceeded) as refused:  # ...not with one nested 900 deep, sent as text (was graded)
        grade(text, LEVEL_PRICE)
    assert "deep answers" in refused.value.breakdown
    with pytest.raises(LimitExceeded):  # as the same list sent as JSON
        grade(nested(900, 0.5), LEVEL_PRICE)
    check = grade(text, 2 * LEVEL_PRICE)["problems"][0]["checks"][0]
    assert "nested 900 deep" in check["actual_summary"] and not check["format_error"]
