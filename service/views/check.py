"""POST /v1/check: grade a submission against autograd, answered as JSON, Gradescope or PrairieLearn."""

from __future__ import annotations

from flask import Blueprint, current_app

from schemas.grading import CheckQuerySchema, CheckRequestSchema, CheckResponseSchema
from schemas.platforms import GradescopeResultsSchema, PrairieLearnResultsSchema

from ..engine import cost
from ..engine.check import grade
from ..jsonio import Encoded, read_json
from ..observability import compute_timer
from ..openapi import operation
from ..platforms import FORMATTERS
from .check_loading import load_check, problem_for
from .query import load_query

bp = Blueprint("check", __name__)
check_query = CheckQuerySchema()
RESPONSES = {
    "json": CheckResponseSchema(),
    "gradescope": GradescopeResultsSchema(),
    "prairielearn": PrairieLearnResultsSchema(),
}
# grade() already returns CheckResponseSchema's shape with JSON-ready values, so its marshmallow dump only
# orders the keys and casts the Float fields; check_body() does just that, at ~1/20 of the cost (~15 % of a
# /v1/check, docs/performance.md). tests/test_refcache.py checks the two give the same bytes.
CHECK_KEYS = tuple(RESPONSES["json"].dump_fields)
CHECK_FLOATS = ("score", "max_score", "rtol", "atol")
RESULT_KEYS = tuple(RESPONSES["json"].dump_fields["checks"].inner.schema.dump_fields)
RESULT_FLOATS = ("rtol", "atol", "points", "max_points", "abs_error", "rel_error")
_ORDERED: set[tuple[str, ...]] = set()  # a check result's keys seen to be RESULT_KEYS' subset in their order
# the whole grade's verdict in every format: a platform's body may leave hidden checks out (PrairieLearn's does)
PASSED_HEADER = {
    "Grade-Passed": {
        "description": "`true` when every check passed (hidden ones too) and the score is the maximum, else `false`, "
        "whatever the format: `gradsvc check` exits on it",
        "schema": {"type": "string", "enum": ["true", "false"]},
    }
}


@bp.post("/v1/check")
@operation(
    "Grade expected numbers and derivative formulas against autograd, at one or many points",
    {"oneOf": [CheckResponseSchema, GradescopeResultsSchema, PrairieLearnResultsSchema]},
    ok="Per-check verdicts and the score, in the requested format",
    body=CheckRequestSchema,
    query=CheckQuerySchema,
    errors=(400, 413, 415, 422, 503),
    headers=PASSED_HEADER,
    description="""The reference is autograd in float64 at every point. A check passes when
|actual - expected| <= atol + rtol * |expected| at every element of every point
(defaults rtol 1e-4, atol 1e-6; per request and per check). A missing or mis-shaped
answer, or a formula that does not evaluate, is a failed check with a message, not an error.
`?format=gradescope` answers a Gradescope results.json body, `?format=prairielearn` a
PrairieLearn external grader result. The `Grade-Passed` header says whether the whole grade passed, in
every format (PrairieLearn's result leaves hidden checks out).
""",
)
def check():
    """Grade a submission (numbers and/or derivative formulas) against autograd."""
    fmt = load_query(check_query)["format"]
    body, limits = read_json(), current_app.config["LIMITS"]
    cost.check_raw(body, limits)
    answers = cost.answers_estimate(body, limits)  # nested past a tensor, or ungraded: priced before they load
    answers.require(limits)
    spec, raw, problem = load_check(body, limits)
    checks = cost.checks_estimate(spec).plus(answers)
    checks.require(limits)  # checks alone over the budget: a 413 before their problem is built
    with compute_timer(spec["model"]["kind"]):
        result = grade(spec, limits, problem or problem_for(spec, raw, limits, checks), checks)
    body = check_body(result) if fmt == "json" else RESPONSES[fmt].dump(FORMATTERS[fmt](result))
    return body, 200, {"Grade-Passed": "true" if result["passed"] else "false"}


def check_body(result: dict) -> Encoded:
    """CheckResponseSchema().dump(result), for a result of grade()."""
    body = Encoded((key, result[key]) for key in CHECK_KEYS if key in result)  # first_wrong: networks only
    for key in CHECK_FLOATS:
        body[key] = float(body[key])
    checks = []
    for check in result["checks"]:
        keys = tuple(check)
        if keys in _ORDERED:  # RESULT_KEYS' order already, nothing else: the comprehension's copy
            out = dict(check)
        else:
            out = {key: check[key] for key in RESULT_KEYS if key in check}  # tolerance, diagnosis: when they apply
            if tuple(out) == keys and len(_ORDERED) < 64:
                _ORDERED.add(keys)
        for key in RESULT_FLOATS:
            if out[key] is not None:
                out[key] = float(out[key])
        checks.append(out)
    body["checks"] = checks
    return body
