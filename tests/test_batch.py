"""POST /v1/batch: order, per-job errors, check jobs, the job limit, and vectorized == one by one."""

from __future__ import annotations

import json
import random

import orjson
import pytest
import requests

import service.engine.batch as batch_engine
import service.engine.check as check_engine
import service.views.batch as batch_view
import service.views.check_loading as check_loading
from conftest import TUTORIAL_NEURON, balanced_sum
from service.engine import cost, refcache
from service.engine.check import estimate as estimate_check
from service.engine.compute import estimate_cost
from service.engine.limits import Limits
from service.engine.values import outline
from service.views.check_loading import check_request, problem_json

CHECK = {
    "model": {"kind": "expression", "name": "square"},
    "inputs": {"x": 3.0},
    "submission": {"gradients": {"x": 6.0}},
}


def batch(client, jobs):
    response = client.post("/v1/batch", json={"jobs": jobs})
    assert response.status_code == 200, response.json
    return response.json["results"]


def test_order_kept_and_errors_in_place(client):
    jobs = [
        {"model": {"kind": "expression", "formula": "x**2"}, "inputs": {"x": 3.0}},
        {"model": {"kind": "expression", "formula": "x**2"}, "inputs": {"x": [1.0, 2.0]}},  # 422: not scalar
        {"check": CHECK},
        {"model": {"kind": "expression", "formula": "x**2"}},  # 400: no inputs
        "not an object",
        None,
        {"check": {**CHECK, "rtol": -1}},  # 400 inside the check
        {"check": {**CHECK, "submission": {"gradients": {"x": 5.0}}}},
        TUTORIAL_NEURON,
    ]
    results = batch(client, jobs)
    assert len(results) == len(jobs)
    assert results[0]["gradients"]["x"] == 6.0
    assert results[1]["error"]["status"] == 422 and results[1]["error"]["type"] == "/problems/non-scalar-output"
    assert results[2]["passed"] is True and results[2]["score"] == 1
    assert results[3]["error"]["status"] == 400 and "inputs" in results[3]["error"]["errors"]
    assert results[4]["error"]["status"] == 400
    assert results[5]["error"]["status"] == 400
    assert "rtol" in results[6]["error"]["errors"]["check"]
    assert results[7]["passed"] is False and "you gave 5" in results[7]["checks"][0]["message"]
    assert round(results[8]["gradients"]["w"], 4) == 6.6918


def test_each_result_equals_its_single_request(client):
    jobs = [{"model": {"kind": "expression", "name": "sin_square"}, "inputs": {"x": 3.0}}, {"check": CHECK}]
    results = batch(client, jobs)
    assert results[0] == client.post("/v1/gradients", json=jobs[0]).json
    assert results[1] == client.post("/v1/check", json=CHECK).json


def test_empty_batch(client):
    assert batch(client, []) == []


@pytest.mark.parametrize(("body", "status"), [({}, 400), ({"jobs": {}}, 400), ({"jobs": [], "x": 1}, 400)])
def test_malformed_batch(client, body, status):
    assert client.post("/v1/batch", json=body).status_code == status


def test_job_limit_is_413(app, client):
    limit = app.config["MAX_BATCH_JOBS"]
    response = client.post("/v1/batch", json={"jobs": [{}] * (limit + 1)})
    assert response.status_code == 413 and response.mimetype == "application/problem+json"
    assert response.json["limit"] == {"name": "max_batch_jobs", "value": limit}


# --- vectorized neuron jobs ---------------------------------------------------------------------------


def _value(rnd, shape):
    if not shape:
        return rnd.uniform(-8, 8)
    return [_value(rnd, shape[1:]) for _ in range(shape[0])]


def neuron_job(rnd, x_shape, w_shape, dtype, reduction, include, mode="grad", wrt=None):
    y_shape = x_shape[:-1] if w_shape else x_shape
    job = {
        "model": {"kind": "neuron", "reduction": reduction},
        "inputs": {
            "x": _value(rnd, x_shape),
            "w": _value(rnd, w_shape),
            "b": _value(rnd, ()),
            "y": [float(rnd.random() > 0.5) for _ in range(y_shape[0])] if y_shape else float(rnd.random() > 0.5),
        },
        "dtype": dtype,
        "include": include,
        "mode": mode,
    }
    if wrt:
        job["wrt"] = wrt
    return job


