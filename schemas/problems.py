"""Instructor problem files and POST /v1/grade: what a course's autograder sends, validated apart from the answers.

A problem file (YAML or JSON) holds one problem, or several under `problems`; each is a /v1/check body without
`submission`, with a `key` (the answers file's key, Autolab's problem name) and checks that carry points,
tolerances, a `visibility`, `tags`, and optionally the platform's `answer` name. Errors found here are the
instructor's, never the student's: the service answers `/problems/invalid-problem`.
"""

from __future__ import annotations

from marshmallow import EXCLUDE, ValidationError, fields, pre_load, validate, validates_schema

from .fields import CappedSchema, ErrorBoundedDict, ErrorBoundedList, StrictBoolean, StrictInteger, ValidatedLater
from .grading import (
    CHECK_NAME_PATTERN,
    FEEDBACK_DESCRIPTION,
    FEEDBACK_MODES,
    VISIBILITIES,
    CheckOptionsSchema,
    CheckRequestSchema,
)

PLATFORMS = ("json", "gradescope", "prairielearn", "autolab", "coderunner")
FORMAT_ERROR_POLICIES = ("not_gradable", "failed_test")
KEY_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
ANSWER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
MAX_PROBLEMS = 50
MAX_PROBLEM_CHECKS = 100
CHECK_NAME_ERROR = "Check names are loss, gradients.<input>, intermediates.<name> or gradient_formulas.<input>."
RELEASABLE = tuple(v for v in VISIBILITIES if v.startswith("after_"))
MAX_RELEASED = 16  # each of RELEASABLE, repeats allowed; it had no cap (1 M items: 876 MiB to list their errors)
format_errors = fields.String(
    validate=validate.OneOf(FORMAT_ERROR_POLICIES),
    metadata={
        "description": "PrairieLearn: a mistyped answer or unparsable formula makes the submission "
        "not gradable (no attempt charged; default) or a failed test"
    },
)


class ProblemCheckSchema(CheckOptionsSchema):
    """One graded check of a problem: points, tolerances, visibility, plus tags and the platform's answer name."""

    tags = fields.List(fields.String(validate=validate.Length(min=1, max=64)), validate=validate.Length(max=20))
    answer = fields.String(
        validate=validate.Regexp(ANSWER_PATTERN, error="Answer names are identifiers (letters, digits, _ and -)."),
        metadata={"description": "the answer's name on the platform (PrairieLearn answers-name, a flat answers key)"},
    )


class ProblemSchema(CheckRequestSchema):
    """One problem: a /v1/check body without `submission`, whose `checks` are required and say what is graded."""

    class Meta:
        exclude = ("submission",)

    key = fields.String(
        load_default="problem",
        validate=validate.Regexp(KEY_PATTERN, error="Keys are letters, digits, _, . and - (at most 64)."),
        metadata={"description": "the answers file's key for this problem; Autolab's problem name"},
    )
    title = fields.String(validate=validate.Length(min=1, max=500))
    checks = ErrorBoundedDict(
        keys=fields.String(validate=validate.Regexp(CHECK_NAME_PATTERN, error=CHECK_NAME_ERROR)),
        values=fields.Nested(ProblemCheckSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_PROBLEM_CHECKS),
        metadata={"description": "check name (loss, gradients.w, gradient_formulas.x, intermediates.z) -> options"},
    )
    seed_from_variant = StrictBoolean(
        load_default=False, metadata={"description": "with `domain`: PrairieLearn's variant seed draws the points"}
    )
    format_errors = format_errors


class ProblemFileSchema(CappedSchema):
    """A problem file: one problem at the top level, or `problems: [...]` with file-wide defaults."""

    title = fields.String(validate=validate.Length(min=1, max=500))
    format_errors = format_errors
    feedback = fields.String(
        validate=validate.OneOf(FEEDBACK_MODES),
        metadata={"description": f"every problem's, unless the problem or check sets its own; {FEEDBACK_DESCRIPTION}"},
    )
    problems = ErrorBoundedList(
        fields.Nested(ProblemSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_PROBLEMS),
        metadata={"description": "each problem's `key`, and each check's `answer` name, unique across the file"},
    )

    @pre_load
    def _refuse_before_loading(self, data, **kwargs):
        """A file without `problems` but with a problem's fields (model, checks, ...) is one problem: wrapped before
        CappedSchema's checks, which would read its fields as the file's unknown keys (an audit: a problem with 21
        misspelt keys was told its `model` and `inputs` were unknown)."""
        if isinstance(data, dict) and "problems" not in data and {"model", "checks", "key"} & set(data):
            data = {"problems": [data]}
        return super()._refuse_before_loading(data, **kwargs)

    @validates_schema
    def unique(self, data, **kwargs):
        keys = [p["key"] for p in data.get("problems", [])]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValidationError(f"Problem keys must be unique; repeated: {', '.join(repeated)}.", "problems")
        answers = [c["answer"] for p in data.get("problems", []) for c in p["checks"].values() if "answer" in c]
        repeated = sorted({a for a in answers if answers.count(a) > 1})
        if repeated:
            raise ValidationError(f"Answer names must be unique; repeated: {', '.join(repeated)}.", "problems")


class GradeRequestSchema(CappedSchema):
    """Body of POST /v1/grade: the instructor's problem file and the student's answers (any JSON, read per answer)."""

    problem = ValidatedLater(
        ProblemFileSchema,
        ProblemSchema,
        required=True,
        metadata={
            "description": "the instructor's problem file, parsed to JSON: `problems: [...]` (ProblemFile) or one"
            " problem at the top level (ProblemDefinition); not matching them is a 400 invalid-problem"
        },
    )
    answers = fields.Raw(
        required=True,
        allow_none=True,
        metadata={
            "description": "{problem key: {loss, gradients, gradient_formulas, intermediates}} and/or "
            "{answer name: value}; anything else is graded as unreadable answers"
        },
    )
    answers_error = fields.String(
        validate=validate.Length(max=2000),
        metadata={"description": "why the client could not read the answers file; every check fails with it"},
    )
    released = fields.List(
        fields.String(validate=validate.OneOf(RELEASABLE)),
        load_default=list,
        validate=validate.Length(max=MAX_RELEASED),
        metadata={
            "description": "visibilities already released (after the due date, after publishing): shown now "
            "on platforms without their own visibility (all but Gradescope)"
        },
    )
    variant_seed = StrictInteger(
        validate=validate.Range(min=0), metadata={"description": "PrairieLearn's variant seed (seed_from_variant)"}
    )


class GradeQuerySchema(CappedSchema):
    """Query string of POST /v1/grade."""

    class Meta:
        unknown = EXCLUDE

    format = fields.String(
        load_default="json",
        validate=validate.OneOf(PLATFORMS),
        metadata={
            "description": "json (default), gradescope (a results.json body), prairielearn (an external grader "
            "result), autolab (its feedback and autoresult lines) or coderunner (a combinator template's result "
            "table)"
        },
    )


__all__ = ["GradeQuerySchema", "GradeRequestSchema", "ProblemCheckSchema", "ProblemFileSchema", "ProblemSchema"]
