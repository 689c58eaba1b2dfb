"""POST /v1/grade: a student's answers graded against an instructor's problem file, in a platform's format."""

from __future__ import annotations

from flask import Blueprint, current_app

from schemas.platforms import (
    PLATFORM_RESPONSES,
    AutolabResultsSchema,
    CodeRunnerResultsSchema,
    GradedResultSchema,
    GradescopeResultsSchema,
    PrairieLearnResultsSchema,
)
from schemas.problems import GradeQuerySchema, GradeRequestSchema

from ..jsonio import read_json
from ..observability import compute_timer
from ..openapi import operation
from ..platforms import render
from ..problems import check_raw, grade_file
from .query import load_query

bp = Blueprint("grade", __name__)
grade_request = GradeRequestSchema()
grade_query = GradeQuerySchema()
RESULTS = [
    GradedResultSchema,
    GradescopeResultsSchema,
    PrairieLearnResultsSchema,
    AutolabResultsSchema,
    CodeRunnerResultsSchema,
]


@bp.post("/v1/grade")
@operation(
    "Grade answers against a problem file; the answer is the platform's results document",
    {"oneOf": RESULTS},
    ok="The platform's results document",
    body=GradeRequestSchema,
    query=GradeQuerySchema,
    errors=(400, 413, 415, 422, 503),
    description="""`problem` is the instructor's problem file (YAML or JSON, sent as JSON); a problem file that does
not validate or cannot be computed is a 400/422 `/problems/invalid-problem` problem with
`party: instructor` (never a student's score). `answers` may be anything: a missing or mis-shaped answer is a failed
check with a message; an answer that cannot be read as one of the expected form (mistyped, an
unparsable formula: a format error) is too, except on PrairieLearn, where it is not gradable and
costs no attempt unless the problem says `format_errors: failed_test`. Checks that
are `hidden`, or `after_due_date` / `after_published` and not in `released`, are not shown in what the student
reads (Gradescope gets them with their visibility and hides them itself) but count in the score, which is the
grade; a summary of the shown checks says that others count too. The problems share
one cost budget (MAX_REQUEST_BYTES) and one deadline (MAX_WALL_SECONDS).
""",
)
def grade():
    """Grade a student's answers against an instructor's problem file, in a platform's results format."""
    fmt = load_query(grade_query)["format"]
    body, limits = read_json(), current_app.config["LIMITS"]
    if isinstance(body, dict):
        check_raw(body.get("problem"), limits)
    spec = grade_request.load(body)
    with compute_timer("grade"):
        result = grade_file(spec, limits)
    return PLATFORM_RESPONSES[fmt].dump(render(fmt, result))