CASES = [
    ((), (), "float32", "mean", [], "grad", None),
    ((), (), "float64", "mean", ["intermediates"], "grad", ["x", "y", "w", "b"]),
    ((3,), (), "float32", "sum", ["intermediates"], "grad", None),
    ((40,), (), "float32", "mean", [], "grad", None),  # long enough for torch's SIMD path
    ((5,), (5,), "float64", "none", ["intermediates"], "grad", None),
    ((37, 20), (20,), "float32", "mean", ["intermediates"], "grad", ["x", "w", "b"]),
    ((4, 3), (3,), "float64", "sum", ["intermediates"], "inference", None),
]


@pytest.fixture()
def count_vectorized(monkeypatch):
    calls = []
    original = batch_engine.vectorized_neuron

    def counting(jobs, limits):
        calls.append(len(jobs))
        return original(jobs, limits)

    monkeypatch.setattr(batch_engine, "vectorized_neuron", counting)
    return calls


def batch_and_singles(client, jobs: list[dict]):
    """The /v1/batch response of `jobs`, and the body their single /v1/gradients answers make together."""
    one_by_one = b",".join(client.post("/v1/gradients", json=job).get_data() for job in jobs)
    return client.post("/v1/batch", json={"jobs": jobs}), b'{"results":[' + one_by_one + b"]}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-{c[2]}-{c[3]}-{c[5]}")
def test_vectorized_equals_one_by_one(client, count_vectorized, case):
    rnd = random.Random(str(case))
    jobs = [neuron_job(rnd, *case) for _ in range(24)]
    vectorized, singles = batch_and_singles(client, jobs)
    assert count_vectorized == [24]  # one pass for the whole group
    assert vectorized.get_data() == singles  # byte for byte


def _filled(shape, value):
    return value if not shape else [_filled(shape[1:], value) for _ in range(shape[0])]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    ("x", "w"),
    [([[6.7, -3.0]], [-3.0, 1e30]), ([-3.0], 1e30), ([[-3.0]], 1e30), ([[[6.7, -3.0]]], [-3.0, 1e30])],
    ids=["1x2", "1", "1x1", "1x1x2"],
)
def test_a_clamped_one_sample_job_keeps_the_sign_of_its_zeros(client, count_vectorized, x, w, reduction):
    """z = -3e30: the clamp bites and w's gradient is exactly zero, 0 * x, so -0.0 where x < 0. Alone, w (and b)
    broadcast over the job's one sample and their gradients are summed over it: 0.0. Stacked, the same bytes."""
    vector_w = isinstance(w, list)
    y_shape = outline(x)[:-1] if vector_w else outline(x)
    job = {
        "model": {"kind": "neuron", "reduction": reduction},
        "inputs": {"x": x, "y": _filled(y_shape, 0.3), "w": w, "b": -3.0},
        "include": ["intermediates"],
        "wrt": ["x", "y", "w", "b"],
    }
    single = client.post("/v1/gradients", json=job)
    assert single.status_code == 200 and json.loads(single.get_data())["gradients"]["w"] in (0.0, [0.0, 0.0])
    assert client.post("/v1/batch", json={"jobs": [job, job]}).get_data() == b'{"results":[%s,%s]}' % (
        single.get_data(),
        single.get_data(),
    )
    assert count_vectorized == [2]


@pytest.mark.parametrize("extra", [{"dout": 3.0}, {"tangents": {"w": 1.0}}])
def test_a_neuron_job_with_dout_or_tangents_is_not_stacked_without_them(client, count_vectorized, extra):
    """The stacked pass computes neither dout·J nor J·v: such jobs run one by one, answered as alone."""
    job = {**TUTORIAL_NEURON, "include": [], **extra}
    single = client.post("/v1/gradients", json=job).get_data()
    assert client.post("/v1/batch", json={"jobs": [job, job]}).get_data() == b'{"results":[%s,%s]}' % (single, single)
    assert count_vectorized == []


