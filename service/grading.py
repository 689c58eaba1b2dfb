"""Grading views: POST /v1/check grades a submission against autograd; POST /v1/batch runs many jobs."""
from __future__ import annotations

import logging

from flask import Blueprint, current_app, request
from marshmallow import ValidationError

from schemas import GradientRequestSchema, GradientResponseSchema
from schemas.grading import (
    BatchRequestSchema,
    CheckQuerySchema,
    CheckRequestSchema,
    CheckResponseSchema,
    GradescopeResultsSchema,
    PrairieLearnResultsSchema,
)

from .api import RESPONSE_KEYS, read_json
from .engine import batch as batch_engine
from .engine import grading as engine
from .engine.errors import EngineError
from .engine.limits import Deadline
from .errors import BodyTooLarge, engine_problem, problem, validation_problem
from .jsonio import Encoded
from .observability import compute_timer

bp = Blueprint("grading", __name__)
log = logging.getLogger(__name__)
check_request = CheckRequestSchema()
check_query = CheckQuerySchema()
gradient_request = GradientRequestSchema()
gradient_response = GradientResponseSchema()
batch_request = BatchRequestSchema()
RESPONSES = {
    "json": CheckResponseSchema(),
    "gradescope": GradescopeResultsSchema(),
    "prairielearn": PrairieLearnResultsSchema(),
}
FORMATTERS = {"json": lambda r: r, "gradescope": engine.to_gradescope, "prairielearn": engine.to_prairielearn}
# engine.grade() already returns CheckResponseSchema's shape with JSON-ready values, so its marshmallow dump only
# orders the keys and casts the Float fields; check_body() does just that, at ~1/20 of the cost (~15 % of a
# /v1/check, docs/PERFORMANCE.md). tests/test_refcache.py checks the two give the same bytes.
CHECK_KEYS = tuple(RESPONSES["json"].dump_fields)
CHECK_FLOATS = ("score", "max_score", "rtol", "atol")
RESULT_KEYS = tuple(RESPONSES["json"].dump_fields["checks"].inner.schema.dump_fields)
RESULT_FLOATS = ("rtol", "atol", "points", "max_points", "abs_error", "rel_error")


def check_body(result: dict) -> Encoded:
    """CheckResponseSchema().dump(result), for a result of engine.grade()."""
    body = Encoded((key, result[key]) for key in CHECK_KEYS)
    for key in CHECK_FLOATS:
        body[key] = float(body[key])
    checks = []
    for check in result["checks"]:
        out = {key: check[key] for key in RESULT_KEYS}
        for key in RESULT_FLOATS:
            if out[key] is not None:
                out[key] = float(out[key])
        checks.append(out)
    body["checks"] = checks
    return body


@bp.post("/v1/check")
def check():
    """Grade a submission (numbers and/or derivative formulas) against autograd.
    ---
    post:
      summary: Grade expected numbers and derivative formulas against autograd, at one or many points
      description: |
        The reference is autograd in float64 at every point. A check passes when
        |actual - expected| <= atol + rtol * |expected| at every element of every point
        (defaults rtol 1e-4, atol 1e-6; per request and per check). A missing or mis-shaped
        answer, or a formula that does not evaluate, is a failed check with a message, not an error.
        `?format=gradescope` answers a Gradescope results.json body, `?format=prairielearn` a
        PrairieLearn external grader result.
      parameters:
        - in: query
          schema: CheckQuerySchema
      requestBody:
        required: true
        content:
          application/json:
            schema: CheckRequestSchema
      responses:
        200:
          description: Per-check verdicts and the score, in the requested format
          content:
            application/json:
              schema:
                oneOf:
                  - CheckResponseSchema
                  - GradescopeResultsSchema
                  - PrairieLearnResultsSchema
        400: {$ref: '#/components/responses/BadRequest'}
        413: {$ref: '#/components/responses/TooLarge'}
        415: {$ref: '#/components/responses/UnsupportedMediaType'}
        422: {$ref: '#/components/responses/NotComputable'}
        503: {$ref: '#/components/responses/Unavailable'}
    """
    fmt = check_query.load(request.args)["format"]
    spec = check_request.load(read_json())
    with compute_timer(spec["model"]["kind"]):
        result = engine.grade(spec, current_app.config["LIMITS"])
    return check_body(result) if fmt == "json" else RESPONSES[fmt].dump(FORMATTERS[fmt](result))


