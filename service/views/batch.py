"""POST /v1/batch: many gradients and check jobs in one request, each job's result or problem in its place."""

from __future__ import annotations

import logging

import orjson
from flask import Blueprint, current_app
from marshmallow import ValidationError

from schemas import GradientRequestSchema, GradientResponseSchema
from schemas.grading import (
    MAX_CHECKS,
    MAX_POINTS,
    BatchErrorSchema,
    BatchRequestSchema,
    CheckJobSchema,
    CheckResponseSchema,
)

from ..engine import cost
from ..engine.batch import compute_many
from ..engine.check import Ledger, Problem, grade_many
from ..engine.check import estimate as estimate_check
from ..engine.compute import estimate_cost
from ..engine.errors import EngineError
from ..engine.limits import Deadline
from ..errors import engine_problem, problem, validation_problem
from ..jsonio import Encoded, read_json
from ..observability import compute_timer
from ..openapi import operation
from .check import check_body
from .check_loading import check_shape, load_check, problem_for
from .gradients import gradient_body

bp = Blueprint("batch", __name__)
log = logging.getLogger(__name__)
batch_request = BatchRequestSchema()
gradient_request = GradientRequestSchema()
check_job = CheckJobSchema()


BATCH_RESPONSE = {
    "type": "object",
    "required": ["results"],
    "properties": {
        "results": {
            "type": "array",
            "items": {"oneOf": [GradientResponseSchema, CheckResponseSchema, BatchErrorSchema]},
        }
    },
}


@bp.post("/v1/batch")
@operation(
    "Many /v1/gradients and /v1/check jobs in one request, results in job order",
    BATCH_RESPONSE,
    ok="One result per job, in job order",
    body=BatchRequestSchema,
    errors=(400, 413, 415, 503),
    description="""A job that is an object with a `check` key is a check request (another key beside `check` is
an unknown field); any other job is a gradients request. A job that fails gives `{"error": <problem>}` in its
place; the others still run. More than MAX_BATCH_JOBS jobs is a 413. Neuron gradients jobs with the same settings and
shapes (include at most `intermediates`, loss `bce`) run as one vectorized torch pass with results
identical to running them one by one.
""",
)
def batch():
    """Run many gradients and check jobs; each job's result or problem in its place."""
    body, limits = read_json(), current_app.config["LIMITS"]
    shapes = None  # set wherever the load below succeeds: `jobs` is a list then
    if isinstance(body, dict) and isinstance(body.get("jobs"), list):
        cost.require(
            limits, "max_batch_jobs", len(body["jobs"]), f"the batch has {len(body['jobs'])} jobs", cost.HINTS["jobs"]
        )
        shapes = [check_shape(job["check"]) if is_check_job(job) else None for job in body["jobs"]]
        _checks_within_budget(body["jobs"], shapes, limits)
    jobs = batch_request.load(body)["jobs"]  # the same job objects, in the same order
    del body  # its lists (8 bytes a number; the numbers are the jobs') are freed before the computation
    with compute_timer("batch"):
        results = run_jobs(jobs, limits, shapes)
    # every result is an encoded engine body or a problem (strings and the configured limits): no second walk
    return Encoded(results=results)