def test_vectorized_jobs_warn_of_inputs_beyond_float32(client, count_vectorized):
    """A finite 1e39 is infinite in float32: each stacked job warns of its own, as alone (and as alone, an
    "Infinity" sent as such is no such warning)."""
    jobs = [
        {"model": {"kind": "neuron"}, "inputs": {"x": x, "y": 0.0, "w": 1.0, "b": 0.0}, "include": []}
        for x in (1.0, 1e39, "Infinity", -1e39)
    ]
    vectorized, singles = batch_and_singles(client, jobs)
    assert count_vectorized == [4]
    assert vectorized.get_data() == singles
    beyond = [[w for w in r["warnings"] if w.startswith("inputs.x: ")] for r in vectorized.json["results"]]
    assert [len(w) for w in beyond] == [0, 1, 0, 1]


def test_vectorized_jobs_warn_of_their_own_targets_outside_0_1(client, count_vectorized):
    jobs = [
        {"model": {"kind": "neuron"}, "inputs": {"x": [1.0, 2.0], "y": y, "w": 0.5, "b": 0.0}, "include": []}
        for y in ([0.0, 1.0], [2.0, 1.0], [0.5, "NaN"], [-1.0, 3.0])
    ]
    vectorized, singles = batch_and_singles(client, jobs)
    assert count_vectorized == [4]
    assert vectorized.get_data() == singles
    outside = [[w for w in r["warnings"] if w.startswith("y outside [0, 1]")] for r in vectorized.json["results"]]
    assert [len(w) for w in outside] == [0, 1, 1, 1]
    assert [w[0].split(" sample")[0] for w in outside[1:]] == [f"y outside [0, 1] for {n} of 2" for n in (1, 1, 2)]


def test_mixed_batch_groups_only_homogeneous_jobs(client, count_vectorized):
    rnd = random.Random(1)
    a = [neuron_job(rnd, (), (), "float32", "mean", []) for _ in range(3)]
    b = [neuron_job(rnd, (4, 2), (2,), "float64", "mean", []) for _ in range(2)]
    lone = neuron_job(rnd, (2,), (), "float32", "mean", [])
    graph = {**neuron_job(rnd, (), (), "float32", "mean", ["graph"])}
    logits = {**neuron_job(rnd, (), (), "float32", "mean", []), "model": {"kind": "neuron", "loss": "bce_with_logits"}}
    jobs = [a[0], b[0], lone, a[1], graph, b[1], logits, a[2]]
    results = batch(client, jobs)
    assert sorted(count_vectorized) == [2, 3]
    assert results == [client.post("/v1/gradients", json=job).json for job in jobs]


def test_vectorized_group_with_bad_shapes_reports_each_job(client, count_vectorized):
    bad = {"model": {"kind": "neuron"}, "inputs": {"x": [1.0, 2.0], "y": 0.0, "w": 1.0, "b": 0.0}, "include": []}
    results = batch(client, [bad, bad])
    assert [r["error"]["status"] for r in results] == [422, 422]


def test_vectorized_path_really_replaces_one_by_one(client, monkeypatch):
    rnd = random.Random(2)
    jobs = [neuron_job(rnd, (), (), "float32", "mean", []) for _ in range(4)]
    expected = [client.post("/v1/gradients", json=job).json for job in jobs]

    def no_single(*args, **kwargs):
        raise AssertionError("one-by-one path used")

    monkeypatch.setattr(batch_engine, "compute", no_single)
    assert batch(client, jobs) == expected


# --- check jobs sharing a problem: its fields validated once ---------------------------------------------------


