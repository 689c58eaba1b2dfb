"""A batch's jobs priced before their work (a previous audit's three leftovers): answers nested past a tensor's depth
(in /v1/check too), jobs refused as they load, and each job's own intermediate keys read on its own share."""

from __future__ import annotations

import json  # not orjson to send the bodies: orjson writes at most 254 levels
import math
import random
import string

import pytest
import requests

import service.views.batch as batch_view
from conftest import TUTORIAL_NEURON, balanced_sum, python_steps
from schemas import GradientRequestSchema
from schemas.grading import CheckRequestSchema
from service.engine import cost
from service.engine.compute import build_model, estimate, estimate_cost
from service.engine.formula import canonical_text
from service.engine.limits import Deadline, Limits
from service.engine.values import levels_past

LIMITS = Limits()
PROBLEM = "application/problem+json"
SQUARE = {"model": {"kind": "expression", "name": "square"}, "inputs": {"x": 3.0}}
HONEST = {"check": {**SQUARE, "submission": {"gradients": {"x": 6.0}}}}


def nested(depth: int, leaf) -> list:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def deep_answer(depth: int = 900) -> dict:
    return {"check": {**SQUARE, "submission": {"gradients": {"x": nested(depth, 6.0)}}}}


def post_live(server, path: str, body) -> requests.Response:
    data = json.dumps(body).encode()
    return requests.post(server.url + path, data=data, headers={"Content-Type": "application/json"}, timeout=60)


def assert_alive(server) -> None:
    neuron = requests.post(server.url + "/v1/gradients", json=TUTORIAL_NEURON, timeout=10)
    assert neuron.status_code == 200 and round(neuron.json()["gradients"]["w"], 4) == 6.6918


def reserved_by(client, monkeypatch, jobs: list) -> tuple[list, int]:
    """The batch's results and what its jobs reserved in its ledger (batch_view.Ledger's amount)."""
    reserved = []
    ledger = batch_view.Ledger
    monkeypatch.setattr(batch_view, "Ledger", lambda amount: reserved.append(amount) or ledger(amount))
    response = client.post("/v1/batch", data=json.dumps({"jobs": jobs}), content_type="application/json")
    assert response.status_code == 200, response.data[:300]
    return response.json["results"], reserved[0]


# --- 1. answers nested deeper than a tensor --------------------------------------------------------------------------


def answer_levels(value) -> int:
    """How many levels of lists `value` has, ragged or not: the per-answer walk levels_past replaced (a reference)."""
    levels, lists = 0, [value] if type(value) is list else []
    while lists:
        levels += 1
        lists = [item for items in lists for item in items if type(item) is list]
    return levels


def test_levels_past_counts_every_level_ragged_or_not():
    values = (6.0, [], [1.0], [[1.0, 2.0]], [1.0, [[2.0]]], nested(900, 1.0))
    assert [levels_past([v], 0) for v in values] == [0, 1, 1, 2, 3, 900]
    assert [levels_past([v], 2) for v in values] == [0, 0, 0, 0, 1, 898]


def random_answer(rng: random.Random, depth: int):
    """A number, or a list of 0-3 items (numbers and lists, ragged), at most `depth` levels."""
    if depth == 0 or rng.random() < 0.25:
        return rng.choice([1.0, 2, "NaN"])
    return [random_answer(rng, depth - 1) for _ in range(rng.randrange(4))]


@pytest.mark.parametrize("seed", range(20))
def test_levels_past_is_each_answers_levels_past_the_free_ones(seed):
    """The answers walked together count what walking each on its own counts: depth hidden in a non-first item (a
    ragged answer: every later walk reads it) too, whatever the order of the answers."""
    rng = random.Random(seed)
    answers = [random_answer(rng, rng.randrange(14)) for _ in range(rng.randrange(1, 12))]
    answers.append([1.0, [2.0, nested(11, 3.0)]])  # 13 deep, by its second item's second item
    for free in (0, 3, 9):
        assert levels_past(answers, free) == sum(max(0, answer_levels(a) - free) for a in answers)


