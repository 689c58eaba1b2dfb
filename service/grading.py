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
)
from schemas.platforms import PLATFORM_RESPONSES
from schemas.problems import GradeQuerySchema, GradeRequestSchema

from . import platforms, problems
from .api import read_json
from .engine import batch as batch_engine
from .engine import grading as engine
from .engine.errors import EngineError
from .engine.limits import Deadline
from .errors import BodyTooLarge, engine_problem, problem, validation_problem
from .observability import compute_timer

bp = Blueprint("grading", __name__)
log = logging.getLogger(__name__)
check_request = CheckRequestSchema()
check_query = CheckQuerySchema()
gradient_request = GradientRequestSchema()
gradient_response = GradientResponseSchema()
batch_request = BatchRequestSchema()
RESPONSES = {"json": CheckResponseSchema(), "gradescope": PLATFORM_RESPONSES["gradescope"],
             "prairielearn": PLATFORM_RESPONSES["prairielearn"]}
FORMATTERS = {"json": lambda r: r, "gradescope": lambda r: platforms.to_gradescope(platforms.from_check(r)),
              "prairielearn": lambda r: platforms.to_prairielearn(platforms.from_check(r))}
grade_request = GradeRequestSchema()
grade_query = GradeQuerySchema()


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
    return RESPONSES[fmt].dump(FORMATTERS[fmt](result))


@bp.post("/v1/grade")
def grade():
    """Grade a student's answers against an instructor's problem file, in a platform's results format.
    ---
    post:
      summary: Grade answers against a problem file; the answer is the platform's results document
      description: |
        `problem` is the instructor's problem file (YAML or JSON, sent as JSON); a problem file that does
        not validate or cannot be computed is a 400/422 `/problems/invalid-problem` problem with
        `party: instructor` (never a student's score). `answers` may be anything: a missing, mistyped or
        mis-shaped answer, or an unparsable formula, is a failed check with a message (PrairieLearn: not
        gradable, no attempt charged, unless the problem says `format_errors: failed_test`). Checks that
        are `hidden`, or `after_due_date` / `after_published` and not in `released`, are neither shown nor
        counted in what the student reads; Gradescope gets them with their visibility.
      parameters:
        - in: query
          schema: GradeQuerySchema
      requestBody:
        required: true
        content:
          application/json:
            schema: GradeRequestSchema
      responses:
        200:
          description: The platform's results document
          content:
            application/json:
              schema:
                oneOf:
                  - GradedResultSchema
                  - GradescopeResultsSchema
                  - PrairieLearnResultsSchema
                  - AutolabResultsSchema
                  - CodeRunnerResultsSchema
        400: {$ref: '#/components/responses/BadRequest'}
        413: {$ref: '#/components/responses/TooLarge'}
        415: {$ref: '#/components/responses/UnsupportedMediaType'}
        422: {$ref: '#/components/responses/NotComputable'}
        503: {$ref: '#/components/responses/Unavailable'}
    """
    fmt = grade_query.load(request.args)["format"]
    body = grade_request.load(read_json())
    with compute_timer("grade"):
        result = problems.grade_file(body, current_app.config["LIMITS"])
    return PLATFORM_RESPONSES[fmt].dump(platforms.render(fmt, result))


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
    return {"results": results}


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
        results[i] = _problem_for(out, i) if isinstance(out, Exception) else gradient_response.dump(out)
    for i, spec in check_jobs:
        try:
            deadline.check()
            results[i] = RESPONSES["json"].dump(engine.grade(spec, limits))
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