def test_shared_problem_validation_is_byte_identical_to_per_job_loads(client, monkeypatch):
    """Check jobs with byte-identical problem fields load them once; every result, the invalid answers' problems
    included, is byte for byte what a full per-job load gives."""
    neuron = {"model": {"kind": "neuron"}, "inputs": dict(TUTORIAL_NEURON["inputs"])}
    right = {"loss": 6.701176, "gradients": {"w": 6.691762, "b": 0.998770}}
    reordered = {"inputs": dict(reversed(list(neuron["inputs"].items()))), "model": {"kind": "neuron"}}
    answers = [
        {"submission": right},
        {"submission": {"loss": 6.7, "gradients": {"w": 3.0}}, "rtol": 0.01},
        {"submission": right, "checks": {"gradients.w": {"points": 2, "title": "dL/dw"}}},
        {"submission": {"gradients": {"b": "NaN"}}, "tolerance": {"profile": "rel_error"}},
        {"submission": right, "rtol": -1},  # invalid answers from here on
        {"submission": {"loss": True}},
        {"submission": {}},
        {"submission": right, "checks": {"nope": {}}},
        {"submission": right, "typo": 1},
        {"submission": "not an object", "atol": "x"},
        {},
    ]
    jobs = [{"check": {**neuron, **answer}} for answer in answers]
    jobs += [{"check": {**reordered, **answer}} for answer in answers[:5]]  # same problem, other key order
    jobs += [{"check": {**CHECK, "submission": {"gradients": {"x": x}}}} for x in (6.0, 5.0, "six")]
    jobs += [  # invalid problems, with valid and invalid answers
        {"check": {"model": {"kind": "neuron"}, "inputs": {"x": 1.0}, "submission": right}},
        {"check": {"model": {"kind": "neuron"}, "inputs": {"x": 1.0}, "submission": {"loss": []}, "rtol": -1}},
        {"check": {**neuron, "seed": 3, "submission": right}},
        {"check": {**neuron, "points": [neuron["inputs"]], "submission": right}},
        {"check": {"model": {"kind": "nope"}, "submission": right}},
        {"check": {"inputs": {"x": 1.0}}},
        {"check": []},
        {"check": None},
    ]
    # a check's own rtol/atol under the answer's profile: refused unless allclose or the check's own profile (the
    # validator reads `tolerance` and `checks`, both answer fields), with a valid and an invalid problem
    ambiguous = {
        "tolerance": {"profile": "rel_error", "partial_credit": True},
        "checks": {"gradients.w": {"rtol": 0.1}},
    }
    jobs += [
        {"check": {**neuron, "submission": right, **ambiguous, "tolerance": {"profile": "allclose"}}},
        {
            "check": {
                **neuron,
                "submission": right,
                **ambiguous,
                "checks": {"gradients.w": {"tolerance": {"profile": "allclose"}, "atol": 0.1}},
            }
        },
        {"check": {**neuron, "submission": right, **ambiguous}},
        {
            "check": {
                **neuron,
                "submission": right,
                "tolerance": {"profile": "exact"},
                "checks": {"loss": {"atol": 0.0}},
            }
        },
        {"check": {"model": {"kind": "neuron"}, "inputs": {"x": 1.0}, "submission": right, **ambiguous}},
    ]
    same_id = {"X-Request-ID": "shared-problem-test"}  # else each problem's request_id differs
    fast = client.post("/v1/batch", json={"jobs": jobs}, headers=same_id)
    again = client.post("/v1/batch", json={"jobs": jobs}, headers=same_id)  # the problems kept by the first

    def load_whole(check, limits, loaded, answers, shape):
        return check_request.load(check), problem_json(check), None

    monkeypatch.setattr(batch_view, "load_check", load_whole)
    monkeypatch.setattr(refcache, "PROBLEMS", refcache.ReferenceCache(0, 0))
    full = client.post("/v1/batch", json={"jobs": jobs}, headers=same_id)
    assert fast.status_code == again.status_code == full.status_code == 200
    assert fast.data == again.data == full.data
    results = fast.json["results"]
    assert [("error" in r) for r in results[:11]] == [False] * 4 + [True] * 7
    assert results[11:16] == results[:5]
    assert [("error" in r) for r in results[-5:]] == [False, False, True, True, True]
    assert "rtol" in results[-3]["error"]["errors"]["check"]["checks"]["gradients.w"]["value"]


def test_shared_problem_is_loaded_and_built_once_then_kept_across_requests(client, monkeypatch):
    refcache.PROBLEMS.clear()
    loads, builds = [], []
    load, build = check_loading.problem_part.load, check_loading.Problem
    monkeypatch.setattr(check_loading.problem_part, "load", lambda data: loads.append(data) or load(data))
    monkeypatch.setattr(check_loading, "Problem", lambda *args: builds.append(args) or build(*args))
    jobs = [{"check": {**CHECK, "submission": {"gradients": {"x": x}}}} for x in range(4, 9)]
    results = batch(client, jobs)
    assert [r["passed"] for r in results] == [x == 6 for x in range(4, 9)]
    assert len(loads) == len(builds) == 1
    assert batch(client, jobs) == results  # the next request (another student group): nothing loaded or built
    assert client.post("/v1/check", json=jobs[2]["check"]).json == results[2]
    assert len(loads) == len(builds) == 1