def test_counting_answers_levels_takes_python_steps_by_the_level_not_by_the_answer():
    """An audit: 1000 jobs of 256 answers 8 deep (free: a tensor's depth) took ~2 s in deep_answers_estimate alone,
    charged 0: each answer's every level was walked on its own, a few Python steps each. The answers of a job are
    walked together now: 256 answers take the Python steps of one, and those past the free levels their own."""
    free = LIMITS.max_tensor_dims + 1

    def job(answers: int, depth: int) -> dict:
        return {"submission": {"loss": 1.0, "gradients": {f"g{i}": nested(depth, 1.0) for i in range(answers)}}}

    one, many = job(1, free - 1), job(256, free - 1)
    assert cost.answers_estimate(many, LIMITS).total == 0
    assert python_steps(lambda: cost.answers_estimate(many, LIMITS)) <= python_steps(
        lambda: cost.answers_estimate(one, LIMITS)
    )
    deep = job(256, free + 3)  # each 3 levels past the free ones: counted, and charged
    assert cost.answers_estimate(deep, LIMITS).total == 256 * 3 * cost.ANSWER_LEVEL_BYTES
    assert python_steps(lambda: cost.answers_estimate(deep, LIMITS)) < 2 * python_steps(
        lambda: cost.answers_estimate(job(1, free + 3), LIMITS)
    )


def test_deep_answers_are_charged_a_price_a_level_past_a_tensors(client, monkeypatch):
    """Each level past max_tensor_dims + 1 (a list of per-point tensors) is charged ANSWER_LEVEL_BYTES, counted on the
    raw JSON before the job loads; an answer as deep as a tensor answer costs what it did. The result is unchanged."""
    shallow, shallow_reserved = reserved_by(client, monkeypatch, [deep_answer(LIMITS.max_tensor_dims + 1)])
    results, reserved = reserved_by(client, monkeypatch, [deep_answer(900)])
    _, plain = reserved_by(client, monkeypatch, [HONEST])
    assert shallow_reserved == plain  # a tensor's depth is in a check's price already
    assert reserved - plain == (900 - LIMITS.max_tensor_dims - 1) * cost.ANSWER_LEVEL_BYTES
    check = results[0]["checks"][0]
    assert check["actual_summary"] == "1 value(s) in lists nested 900 deep: [6]" and not check["passed"]
    assert shallow[0]["checks"][0]["actual_summary"].startswith("1 value(s) in lists nested 9 deep")


def test_a_checks_deep_answers_are_priced_before_they_load(client):
    """/v1/check: 257 answers nested 900 deep (the loss, 128 gradients, 128 intermediates; 460 KB) were a 200 after
    0.9-1.5 s, charged 257 checks (~33 ms). Their levels are over the budget: a 413 naming them."""
    names = [f"x{i}" for i in range(128)]
    formula = names
    while len(formula) > 1:  # a balanced sum: a flat one nests past max_ast_depth
        formula = [f"({a}+{b})" for a, b in zip(formula[::2], formula[1::2], strict=False)] + formula[
            len(formula) // 2 * 2 :
        ]
    deep = nested(900, 1.0)
    check = {"model": {"kind": "expression", "formula": formula[0]}, "inputs": dict.fromkeys(names, 1.0)}
    check["submission"] = {"loss": deep, "gradients": dict.fromkeys(names, deep), "intermediates": {}}
    check["submission"]["intermediates"] = {f"k{i}": deep for i in range(128)}
    response = client.post("/v1/check", data=json.dumps(check), content_type="application/json")
    assert response.status_code == 413 and response.mimetype == PROBLEM
    assert set(response.json["limit"]["breakdown"]) == {"deep answers"}
    assert response.json["hint"] == cost.HINTS["deep answers"]
    one = client.post("/v1/check", data=json.dumps(deep_answer()["check"]), content_type="application/json")
    assert one.status_code == 200 and one.json["checks"][0]["actual_summary"].endswith("nested 900 deep: [6]")