@bp.post("/v1/batch")
def batch():
    """Run many gradients and check jobs; each job's result or problem in its place.
    ---
    post:
      summary: Many /v1/gradients and /v1/check jobs in one request, results in job order
      description: |
        A job that is an object with the single key `check` is a check request; any other job is a
        gradients request. A job that fails gives `{"error": <problem>}` in its place; the others still
        run. More than MAX_BATCH_JOBS jobs is a 413. Neuron gradients jobs with the same settings and
        shapes (include at most `intermediates`, loss `bce`) run as one vectorized torch pass with results
        identical to running them one by one.
      requestBody:
        required: true
        content:
          application/json:
            schema: BatchRequestSchema
      responses:
        200:
          description: One result per job, in job order
          content:
            application/json:
              schema:
                type: object
                required: [results]
                properties:
                  results:
                    type: array
                    items:
                      oneOf:
                        - GradientResponseSchema
                        - CheckResponseSchema
                        - BatchErrorSchema
        400: {$ref: '#/components/responses/BadRequest'}
        413: {$ref: '#/components/responses/TooLarge'}
        415: {$ref: '#/components/responses/UnsupportedMediaType'}
    """
    jobs = batch_request.load(read_json())["jobs"]
    limit = current_app.config["MAX_BATCH_JOBS"]
    if len(jobs) > limit:
        raise BodyTooLarge(f"The batch has {len(jobs)} jobs; the limit is {limit}.", limit={"name": "max_batch_jobs", "value": limit})
    with compute_timer("batch"):
        results = run_jobs(jobs, current_app.config["LIMITS"])
    # every result is an encoded engine body or a problem (strings and the configured limits): no second walk
    return Encoded(results=results)


def gradient_body(result: dict) -> dict:
    """GradientResponseSchema().dump(result) for an engine.compute() result: the keys in the schema's order."""
    return {key: result[key] for key in RESPONSE_KEYS if key in result}


def run_jobs(jobs: list, limits) -> list[dict]:
    """Validate each job, run the gradients jobs (vectorized where possible) and the checks, in order."""
    results: list[dict | None] = [None] * len(jobs)
    gradient_jobs: list[tuple[int, dict]] = []
    check_jobs: list[tuple[int, dict]] = []
    for i, job in enumerate(jobs):
        is_check = isinstance(job, dict) and set(job) == {"check"}
        try:
            if is_check:
                check_jobs.append((i, check_request.load(job["check"])))
            else:
                gradient_jobs.append((i, gradient_request.load(job)))
        except ValidationError as err:
            results[i] = {"error": validation_problem(ValidationError({"check": err.messages} if is_check else err.messages))}
    deadline = Deadline(limits.max_wall_seconds)  # the batch as a whole gets one wall-time budget
    outputs = batch_engine.compute_many([spec for _, spec in gradient_jobs], limits, deadline)
    for (i, _), out in zip(gradient_jobs, outputs):
        results[i] = _problem_for(out, i) if isinstance(out, Exception) else gradient_body(out)
    for i, spec in check_jobs:
        try:
            deadline.check()
            results[i] = check_body(engine.grade(spec, limits))
        except Exception as err:  # noqa: BLE001 - one job's failure must not take the others down
            results[i] = _problem_for(err, i)
    return results


def _problem_for(err: Exception, index: int) -> dict:
    """A failed job's `error`: the engine error's problem, or a 500 without internals for a bug."""
    if isinstance(err, EngineError):
        return {"error": engine_problem(err)}
    log.error("batch job %d failed", index, exc_info=err)
    return {"error": _crash()}


def _crash() -> dict:
    return problem(500, "Internal Server Error", "The server failed to compute this job.")