def _class_answers(rnd: random.Random, n: int) -> list[dict]:
    """n answers to the tutorial neuron as a class gives them: the same right and wrong numbers many times over,
    and what tells equal numbers apart in an echo (1 and 1.0, 0.0 and -0.0), with request options of their own."""
    numbers = [6.701176, 6.7012, 6.691762, 0.998770, 0.999, 1, 1.0, 0.0, -0.0, 2**53 + 1, 5.0, 3.3459, -6.691762]
    options = [
        {},
        {"rtol": 0.01},
        {"rtol": 0.0},
        {"rtol": -0.0},
        {"atol": 1e-6},
        {"checks": {"gradients.w": {"points": 2, "title": "dL/dw"}, "loss": {}}},
        {"checks": {"gradients.w": {"points": 2.0, "visibility": "hidden"}}},
        {"feedback": "error"},
        {"feedback": "verdict"},
    ]
    answers = []
    for _ in range(n):
        submission = {"loss": rnd.choice(numbers), "gradients": {"w": rnd.choice(numbers), "b": rnd.choice(numbers)}}
        if rnd.random() < 0.2:
            del submission["gradients"][rnd.choice(["w", "b"])]
        if rnd.random() < 0.1:
            submission["gradients"] = dict(reversed(list(submission["gradients"].items())))
        if rnd.random() < 0.05:
            submission["gradients"]["b"] = rnd.choice(["NaN", [0.999], True, "b"])
        answers.append({**TUTORIAL_NEURON, "submission": submission, **rnd.choice(options)})
    return answers


def test_a_class_s_answers_in_a_batch_are_byte_for_byte_what_each_gets_alone(client, monkeypatch):
    """A batch loads and walks (cost.check_raw) each job shape once (check_loading.check_shape) and grades each
    distinct one-number answer to a check once (Grader._one_number), its result encoded once; every result is
    still the bytes /v1/check gives that answer."""
    loads, compared, walks = [], [], []
    load, check_raw = check_loading.answer_part.load, cost.check_raw
    monkeypatch.setattr(check_loading.answer_part, "load", lambda data: loads.append(1) or load(data))
    monkeypatch.setattr(cost, "check_raw", lambda *args: walks.append(1) or check_raw(*args))
    jobs = [{"check": answer} for answer in _class_answers(random.Random(7), 300)]
    response = client.post("/v1/batch", json={"jobs": jobs})
    assert response.status_code == 200
    batch_loads, batch_walks = len(loads), len(walks)
    compare = check_engine.Grader._compare_number
    monkeypatch.setattr(
        check_engine.Grader, "_compare_number", lambda self, *args: compared.append(1) or compare(self, *args)
    )
    singles = [client.post("/v1/check", json=job["check"]) for job in jobs]
    alone = b'{"results":[' + b",".join(r.get_data() if r.status_code == 200 else b"" for r in singles) + b"]}"
    errors = [i for i, r in enumerate(singles) if r.status_code != 200]
    assert errors and len(errors) < 30  # a few invalid answers (true, a string), each its own 400
    results = response.json["results"]
    assert all("error" in results[i] for i in errors)
    for i in errors:  # an invalid answer's problem is /v1/check's, its place in the batch aside
        assert results[i]["error"]["errors"] == {"check": singles[i].json["errors"]}
    kept = [orjson.dumps(r) for i, r in enumerate(orjson.loads(response.get_data())["results"]) if i not in errors]
    assert b",".join(kept) == b",".join(r.get_data() for r in singles if r.status_code == 200)
    assert alone.count(b'"actual":-0.0') and alone.count(b'"actual":1,') and alone.count(b'"actual":1.0,')
    # memoized: far fewer loads and raw walks than answers, and far fewer one-number comparisons than alone
    assert batch_loads < len(jobs) // 2 and batch_walks < len(jobs) // 2
    one_by_one = len(compared)
    compared.clear()
    client.post("/v1/batch", json={"jobs": jobs})
    assert len(compared) < one_by_one // 3