def run_jobs(jobs: list, limits, shapes: list) -> list[dict]:
    """Load and charge each job in job order, then run the gradients jobs (vectorized where possible) and the checks.

    Each job is charged against the batch's budget as soon as it loads (_Budget), so a batch over the budget is a
    413 once the jobs loaded so far take it over: loading costs ~4 µs a key, and 750 jobs of a 64-layer network
    took 6 s to load before the 413 named the first 83. Check jobs with the same problem (PROBLEM_FIELDS: a class's
    answers to one exercise) share one estimate and one Problem (model, points, references); each job's result is
    what it would be on its own. `jobs` (the raw jobs) is emptied as they load; `shapes`: each job's check_shape()
    (None for a gradients job)."""
    results: list[dict | None] = [None] * len(jobs)
    gradient_jobs: list[tuple[int, dict]] = []
    check_jobs: list[tuple[int, dict]] = []
    keys: dict[int, bytes] = {}
    loaded_problems: dict[bytes, dict | None] = {}
    loaded_answers: dict[tuple, dict | None] = {}
    # a check job's shape (check_shape) -> what the cost model charged its answers, and its checks' estimate: walks of
    # its JSON's sizes, keys and nesting, the same for every job of that shape (a class's answers to one exercise)
    walked: dict[tuple, tuple[int, cost.Estimate]] = {}
    kept: dict[bytes, Problem] = {}
    budget = _Budget(len(jobs), limits)
    for i, job in enumerate(jobs):
        jobs[i] = None  # the raw job's lists (8 bytes a number) go once it is loaded, before any job runs
        is_check = is_check_job(job)
        # only a key beside `check` can fail the envelope: a lone `check` skips the schema's ~10 µs a job
        envelope = check_job.validate(job) if is_check and len(job) > 1 else None
        if envelope:  # a key beside `check`: named, not read as a gradients request's
            results[i] = {"error": validation_problem(ValidationError(envelope))}
            budget.failed(i, envelope)
            continue
        shape = shapes[i]
        seen = walked.get(shape) if shape is not None else None
        if is_check:
            answers = budget.answers(i, job["check"], seen[0] if seen else None)
        try:
            if seen is None:
                cost.check_raw(job["check"] if is_check else job, limits)
            if is_check:
                spec, keys[i], problem = load_check(job["check"], limits, loaded_problems, loaded_answers, shape)
                if problem is not None:
                    kept[keys[i]] = problem
            else:
                spec = gradient_request.load(job)
        except ValidationError as err:
            messages = {"check": err.messages} if is_check else err.messages
            results[i] = {"error": validation_problem(ValidationError(messages))}
            budget.failed(i, messages)
            continue
        except EngineError as err:
            results[i] = {"error": engine_problem(err)}
            budget.refused_at_load(i)
            continue
        # outside the try: the batch's own 413 is an EngineError too, and is no job's error
        if is_check:
            checks = seen[1] if seen else cost.checks_estimate(spec)  # this job's checks, on its problem's estimate
            if shape is not None and seen is None:
                walked[shape] = answers, checks
            refused = budget.check(i, spec, keys[i], checks)
        else:
            refused = budget.gradients(i, spec)
        if refused is not None:
            results[i] = {"error": engine_problem(refused)}
        else:
            (check_jobs if is_check else gradient_jobs).append((i, spec))
    job = None  # the last raw job, too, goes before the computation
    ledger = Ledger(budget.charged)  # the answers' formulas and diagnoses are charged against what the jobs left
    ledger.share_spellings(len(check_jobs))
    deadline = Deadline(limits.max_wall_seconds)  # the batch as a whole gets one wall-time budget
    outputs = compute_many([spec for _, spec in gradient_jobs], limits, deadline)
    for (i, _), out in zip(gradient_jobs, outputs, strict=True):
        results[i] = _problem_for(out, i) if isinstance(out, Exception) else gradient_body(out)
    groups: dict[bytes, list[tuple[int, dict]]] = {}
    for i, spec in check_jobs:
        groups.setdefault(keys[i], []).append((i, spec))
    for key, group in groups.items():
        try:
            deadline.check()
            problem = kept.get(key) or problem_for(group[0][1], key, limits)
        except Exception as err:  # noqa: BLE001 - every job of this problem fails the same way, as it would alone
            for i, _ in group:
                results[i] = _problem_for(err, i)
            continue
        outs = grade_many([spec for _, spec in group], limits, problem, deadline.check, ledger)
        for (i, _), out in zip(group, outs, strict=True):
            results[i] = _problem_for(out, i) if isinstance(out, Exception) else check_body(out)
    return results


def is_check_job(job) -> bool:
    """A job with a `check` key is a check request; any other job is a gradients request."""
    return isinstance(job, dict) and "check" in job


def _checks_within_budget(jobs: list, shapes: list, limits) -> None:
    """Every check job's results and their comparisons at every point (cost.checks_bytes), counted on the raw JSON
    before any job loads: a batch of 1000 jobs of 400 checks is a 413 at once rather than after loading 400,000
    checks (~6 s). A job over MAX_CHECKS or MAX_POINTS is a 400 in its place, and counts the caps. Counted once per
    job shape (`shapes`: check_shape(), its keys and its problem's JSON, which are all the counts read)."""
    counted: dict[tuple, tuple[int, int]] = {}
    checks = []
    for job, shape in zip(jobs, shapes, strict=True):
        if not is_check_job(job):
            continue
        count = counted.get(shape) if shape is not None else None
        if count is None:
            check = job["check"]
            count = min(cost.raw_checks_count(check), MAX_CHECKS), min(cost.raw_points_count(check), MAX_POINTS)
            if shape is not None:
                counted[shape] = count
        checks.append(count)
    count = sum(n for n, _ in checks)
    total = sum(cost.checks_bytes(n, points) for n, points in checks)
    cost.batch_require(limits, total, count, "checks", hint=cost.HINTS["jobs"])


def _gradients_key(spec: dict) -> bytes:
    """Everything a gradients job's estimate depends on (its shapes, never its values): equal keys, equal
    estimates, so a batch estimates each distinct job once."""
    shapes = lambda tensors: [(name, data.shape) for name, data in (tensors or {}).items()]  # noqa: E731
    dout = spec.get("dout")
    return orjson.dumps(
        [
            spec["model"],
            shapes(spec["inputs"]),
            spec.get("wrt"),
            spec["mode"],
            spec["dtype"],
            spec["include"],
            None if dout is None else [len(dout.values), dout.shape],
            shapes(spec.get("tangents")),
        ]
    )


def _distinct_point_shapes(spec: dict) -> int:
    """The shape sets a check's estimate walks (cost.distinct_shapes): what charging one that refused it counts."""
    points = spec.get("points") or [spec.get("inputs", {})]
    return len(cost.distinct_shapes([{name: data.shape for name, data in point.items()} for point in points]))


