"""Response schemas of the platform formats (service/platforms.py): what /v1/check and /v1/grade answer."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from .grading import VISIBILITIES, CheckResultSchema

visibility = fields.String(required=True, validate=validate.OneOf(VISIBILITIES))


class GradescopeTestSchema(Schema):
    name = fields.String(required=True, metadata={"description": "what the student reads, e.g. dL/dw"})
    number = fields.String(required=True, metadata={"description": "unique across problems: 1.1, 1.2, 2.1"})
    score = fields.Float(required=True)
    max_score = fields.Float(required=True)
    status = fields.String(required=True, validate=validate.OneOf(("passed", "failed")))
    output = fields.String(required=True)
    output_format = fields.String(required=True, metadata={"description": "md"})
    tags = fields.List(fields.String(), required=True)
    visibility = visibility
    extra_data = fields.Dict(required=True, metadata={"description": "the check's id, problem, expected, actual"})


class GradescopeResultsSchema(Schema):
    """A Gradescope autograder results.json (gradescope/autograder_samples docs/specs.md, "Output format")."""

    score = fields.Float(required=True)
    execution_time = fields.Integer(metadata={"description": "seconds"})
    output = fields.String(required=True, metadata={"description": "markdown; counts only always-visible tests"})
    output_format = fields.String(required=True)
    test_output_format = fields.String(required=True)
    visibility = visibility
    stdout_visibility = visibility
    extra_data = fields.Dict(
        required=True, metadata={"description": "max_score, graded; warnings (staff only: never in `output`)"}
    )
    tests = fields.List(fields.Nested(GradescopeTestSchema), required=True)


class PrairieLearnTestSchema(Schema):
    name = fields.String(required=True)
    description = fields.String()
    points = fields.Float(required=True)
    max_points = fields.Float(required=True)
    message = fields.String(required=True)
    output = fields.String(required=True)


class PrairieLearnResultsSchema(Schema):
    """A PrairieLearn external grader result (docs/externalGrading.md, "Grading results"); hidden checks omitted."""

    gradable = fields.Boolean(required=True, metadata={"description": "false: a format error; no attempt is charged"})
    succeeded = fields.Boolean(required=True)
    score = fields.Float(required=True, validate=validate.Range(min=0, max=1))
    format_errors = fields.List(fields.String(), required=True)
    message = fields.String(required=True)
    output = fields.String(required=True)
    tests = fields.List(fields.Nested(PrairieLearnTestSchema), required=True)


class AutolabResultsSchema(Schema):
    """Autolab (docs/lab.md, docs/features/formatted-feedback.md): print `feedback`, then `autoresult`, last."""

    feedback = fields.Dict(required=True, metadata={"description": 'the semantic feedback: {"_presentation": ...}'})
    autoresult = fields.Dict(required=True, metadata={"description": '{"scores": {key: score}, "scoreboard": [...]}'})


class CodeRunnerResultsSchema(Schema):
    """Moodle CodeRunner combinator template grader output (classes/combinator_grader_outcome.php)."""

    fraction = fields.Float(required=True, validate=validate.Range(min=0, max=1))
    testresults = fields.List(
        fields.List(fields.Raw()),
        required=True,
        metadata={"description": "a header row (iscorrect, Test, Expected, Got, Message, ishidden), a row per check"},
    )
    prologuehtml = fields.String(required=True)
    epiloguehtml = fields.String(required=True)
    instructorhtml = fields.String(metadata={"description": "the result's warnings, shown to staff only"})
    showdifferences = fields.Boolean(required=True)


class GradedCheckSchema(CheckResultSchema):
    number = fields.String(required=True)
    problem = fields.String(allow_none=True, required=True)
    tags = fields.List(fields.String(), required=True)
    answer = fields.String(allow_none=True, required=True)
    format_error = fields.Boolean(required=True, metadata={"description": "mistyped answer or unparsable formula"})


class GradedProblemSchema(Schema):
    key = fields.String(required=True)
    title = fields.String(required=True)
    score = fields.Float(required=True)
    max_score = fields.Float(required=True)
    format_errors = fields.String(required=True, metadata={"description": "the problem's format-error policy"})
    tolerance_rule = fields.String(required=True)
    checks = fields.List(fields.Nested(GradedCheckSchema), required=True)
    warnings = fields.List(fields.String())


class GradedResultSchema(Schema):
    """POST /v1/grade?format=json: every problem and check, hidden ones included (for staff tools)."""

    graded = fields.Boolean(required=True)
    title = fields.String(required=True)
    score = fields.Float(required=True)
    max_score = fields.Float(required=True)
    passed = fields.Boolean(required=True)
    format_errors = fields.List(fields.String(), required=True)
    not_gradable = fields.Boolean(required=True, metadata={"description": "a format error in a not_gradable problem"})
    released = fields.List(fields.String(), required=True)
    execution_time = fields.Float(allow_none=True, required=True)
    problems = fields.List(fields.Nested(GradedProblemSchema), required=True)
    warnings = fields.List(fields.String(), required=True)


PLATFORM_RESPONSES = {
    "json": GradedResultSchema(),
    "gradescope": GradescopeResultsSchema(),
    "prairielearn": PrairieLearnResultsSchema(),
    "autolab": AutolabResultsSchema(),
    "coderunner": CodeRunnerResultsSchema(),
}