def test_students_formulas_in_a_batch_share_its_one_budget(client, monkeypatch):
    """Found by an audit: each check job's formulas were charged against a fresh budget, so 150 jobs of a 499-node
    formula over 100 points did 150 x ~150 MiB of work (a 503 at the deadline). Now the batch's jobs reserve their
    problems' estimates first and the formulas share what is left: past it, a formula is a failed check. (100 jobs:
    each job's check is charged its comparison at every point, cost.CHECK_POINT_BYTES; a stackable formula is
    evaluated once over its stacked points.)"""
    from service.engine.formula import Formula

    job = {
        "model": {"kind": "expression", "formula": "x**2"},
        "domain": {"x": [0, 1]},
        "n_points": 100,
        "submission": {"gradient_formulas": {"x": balanced_sum([f"x*{k}" for k in range(1, 126)])}},
    }
    evaluated = []
    evaluate = Formula.evaluate
    monkeypatch.setattr(Formula, "evaluate", lambda self, *a, **k: evaluated.append(1) or evaluate(self, *a, **k))
    alone = client.post("/v1/batch", json={"jobs": [{"check": job}]}).json["results"][0]
    assert evaluated and "too large" not in alone["checks"][0]["message"]  # one fits the budget: it is graded
    evaluated.clear()
    results = client.post("/v1/batch", json={"jobs": [{"check": job}] * 100}).json["results"]
    assert len(results) == 100 and all(not r["checks"][0]["passed"] for r in results)
    assert all("is too large" in r["checks"][0]["message"] for r in results[-10:])
    assert 0 < len(evaluated) < 100  # each graded formula once over its stacked points, and not all: the budget


def test_deferred_comparisons_are_diagnosed_at_the_checks_tolerance(client):
    """Check jobs of one problem compared together (the vectorized path) get the diagnosis /v1/check gives each:
    the mistake matched at the check's rtol, the closest of two (audit L1)."""
    from test_check import NEAR_ANTISYMMETRIC, SIGN_FLIPPED, TRANSPOSED

    answers = [[[0, -1.0], [1.019, 0]], [[0, -1.019], [1.0, 0]]]
    jobs = [{"check": {**NEAR_ANTISYMMETRIC, "submission": {"gradients": {"W": a}}}} for a in answers]
    results = batch(client, jobs)
    assert [r["checks"][0]["diagnosis"] for r in results] == [SIGN_FLIPPED, TRANSPOSED]
    for job, result in zip(jobs, results, strict=True):
        assert result == client.post("/v1/check", json=job["check"]).json


# --- the batch's budget: jobs charged in job order as they load ------------------------------------------------

BIG = {  # 34 MiB estimated: fits alone, a handful fill the budget
    "model": {"kind": "expression", "formula": "sum(sin(x*y) + x*y)"},
    "inputs": {"x": [[0.5]] * 1000, "y": [[0.25] * 1000]},
    "wrt": ["x"],
}


def network_job(seed: int) -> dict:
    """Audit F6's job: a 64-layer generated network (~20 KB of JSON, ~16,000 keys to load, ~3.1 MiB estimated),
    each job distinct (its dropout_seed), as /tmp/audit2/cost/t23.py built 750 of them."""
    init = {"scheme": "linspace", "seed": 1, "std": 1.0, "mean": 0.0, "value": 1.0, "start": 0.0, "stop": 1.0}
    init["transpose"] = False
    generate = {"X": {**init, "shape": [1, 1]}, "y": {**init, "shape": [1, 1]}}
    generate.update({f"{p}{i}": dict(init) for i in range(1, 65) for p in ("W", "b")})
    layer = {"type": "linear", "out_features": 1, "bias": True, "activation": "leaky_relu", "negative_slope": 0.1}
    model = {
        "kind": "network",
        "layout": "torch",
        "layers": [layer] * 64,
        "loss": {"type": "mse", "reduction": "sum"},
        "generate": generate,
        "l2": {"reg": 0.1, "form": "sum_sq", "include_biases": True},
        "dropout_seed": seed,
        "init": init,
    }
    return {"model": model, "inputs": {}, "dtype": "float64", "include": [], "wrt": ["b1"]}