@pytest.mark.live
def test_live_deep_answers_are_a_413_within_their_price(live_server):
    """1000 check jobs answering with lists nested 900 deep (1.9 MB, valid, under every body cap) were a 200 after
    6-8 s (~5-8 ms a job for 128 µs charged) with a 722 KB body. Priced by their levels, they are a 413 naming the
    first jobs that take the batch over; the worker stays up; a few such jobs and an honest one are graded."""
    # 600 jobs: 1000 are refused before the parse now (their 906,000 lists beyond one a value, jsonio.parse_bytes)
    response = post_live(live_server, "/v1/batch", {"jobs": [deep_answer()] * 600})
    assert response.status_code == 413 and response.headers["Content-Type"] == PROBLEM
    assert len(response.content) < 1000
    problem = response.json()
    assert problem["limit"]["name"] == "max_request_bytes" and "of the batch's 600 jobs" in problem["detail"]
    assert_alive(live_server)
    response = post_live(live_server, "/v1/batch", {"jobs": [deep_answer()] * 10 + [HONEST]})
    assert response.status_code == 200, response.text[:300]
    results = response.json()["results"]
    assert results[-1]["score"] == 1 and all(r["score"] == 0 for r in results[:-1])


# --- 2. jobs refused as they load ------------------------------------------------------------------------------------


def test_jobs_refused_as_they_load_are_charged(client, monkeypatch):
    """A job the cost model refuses as it loads (cost.check_raw: here an input of 900 dimensions) was free, and the
    schema read its 900 levels before the estimate refused it (1000 such jobs: 2.4-3.4 s). It is refused at the
    level past max_tensor_dims now, before the schema, and charged LOAD_REFUSED_BYTES."""
    loads = []
    load = batch_view.gradient_request.load
    monkeypatch.setattr(batch_view.gradient_request, "load", lambda job: loads.append(1) or load(job))
    deep = {"model": {"kind": "expression", "name": "square"}, "inputs": {"x": nested(900, 0.5)}}
    wide = {"model": {"kind": "expression", "formula": "x"}, "inputs": {f"x{i}": 1.0 for i in range(129)}}
    results, reserved = reserved_by(client, monkeypatch, [deep, wide, deep])
    assert reserved == 3 * cost.LOAD_REFUSED_BYTES and loads == []
    assert [r["error"]["limit"]["name"] for r in results] == ["max_tensor_dims", "max_inputs", "max_tensor_dims"]
    assert results[0]["error"]["detail"] == "input 'x' has 900 dimensions; the limit is 8"


def test_problem_fields_nested_past_what_orjson_writes_are_a_400_not_a_500(client):
    """A check's problem fields are keyed by their JSON (orjson, at most 254 levels): a model with a key nested 300
    deep was a 500 in /v1/check and /v1/batch. It is the schema's 400 now."""
    check = {**SQUARE, "model": {"kind": "expression", "name": "square", "junk": nested(300, 1.0)}}
    check["submission"] = {"gradients": {"x": 6.0}}
    single = client.post("/v1/check", data=json.dumps(check), content_type="application/json")
    assert single.status_code == 400 and single.json["errors"] == {"model": {"junk": ["Unknown field."]}}
    response = client.post(
        "/v1/batch", data=json.dumps({"jobs": [{"check": check}, HONEST]}), content_type="application/json"
    )
    assert response.status_code == 200
    assert response.json["results"][0]["error"]["status"] == 400 and response.json["results"][1]["score"] == 1


@pytest.mark.live
def test_live_check_jobs_with_inputs_nested_300_deep_are_refused_in_place(live_server):
    """999 check jobs whose input was nested 300 deep were a 500 (orjson refused to key their problem); /v1/check
    too. Each is a 413 in its place now, the batch's body bounded, the honest job after them graded."""
    deep = {"check": {**SQUARE, "inputs": {"x": nested(300, 0.5)}, "submission": {"gradients": {"x": 1.0}}}}
    response = post_live(live_server, "/v1/batch", {"jobs": [deep] * 999 + [HONEST]})
    assert response.status_code == 200, response.text[:300]
    assert len(response.content) < 1000 * 400
    results = response.json()["results"]
    assert all(r["error"]["limit"]["name"] == "max_tensor_dims" for r in results[:-1])
    assert results[-1]["score"] == 1
    single = post_live(live_server, "/v1/check", deep["check"])
    assert single.status_code == 413 and single.headers["Content-Type"] == PROBLEM
    assert_alive(live_server)


