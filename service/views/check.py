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

from ..engine import cost
from ..engine.check import grade
from ..jsonio import read_json
from ..observability import compute_timer
from ..openapi import operation
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
@operation(
    "Grade expected numbers and derivative formulas against autograd, at one or many points",
    {"oneOf": [CheckResponseSchema, GradescopeResultsSchema, PrairieLearnResultsSchema]},
    ok="Per-check verdicts and the score, in the requested format",
    body=CheckRequestSchema, query=CheckQuerySchema, errors=(400, 413, 415, 422, 503),
    description="""The reference is autograd in float64 at every point. A check passes when
|actual - expected| <= atol + rtol * |expected| at every element of every point
(defaults rtol 1e-4, atol 1e-6; per request and per check). A missing or mis-shaped
answer, or a formula that does not evaluate, is a failed check with a message, not an error.
`?format=gradescope` answers a Gradescope results.json body, `?format=prairielearn` a
PrairieLearn external grader result.
""",
)
def check():
    """Grade a submission (numbers and/or derivative formulas) against autograd."""
    fmt = check_query.load(request.args)["format"]
    body = read_json()
    cost.check_raw(body, current_app.config["LIMITS"])
    spec = check_request.load(body)
    with compute_timer(spec["model"]["kind"]):
        result = grade(spec, current_app.config["LIMITS"])
    return RESPONSES[fmt].dump(FORMATTERS[fmt](result))