def test_an_over_budget_batch_stops_loading_at_the_job_that_takes_it_over(client, monkeypatch):
    """Audit F6: every job was validated before any was charged, so 750 network jobs loaded for 6 s before their
    413 named the first 83. Jobs are loaded and charged one by one in job order now: the 413 comes after loading
    the jobs up to the one that takes the batch over, and counts them in job order (check jobs included)."""
    gradient_loads, check_loads = [], []
    load, load_check = batch_view.gradient_request.load, batch_view.load_check
    monkeypatch.setattr(batch_view.gradient_request, "load", lambda job: gradient_loads.append(1) or load(job))
    monkeypatch.setattr(batch_view, "load_check", lambda *args: check_loads.append(1) or load_check(*args))
    over = Limits().max_request_bytes // estimate_cost(load(BIG), Limits()) + 1  # the big job that takes it over
    jobs = [BIG, {"check": CHECK}] * 100
    response = client.post("/v1/batch", data=orjson.dumps({"jobs": jobs}), content_type="application/json")
    assert response.status_code == 413 and response.mimetype == "application/problem+json"
    assert (len(gradient_loads), len(check_loads)) == (over, over - 1)  # not (100, 100)
    assert f"the first {2 * over - 1} of the batch's 200 jobs" in response.json["detail"]


def test_a_batch_that_fits_reserves_every_jobs_estimate(client, monkeypatch):
    """Charging in job order changes no sum: the ledger reserves each accepted job's estimate (a check's with its
    checks), each distinct refused job's estimate work and each job that does not load its errors' work, whatever
    the order of gradients and check jobs."""
    reserved = []
    ledger = batch_view.Ledger
    monkeypatch.setattr(batch_view, "Ledger", lambda amount: reserved.append(amount) or ledger(amount))
    refused = {"model": {"kind": "expression", "formula": "sum(x**2)"}, "inputs": {"x": [0.5] * 101}}
    refused["include"] = ["hessian"]  # 101 rows: over max_hessian_elements, refused by its estimate
    wrong = {"check": {**CHECK, "submission": {"gradients": {"x": 5.0}}}}
    jobs = [{"check": CHECK}, TUTORIAL_NEURON, refused, wrong, TUTORIAL_NEURON, refused, {"model": {}}]
    results = batch(client, jobs)
    assert [("error" in r) for r in results] == [False, False, True, False, False, True, True]
    assert results[2]["error"]["limit"]["name"] == results[5]["error"]["limit"]["name"] == "max_hessian_elements"
    limits = Limits()
    check = check_request.load(CHECK)
    expected = (
        2 * estimate_cost(batch_view.gradient_request.load(TUTORIAL_NEURON), limits)
        + estimate_check(check, limits).total  # the problem's references once, for both of its answers
        + estimate_check(check, limits).parts["response"]
        + 2 * cost.checks_estimate(check).total
        + cost.refused_estimate_bytes(refused["model"], 1, limits)  # once: the second copy shares its estimate
        + cost.error_messages(results[6]["error"]["errors"]) * cost.LOAD_ERROR_BYTES  # the job that does not load
    )
    assert reserved == [expected]


def test_live_over_budget_batch_is_a_413_naming_the_first_jobs_in_job_order(live_server):
    """Audit F6's reproduction, smaller: 5 check jobs, then 115 network jobs of which 82 fit the budget. A
    problem+json 413 naming the first 88 of the 120 jobs: the checks are charged in their place (the batch
    charged all gradients jobs before any check job, and named the first 83)."""
    jobs = [{"check": CHECK}] * 5 + [network_job(seed) for seed in range(115)]
    response = requests.post(
        live_server.url + "/v1/batch",
        data=orjson.dumps({"jobs": jobs}),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413 and response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["limit"]["name"] == "max_request_bytes" and problem["limit"]["breakdown"] == {
        "jobs": problem["limit"]["estimate"]
    }
    assert problem["detail"].startswith("the first 88 of the batch's 120 jobs would allocate about 25")


def test_a_check_job_with_another_key_names_that_key(live_server):
    """A job with a `check` key is a check job: a key beside it is its unknown field (it was read as a gradients
    job: "model, inputs: Missing data", "check: Unknown field"). The batch's other jobs still run."""
    jobs = [{"check": CHECK, "weight": 2}, {"check": CHECK}, {"check": CHECK, "note": "a", "points": 1}]
    response = requests.post(live_server.url + "/v1/batch", json={"jobs": jobs}, timeout=60)
    assert response.status_code == 200, response.text
    first, second, third = response.json()["results"]
    assert first["error"]["status"] == 400 and first["error"]["type"] == "/problems/invalid-request"
    assert first["error"]["errors"] == {"weight": ["Unknown field."]}
    assert second["score"] == second["max_score"] == 1.0
    assert third["error"]["errors"] == {"note": ["Unknown field."], "points": ["Unknown field."]}
