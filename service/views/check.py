"""POST /v1/check: grade a submission against autograd, answered as JSON, Gradescope or PrairieLearn."""
from __future__ import annotations

from flask import Blueprint, current_app, request

from schemas.grading import (
    CheckQuerySchema,
    CheckRequestSchema,
    CheckResponseSchema,
    GradescopeResultsSchema,
    PrairieLearnResultsSchema,
)

from ..engine.check import grade
from ..jsonio import read_json
from ..observability import compute_timer
from ..platforms import FORMATTERS

bp = Blueprint("check", __name__)
check_request = CheckRequestSchema()
check_query = CheckQuerySchema()
RESPONSES = {
    "json": CheckResponseSchema(),
    "gradescope": GradescopeResultsSchema(),
    "prairielearn": PrairieLearnResultsSchema(),
}


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
        result = grade(spec, current_app.config["LIMITS"])
    return RESPONSES[fmt].dump(FORMATTERS[fmt](result))