# --- 3. a job's own intermediate keys, without checks ----------------------------------------------------------------


def junk_keys_job(j: int) -> dict:
    """128 keys, none an intermediate's name, each read as a formula (~75 µs, charged 72 µs)."""
    keys = {f"(x+{j * 128 + k})": 0.0 for k in range(128)}
    return {
        "check": {
            "model": {"kind": "expression", "formula": "sin(x)"},
            "inputs": {"x": 0.5},
            "submission": {"intermediates": keys},
        }
    }


@pytest.mark.live
def test_live_junk_keys_without_checks_take_nothing_from_a_later_jobs_keys(live_server):
    """Without `checks` a job's keys are its student's, and were charged to the batch's budget: after 45 jobs of
    128 junk keys, a later honest job's intermediate keyed "(x)**2" (sin(x**2)'s "x ** 2") was refused unread, "over
    the budget" (score 1 of 2). Each job reads its own keys on its share of the allowance for a student's keys
    (Ledger.spelling_share), as with `checks`: the honest job scores 2, the junk jobs' checks say why."""
    honest = {"model": {"kind": "expression", "formula": "sin(x**2)"}, "inputs": {"x": 3}}
    honest["submission"] = {"loss": 0.412118, "intermediates": {"(x)**2": 9.0}}
    response = post_live(
        live_server, "/v1/batch", {"jobs": [junk_keys_job(j) for j in range(45)] + [{"check": honest}]}
    )
    assert response.status_code == 200, response.text[:300]
    results = response.json()["results"]
    assert results[-1]["score"] == 2, results[-1]["checks"]
    share, pool = max(cost.SPELLING_READ_BYTES // 46, cost.SPELLING_SHARE_BYTES), cost.SPELLING_POOL_BYTES
    price = cost.intermediate_key_estimate("(x+0)").total
    read = [
        sum("too many keys to read as formulas for one job" not in c["message"] for c in result["checks"])
        for result in results[:-1]
    ]
    assert all(read) and read[0] > share // price  # the first jobs drew on the pool past their share
    last = cost.intermediate_key_estimate(f"(x+{44 * 128})").total  # the last junk job's keys, 8 characters
    assert read[-1] == share // last  # the pool spent, the last junk job read what its own share buys
    assert sum(read) * price <= 45 * share + pool
    assert_alive(live_server)


# --- 4. a class's honest keys: read once, past the first job's share -------------------------------------------------

SMALL = "sin(x**2)*exp(y)"
LARGE = "sin(x**2) + exp(-y) * cos(x*y) + log(1 + x**2) * tanh(y)"


def spelt_without_spaces(formula: str) -> dict[str, float]:
    """Every intermediate of `formula` at x=1.5, y=0.5, keyed as a student types it ("x**2"; references: "x ** 2")."""
    x, y = 1.5, 0.5
    env = {"x": x, "y": y, "sin": math.sin, "cos": math.cos, "exp": math.exp, "log": math.log, "tanh": math.tanh}
    keys = ["x**2", "sin(x**2)", "sin(x**2)*exp(y)"]
    if formula == LARGE:
        keys = ["x**2", "sin(x**2)", "-y", "exp(-y)", "x*y", "cos(x*y)", "exp(-y)*cos(x*y)"]
        keys += ["sin(x**2)+exp(-y)*cos(x*y)", "1+x**2", "log(1+x**2)", "tanh(y)", "log(1+x**2)*tanh(y)"]
    return {key: eval(key, env) for key in keys}  # noqa: S307 - the test's own fixed expressions


@pytest.mark.live
@pytest.mark.parametrize("checks", [False, True], ids=["own keys", "checks"])
@pytest.mark.parametrize(("formula", "jobs"), [(SMALL, 1000), (LARGE, 500)], ids=["3 keys", "12 keys"])
def test_live_an_honest_class_scores_full_in_every_job(live_server, formula, jobs, checks):
    """An audit: 1000 identical honest jobs answering sin(x**2)*exp(y)'s 3 intermediates as "x**2"...: job 0 scored 2
    of 3 ("too many keys to read as formulas for one job"), the rest 3 of 3. The keys are parsed once for the request,
    charged to the job that reads them first, and 3 short keys cost more than a 1000-job batch's 64 KiB share (with
    12 keys, from ~80 jobs up; with `checks`, 9 of 12). Past its share a job draws on the request's pool: every job
    scores full. (500 jobs of 12 checks: 1000 are over the batch's budget for checks.)"""
    answers = spelt_without_spaces(formula)
    job = {"model": {"kind": "expression", "formula": formula}, "inputs": {"x": 1.5, "y": 0.5}}
    job["submission"] = {"intermediates": answers}
    if checks:  # named as the references name them: each answer found under another spelling (check.Spellings)
        job["checks"] = {f"intermediates.{canonical_text(key, LIMITS)}": {"points": 1} for key in answers}
    response = post_live(live_server, "/v1/batch", {"jobs": [{"check": job}] * jobs})
    assert response.status_code == 200, response.text[:300]
    results = response.json()["results"]
    below = [(i, r["score"]) for i, r in enumerate(results) if r["score"] < len(answers)]
    assert len(results) == jobs and below == [], [c["message"] for c in results[below[0][0]]["checks"]]


# --- 5. answers no check names ---------------------------------------------------------------------------------------


def wide_job(j: int, depth: int, answers: int = 256, formulas: int = 0) -> dict:
    """An audit's job: `checks` name only the loss; `answers` gradients and intermediates nested `depth` deep (as deep
    as a tensor answer may be: free of `deep answers`), and `formulas` gradient formulas, none of them graded."""
    value = nested(depth, 1.0)
    submission = {"loss": 0.7 + j * 1e-9, "gradients": {f"g{i}": value for i in range(answers // 2)}}
    submission["intermediates"] = {f"k{i}": value for i in range(answers - answers // 2)}
    if formulas:
        submission["gradient_formulas"] = {f"f{i}": "x" for i in range(formulas)}
    check = {"model": {"kind": "expression", "formula": "sin(x**2)"}, "inputs": {"x": 1.5}, "submission": submission}
    return {"check": {**check, "checks": {"loss": {"points": 1}}}}


def test_ungraded_answers_are_priced_by_their_count_and_levels():
    """Loaded and warned about, never graded: UNGRADED_ANSWER_BYTES each and UNGRADED_LEVEL_BYTES a level, counted on
    the raw JSON. Without `checks` every answer is a check of its own (priced as checks), so none is ungraded."""
    job = wide_job(0, 3, answers=10, formulas=4)["check"]
    assert cost.answers_estimate(job, LIMITS).parts == {
        "deep answers": 0,
        "ungraded answers": 14 * cost.UNGRADED_ANSWER_BYTES + 10 * 3 * cost.UNGRADED_LEVEL_BYTES,
    }
    named = {**job, "checks": {"loss": {}, **{f"gradients.g{i}": {} for i in range(5)}}}
    assert cost.answers_estimate(named, LIMITS).parts["ungraded answers"] == 9 * cost.UNGRADED_ANSWER_BYTES + 5 * 3 * (
        cost.UNGRADED_LEVEL_BYTES
    )
    unchecked = {key: value for key, value in job.items() if key != "checks"}
    assert cost.ungraded_answers(unchecked) == [] and cost.ungraded_answers({"checks": {}, "submission": 1}) == []


def test_ungraded_answers_are_named_up_to_a_bound_then_counted(client):
    """256 ungraded answers wrote 256 warnings, ~15 KB a job: the first check.UNGRADED_NAMED by name now, the rest in
    one warning with their count. Fewer warn as they did, word for word."""
    response = client.post("/v1/check", data=json.dumps(wide_job(0, 1)["check"]), content_type="application/json")
    assert response.status_code == 200, response.json
    warnings = [w for w in response.json["warnings"] if "not graded" in w]
    assert warnings == [f"gradients.g{i}: answer not graded (not among the request's checks)" for i in range(8)] + [
        "248 more answers: answer not graded (not among the request's checks)"
    ]
    few = client.post("/v1/check", data=json.dumps(wide_job(0, 1, answers=8)["check"]), content_type="application/json")
    assert [w for w in few.json["warnings"] if "not graded" in w] == [
        *(f"gradients.g{i}: answer not graded (not among the request's checks)" for i in range(4)),
        *(f"intermediates.k{i}: answer not graded (not among the request's checks)" for i in range(4)),
    ]


@pytest.mark.live
@pytest.mark.parametrize("formulas", [0, 128], ids=["answers", "and formulas"])
def test_live_a_batch_of_ungraded_answers_is_a_413_within_their_price(live_server, formulas):
    """The audit's batch_wide files, scaled to a body the parse budget admits: 300 jobs (1000 in the audit) of 256
    ungraded answers 8 deep (free of `deep answers`), checks naming only the loss, were a 200 in 2.5-3.9 s with 5.6 MB
    of warnings (18.7 MB; 128 gradient formulas more: 28.5 MB). Priced ~10 ms a job, the batch is a 413 naming them,
    charged as each job loads; 20 such jobs fit, each with 9 warnings about them."""
    response = post_live(live_server, "/v1/batch", {"jobs": [wide_job(j, 8, formulas=formulas) for j in range(300)]})
    assert response.status_code == 413 and response.headers["Content-Type"] == PROBLEM, response.text[:300]
    assert "of the batch's 300 jobs" in response.json()["detail"], response.json()
    response = post_live(live_server, "/v1/batch", {"jobs": [wide_job(j, 8, formulas=formulas) for j in range(20)]})
    assert response.status_code == 200, response.text[:300]
    for result in response.json()["results"]:
        assert result["score"] == 0 and sum("not graded" in w for w in result["warnings"]) == 9
    assert len(response.content) < 20 * 12_000  # 256 answers' warnings were ~15 KB a job
    assert_alive(live_server)


@pytest.mark.parametrize("checks", [False, True], ids=["own keys", "checks"])
def test_one_junk_job_cannot_cost_the_next_honest_job_a_point(client, checks):
    """A second look: one junk job of 128 keys of ~195 characters emptied the request's pool, and the next honest
    job, whose 3 short keys (~70 KiB at the prices) did not fit a 64 KiB share, scored 2 of 3. An honest job's
    usual keys fit its own share now (SPELLING_SHARE_BYTES): every honest job scores full."""
    formula = SMALL
    answers = spelt_without_spaces(formula)
    graded = {f"intermediates.{canonical_text(key, LIMITS)}": {"points": 1} for key in answers}

    def job(intermediates: dict) -> dict:
        body = {"model": {"kind": "expression", "formula": formula}, "inputs": {"x": 1.5, "y": 0.5}}
        body["submission"] = {"intermediates": intermediates}
        return {"check": {**body, "checks": graded} if checks else body}

    long_sum = "(" + "+".join(["x"] * 95) + ")"
    junk = job({f"{long_sum}+{k}": 0.0 for k in range(128)})
    assert cost.intermediate_key_estimate(f"{long_sum}+1").total * 128 > cost.SPELLING_POOL_BYTES  # it empties it
    response = client.post("/v1/batch", json={"jobs": [junk] + [job(answers)] * 999})
    assert response.status_code == 200, response.data[:300]
    results = response.json["results"]
    assert results[0]["score"] == 0
    assert all(r["score"] == r["max_score"] == 3 for r in results[1:]), results[1]


# --- 6. a formula's nodes, inputs no formula names, a job's floor (a ninth audit) ------------------------------------


def same(n: int, leaf: str = "a") -> str:
    """A balanced product of n copies of one letter: many nodes, few distinct subexpressions (ops)."""
    return leaf if n == 1 else f"({same(n // 2, leaf)}*{same(n - n // 2, leaf)})"


SPINE = "-" * 40 + same(220)  # the audit's formula: 917 characters, 479 nodes, 52 distinct ops
SPINE_JOB = {"model": {"kind": "expression", "formula": SPINE}, "inputs": {"a": 0.5}, "mode": "inference"}
SPINE_JOB["include"] = []
X_JOB = {"model": {"kind": "expression", "formula": "x"}, "inputs": {"x": 1.0}}
WIDE_INPUTS = {f"v{i}": 1.0 for i in range(128)}


def spine_check(i: int) -> dict:
    """The audit's check job i of 300: the spine's length and the letter vary, so every job is a problem of its own."""
    letter = string.ascii_letters[i % 52]
    source = "-" * (40 - (i // 52) % 10) + same(220, letter)
    model = {"kind": "expression", "formula": source}
    return {"check": {"model": model, "inputs": {letter: 0.5}, "submission": {"loss": 1.0}}}


def gradient_parts(body: dict) -> dict[str, int]:
    """A gradients request's estimate, by part."""
    request = GradientRequestSchema().load(body)
    model, wrt, total = estimate(request, LIMITS, Deadline(LIMITS.max_wall_seconds))
    shapes = model.shapes({name: data.shape for name, data in request["inputs"].items()})
    parts = cost.gradients_estimate(request, model, shapes, wrt, LIMITS).parts
    assert sum(parts.values()) == total
    return dict(parts)


def test_a_formulas_nodes_are_charged_each_parse():
    """Parsing, checking and planning a formula and naming its subexpressions cost a few Python steps a node, equal
    subtrees each time; only its distinct ops were charged: the audit's one_inf.json (479 nodes, 52 ops) took 5 ms (55
    ms while a name was an ast.unparse of its subtree) on 0.2 MiB (~0.8 ms). Every node is charged FORMULA_NODE_BYTES
    now, once per parse (a gradients job's, a check problem's); a model without a formula has no such part."""
    parts = gradient_parts(SPINE_JOB)
    assert parts["formula nodes"] == 479 * cost.FORMULA_NODE_BYTES
    assert sum(parts.values()) > 4 * sum(n for part, n in parts.items() if part != "formula nodes")
    assert not {"formula nodes", "inputs"} & set(gradient_parts(TUTORIAL_NEURON))
    check = CheckRequestSchema().load(spine_check(0)["check"])
    model = build_model(check["model"], LIMITS, Deadline(LIMITS.max_wall_seconds))
    points = [{"a": ()}] * 7  # charged once, whatever the points
    assert cost.check_estimate(check, model, points, LIMITS).parts["formula nodes"] == 479 * cost.FORMULA_NODE_BYTES


def test_a_batch_of_many_nodes_is_a_413_not_the_deadline(client):
    """The audit's batch1000.json (1 MB): 1000 copies of the job were charged 203 MiB and held a worker to the 10 s
    deadline (a 503; ~54 s of work uncut). Its 300 check jobs of distinct such formulas (batch_checks300.json) too.
    Both are 413s as their jobs load now, naming the first jobs over the budget."""
    response = client.post("/v1/batch", data=json.dumps({"jobs": [SPINE_JOB] * 1000}), content_type="application/json")
    assert response.status_code == 413 and response.mimetype == PROBLEM, response.data[:300]
    assert "of the batch's 1000 jobs" in response.json["detail"]
    response = client.post(
        "/v1/batch", data=json.dumps({"jobs": [spine_check(i) for i in range(300)]}), content_type="application/json"
    )
    assert response.status_code == 413 and response.mimetype == PROBLEM, response.data[:300]
    assert "of the batch's 300 jobs" in response.json["detail"]


@pytest.mark.live
def test_live_a_batch_of_many_nodes_is_a_413_not_the_deadline(live_server):
    """The audit's live rows: batch1000.json and batch_checks300.json were 503s at 10.0 s, each holding a worker."""
    for jobs in ([SPINE_JOB] * 1000, [spine_check(i) for i in range(300)]):
        response = post_live(live_server, "/v1/batch", {"jobs": jobs})
        assert response.status_code == 413 and response.headers["Content-Type"] == PROBLEM, response.text[:300]
        assert response.json()["limit"]["name"] == "max_request_bytes"
        assert response.elapsed.total_seconds() < LIMITS.max_wall_seconds / 2  # refused as the jobs load, not cut
    assert_alive(live_server)


def test_inputs_the_formula_never_names_are_priced_each():
    """An input costs its load, its check, its tensor and leaf (and in grad mode its zero gradient) whatever its
    size: ~16 µs, charged its parse only (~0.8 µs). The inputs a formula never names are charged INPUT_BYTES each now;
    those it names are priced by the ops that read them, and a neuron or a network takes no other input."""
    job = {"model": {"kind": "expression", "formula": "v0"}, "inputs": WIDE_INPUTS, "include": []}
    assert gradient_parts(job)["inputs"] == 127 * cost.INPUT_BYTES
    assert gradient_parts({**job, "mode": "inference"})["inputs"] == 127 * cost.INPUT_BYTES
    every = {**job, "model": {"kind": "expression", "formula": balanced_sum(list(WIDE_INPUTS))}}
    assert "inputs" not in gradient_parts(every)


def test_a_batch_of_inputs_no_formula_names_is_a_413(client):
    """The audit's t11: 1000 jobs of 128 scalar inputs, the formula naming one (1.65 MB), took 2.0 s in inference
    and 2.8 s in grad mode on ~0.02-3 MiB (and its parse price, ~28 MiB): a 413 as its jobs load now."""
    for mode in ("inference", "grad"):
        job = {"model": {"kind": "expression", "formula": "v0"}, "inputs": WIDE_INPUTS, "include": [], "mode": mode}
        response = client.post("/v1/batch", data=json.dumps({"jobs": [job] * 1000}), content_type="application/json")
        assert response.status_code == 413 and response.mimetype == PROBLEM, response.data[:300]
        assert "of the batch's 1000 jobs" in response.json["detail"]


def test_a_batch_job_is_charged_at_least_its_floor(client, monkeypatch):
    """1000 jobs of the formula `x` took 0.2-0.3 s and were charged ~50 bytes each (60x under): every gradients job
    is charged at least JOB_BYTES. A job whose estimate is more (the tutorial neuron's) is charged its estimate."""
    results, reserved = reserved_by(client, monkeypatch, [X_JOB] * 1000)
    assert reserved == 1000 * cost.JOB_BYTES and all(r["gradients"]["x"] == 1.0 for r in results)
    neuron = estimate_cost(GradientRequestSchema().load(TUTORIAL_NEURON), LIMITS)
    assert neuron > cost.JOB_BYTES
    _, reserved = reserved_by(client, monkeypatch, [TUTORIAL_NEURON] * 100)
    assert reserved == 100 * neuron


def domain_check(seed: int) -> dict:
    """A check of the formula `v0` at 100 points drawn over 128 inputs."""
    domain = {name: [0, 1] for name in WIDE_INPUTS}
    model = {"kind": "expression", "formula": "v0"}
    return {"model": model, "domain": domain, "n_points": 100, "seed": seed, "submission": {"loss": 1.0}}


def test_a_checks_inputs_no_formula_names_are_priced_at_every_point(client):
    """A check of `v0` drawn over 128 inputs at 100 points (2 KB) took 0.3 s, charged 2 MiB (~8 ms): 12,700 tensors
    and leaves the formula never reads. Each is charged INPUT_BYTES at every point now: one such check is graded
    (~52 MiB), 10 of them in a batch (3.2 s, 20 MiB) are a 413 as they load."""
    check = CheckRequestSchema().load(domain_check(0))
    model = build_model(check["model"], LIMITS, Deadline(LIMITS.max_wall_seconds))
    points = cost.domain_points(check, LIMITS)
    assert cost.check_estimate(check, model, points, LIMITS).parts["inputs"] == 127 * 100 * cost.INPUT_BYTES
    one = client.post("/v1/check", data=json.dumps(domain_check(0)), content_type="application/json")
    assert one.status_code == 200 and one.json["n_points"] == 100, one.data[:300]
    jobs = [{"check": domain_check(seed)} for seed in range(10)]
    response = client.post("/v1/batch", data=json.dumps({"jobs": jobs}), content_type="application/json")
    assert response.status_code == 413 and response.mimetype == PROBLEM, response.data[:300]
    assert "of the batch's 10 jobs" in response.json["detail"]