class _Budget:
    """The batch's one request budget, charged in job order as each job loads; the whole batch is a 413 ("the first
    N of the batch's M jobs") once the running total is over it, before the rest load.

    A job is charged its estimate (a gradients job's at least cost.JOB_BYTES; a check's: its problem's plus its checks',
    and, before it loads, its answers' levels past a tensor's and the answers no check names: answers()); one the cost
    model refuses gets its problem in place and is charged the estimate's own work (cost.refused_estimate_bytes), or
    its walk if refused as it loads (refused_at_load()); one that does not load, its errors' (failed()). Each distinct
    job (gradients: _gradients_key; checks: the problem) is estimated, and charged that work, once."""

    def __init__(self, jobs: int, limits) -> None:
        self.jobs, self.limits, self.charged = jobs, limits, 0
        self.gradient_estimates: dict[bytes, int | EngineError] = {}
        self.check_estimates: dict[bytes, cost.Estimate | EngineError] = {}
        self.problems_charged: set[bytes] = set()  # the problems whose references are in `charged`

    def gradients(self, index: int, spec: dict) -> EngineError | None:
        """Charge the loaded gradients job at `index`; its refusal, if the cost model refuses it."""
        key = _gradients_key(spec)
        fresh = key not in self.gradient_estimates
        if fresh:
            self.gradient_estimates[key] = _estimate(estimate_cost, spec, self.limits)
        estimate = self.gradient_estimates[key]
        if isinstance(estimate, EngineError):
            self._charge(index, cost.refused_estimate_bytes(spec["model"], 1, self.limits) if fresh else 0)
            return estimate
        self._charge(index, max(estimate, cost.JOB_BYTES))  # a job costs its load and its JSON whatever it computes
        return None

    def check(self, index: int, spec: dict, key: bytes, checks: cost.Estimate) -> EngineError | None:
        """Charge the loaded check job at `index` (its problem: `key`; its checks: cost.checks_estimate(spec)); its
        refusal, if the cost model refuses it."""
        fresh = key not in self.check_estimates
        if fresh:
            self.check_estimates[key] = _estimate(estimate_check, spec, self.limits)
        estimate = self.check_estimates[key]
        if not isinstance(estimate, EngineError):
            try:
                checks.require(self.limits, estimate.total)
            except EngineError as err:
                estimate = err
        if isinstance(estimate, EngineError):
            refused = cost.refused_estimate_bytes(spec["model"], _distinct_point_shapes(spec), self.limits)
            self._charge(index, refused if fresh else 0)
            return estimate
        # the problem's references once (its jobs share one Problem: grade_many), every job its response and checks
        shared = estimate.parts["response"] if key in self.problems_charged else estimate.total
        self.problems_charged.add(key)
        self._charge(index, shared + checks.total)
        return None

    def answers(self, index: int, check, known: int | None = None) -> int:
        """Charge a check job's answers nested deeper than a tensor, and those no check names (cost.answers_estimate),
        before they load: each level of a deep one is read by every walk of it, ~5 µs a level (1000 jobs answering
        900 deep took 6-8 s); an ungraded one is loaded and warned about (1000 jobs of 256: 4.7-7.0 s, 18.7 MB).
        `known`: that charge, for a job of a shape charged before (check_shape); returns the charge."""
        amount = cost.answers_estimate(check, self.limits).total if known is None else known
        self._charge(index, amount)
        return amount

    def refused_at_load(self, index: int) -> None:
        """Charge a job the cost model refused as it loaded (cost.check_raw) its walk and its problem
        (cost.LOAD_REFUSED_BYTES)."""
        self._charge(index, cost.LOAD_REFUSED_BYTES)

    def failed(self, index: int, messages: dict) -> None:
        """Charge a job that did not load the work of its errors (cost.LOAD_ERROR_BYTES a message)."""
        self._charge(index, cost.error_messages(messages) * cost.LOAD_ERROR_BYTES)

    def _charge(self, index: int, amount: int) -> None:
        self.charged += amount
        if self.charged > self.limits.max_request_bytes:
            first = index + 1
            cost.batch_require(self.limits, self.charged, first, of=self.jobs if first < self.jobs else None)


def _estimate(estimate, spec: dict, limits) -> int | cost.Estimate | EngineError:
    """A job's estimate (bytes; a check's by part), or the EngineError that refuses it (kept, to answer its equal
    jobs too)."""
    try:
        return estimate(spec, limits)
    except EngineError as err:
        return err


def _problem_for(err: Exception, index: int) -> dict:
    """A failed job's `error`: the engine error's problem, or a 500 without internals for a bug."""
    if isinstance(err, EngineError):
        return {"error": engine_problem(err)}
    log.error("batch job %d failed", index, exc_info=err)
    return {"error": _crash()}


def _crash() -> dict:
    return problem(500, "Internal Server Error", "The server failed to compute this job.")
