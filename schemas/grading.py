"""Schemas for grading: POST /v1/check (answers graded against autograd) and POST /v1/batch."""

from __future__ import annotations

import json

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from service.engine.values import last_non_number

from .errors import ProblemSchema
from .fields import (
    CappedSchema,
    ErrorBoundedDict,
    ErrorBoundedList,
    InputMap,
    OneOfKind,
    StrictFloat,
    StrictInteger,
    Tensor,
)
from .network import ToleranceSchema
from .requests import MODEL_SCHEMAS, NEURON_INPUT_NAMES, NEURON_MODEL, neuron_input_errors
from .responses import TensorOut

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-6
MAX_POINTS = 100
# One check per answer a submission can carry (the loss, and MAX_INPUTS=128 answers in each of gradients,
# gradient_formulas and intermediates: 385), rounded up; a problem file's problem allows 100 (schemas/problems.py).
MAX_CHECKS = 400
FORMATS = ("json", "gradescope", "prairielearn")
VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")
# what a check's feedback may say of the reference (autograd's value): service/engine/feedback.py
FEEDBACK_MODES = ("expected", "error", "verdict")
FEEDBACK_DESCRIPTION = (
    "what a check's result says of the reference value: expected (default; the message, `expected` and the"
    " chain rule state it), error (how far off, as a decade of relative error, no reference value, no sign,"
    " no diagnosis) or verdict (correct / not correct, and format or shape errors only)"
)
# a check is named after the submission field it grades
CHECK_NAME_PATTERN = (
    r"^(loss|gradients\.[A-Za-z_][A-Za-z0-9_]{0,63}|gradient_formulas\.[A-Za-z_][A-Za-z0-9_]{0,63}"
    r"|intermediates\..{1,200})$"
)

NOT_AN_ANSWER = 'Answers are numbers, "NaN"/"Infinity"/"-Infinity" or lists of those'


class Answer(Tensor):
    """A submitted value: a number, "NaN"/"Infinity"/"-Infinity", or nested lists of those.

    The shape is graded, not validated.
    """

    def _deserialize(self, value, attr, data, **kwargs):
        # millions of numbers are checked by C loops, a level's types at once (values.last_non_number); something
        # else in an answer is named by the kind of the first item a walk from its end meets, as it always was
        bad = last_non_number(value)
        if bad is not None:
            raise ValidationError(f"{NOT_AN_ANSWER}, got {'boolean' if bad is bool else bad.__name__}.")
        return value


tolerance = {"validate": validate.Range(min=0, max=1e6)}


class SubmissionSchema(CappedSchema):
    """The student's answers: numbers to compare with autograd, and/or derivative formulas to evaluate."""

    loss = Answer(metadata={"description": "forward value; with several points, a list with one value per point"})
    gradients = InputMap(Answer(), metadata={"description": "input name -> dL/d(input)"})
    intermediates = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=200)),
        values=Answer(),
        metadata={"description": 'neuron: z, y_pred; formulas: a subexpression\'s source text, e.g. "x ** 2"'},
    )
    gradient_formulas = InputMap(
        fields.String(validate=validate.Length(min=1)),
        metadata={"description": "input name -> derivative formula in the formula language, evaluated at every point"},
    )


class CheckOptionsSchema(CappedSchema):
    """Per-check settings: points, tolerances overriding the request's, and Gradescope visibility."""

    points = StrictFloat(load_default=1.0, validate=validate.Range(min=0, max=1e6))
    rtol = StrictFloat(**tolerance)
    atol = StrictFloat(**tolerance)
    title = fields.String(
        validate=validate.Length(min=1, max=200), metadata={"description": "display name of the test"}
    )
    visibility = fields.String(load_default="visible", validate=validate.OneOf(VISIBILITIES))
    tolerance = fields.Nested(ToleranceSchema, metadata={"description": "this check's tolerance profile"})
    feedback = fields.String(
        validate=validate.OneOf(FEEDBACK_MODES), metadata={"description": f"this check's own; {FEEDBACK_DESCRIPTION}"}
    )


def ambiguous_tolerance(profile: dict, own: dict, whose: str) -> str:
    """Why a check's own rtol/atol are refused beside `profile` (the check's own or the inherited one: `whose`), and
    the profile to give the check instead, with the values inside it."""
    if profile["profile"] == "round_atol" and "rtol" not in own:  # round_atol reads an atol inside the profile
        suggested = {k: v for k, v in profile.items() if k != "partial_credit" or v} | {"atol": own["atol"]}
    else:
        suggested = {"profile": "allclose", "rtol": own.get("rtol", 0.0), "atol": own.get("atol", 0.0)}
        if profile.get("partial_credit"):
            suggested["partial_credit"] = True
    return (
        f"Ambiguous: the check sets {' and '.join(f'`{key}`' for key in own)} beside {whose} tolerance profile"
        f' "{profile["profile"]}", which does not read a check\'s rtol/atol. Give the check its own `tolerance`'
        f" profile with the values inside it, e.g. {json.dumps(suggested)}, or drop rtol/atol."
    )


class CheckRequestSchema(CappedSchema):
    """Body of POST /v1/check: a model, where to evaluate it, the submission, and tolerances."""

    model = OneOfKind(MODEL_SCHEMAS, required=True)
    inputs = InputMap(
        Tensor(),
        metadata={"description": "one point; with `domain`, the fixed inputs (and shapes) of every drawn point"},
    )
    points = ErrorBoundedList(
        InputMap(Tensor()),
        validate=validate.Length(min=1, max=MAX_POINTS),
        metadata={"description": "several points, each an `inputs` object"},
    )
    domain = InputMap(
        fields.List(StrictFloat(validate=validate.Range(min=-1e100, max=1e100)), validate=validate.Length(equal=2)),
        metadata={
            "description": "input name -> [lo, hi], lo <= hi: draw n_points points uniformly (seeded, deterministic)"
        },
    )
    seed = StrictInteger(
        validate=validate.Range(min=0, max=2**63 - 1), metadata={"description": "with `domain`; default 0"}
    )
    n_points = StrictInteger(
        validate=validate.Range(min=1, max=MAX_POINTS), metadata={"description": "with `domain`; default 5"}
    )
    submission = fields.Nested(SubmissionSchema, required=True)
    rtol = StrictFloat(load_default=DEFAULT_RTOL, **tolerance)
    atol = StrictFloat(load_default=DEFAULT_ATOL, **tolerance)
    tolerance = fields.Nested(
        ToleranceSchema,
        metadata={
            "description": "a named rule instead of rtol/atol; a check's own profile wins. A check's own rtol/atol"
            " replace allclose's; under another profile they are refused (ambiguous): give the check a profile"
        },
    )
    dout = Tensor(metadata={"description": "upstream gradient of a non-scalar output: gradients are dout·J"})
    feedback = fields.String(
        validate=validate.OneOf(FEEDBACK_MODES),
        metadata={"description": f"every check's, unless the check sets its own; {FEEDBACK_DESCRIPTION}"},
    )
    checks = ErrorBoundedDict(
        keys=fields.String(
            validate=validate.Regexp(
                CHECK_NAME_PATTERN,
                error="Check names are loss, gradients.<input>, intermediates.<name> or gradient_formulas.<input>.",
            )
        ),
        values=fields.Nested(CheckOptionsSchema),
        validate=validate.Length(max=MAX_CHECKS),
        metadata={
            "description": "the graded checks and their points; absent: every answer in the submission, 1 point each"
        },
    )
    # own_tolerances_under_a_profile is not here: said in JSON Schema (if the profile is not allclose, each check
    # has `tolerance` or neither rtol nor atol), schemathesis 4.32 cannot draw a /v1/check body at all (its
    # canonical form of the schema is "raw"), and the fuzz test is worth more than the rule's documentation
    json_schema_rules = {
        "allOf": [
            # where: `points`, or `inputs` and/or `domain`; seed and n_points only with `domain`
            {"not": {"required": ["points", "inputs"]}},
            {"not": {"required": ["points", "domain"]}},
            {"anyOf": [{"required": ["inputs"]}, {"required": ["points"]}, {"required": ["domain"]}]},
            {"if": {"required": ["seed"]}, "then": {"required": ["domain"]}},
            {"if": {"required": ["n_points"]}, "then": {"required": ["domain"]}},
            # neuron_inputs: exactly x, y, w, b at every point (with `domain`: between `inputs` and `domain`)
            {
                "if": NEURON_MODEL,
                "then": {
                    "properties": {
                        "points": {"items": NEURON_INPUT_NAMES},
                        "inputs": {"propertyNames": NEURON_INPUT_NAMES["propertyNames"]},
                        "domain": {"propertyNames": NEURON_INPUT_NAMES["propertyNames"]},
                    }
                },
            },
            *(
                {
                    "if": {**NEURON_MODEL, "not": {"required": ["points"]}},
                    "then": {
                        "anyOf": [
                            {"required": [where], "properties": {where: {"required": [name]}}}
                            for where in ("inputs", "domain")
                        ]
                    },
                }
                for name in NEURON_INPUT_NAMES["required"]
            ),
            # something_to_grade: answers in `submission`, or `checks` listed
            {
                "anyOf": [
                    {"properties": {"submission": {"minProperties": 1}}},
                    {"required": ["checks"], "properties": {"checks": {"minProperties": 1}}},
                ]
            },
        ]
    }

    @validates_schema
    def where(self, data, **kwargs):
        """Exactly one of `inputs`, `points`, `domain` (or `inputs` with `domain`); seed/n_points only with domain."""
        if "model" not in data:  # only a batch's answer part (a missing model is a field error: this never runs)
            return
        has = {key: key in data for key in ("inputs", "points", "domain")}
        if has["points"] and (has["inputs"] or has["domain"]):
            raise ValidationError("Give `points`, or `inputs` and/or `domain`, not both.", "points")
        if not any(has.values()):
            raise ValidationError("Give `inputs` (one point), `points` or `domain`.", "inputs")
        for key in ("seed", "n_points"):
            if key in data and not has["domain"]:
                raise ValidationError(f"`{key}` is only used with `domain`.", key)
        bad = [name for name, (lo, hi) in data.get("domain", {}).items() if lo > hi]
        if bad:
            raise ValidationError({name: ["lo must not be greater than hi."] for name in bad}, "domain")

    @validates_schema
    def neuron_inputs(self, data, **kwargs):
        """A neuron needs exactly x, y, w, b at every point."""
        model = data.get("model")
        if not model or model["kind"] != "neuron":
            return
        groups = [("points", i, p) for i, p in enumerate(data.get("points", []))]
        if "points" not in data:
            groups = [("inputs", None, {**data.get("inputs", {}), **data.get("domain", {})})]
        for field, index, names in groups:
            errors = neuron_input_errors(names)
            if errors:
                raise ValidationError({field: {index: errors} if index is not None else errors})

    @validates_schema
    def own_tolerances_under_a_profile(self, data, **kwargs):
        """A check's own rtol/atol beside a profile other than allclose (inherited, or the check's own: echoed and
        not applied, a third look) are refused: rel_error, norm_ratio, round_atol and exact do not read a check's
        rtol/atol (round_atol takes its atol inside the profile), and no reading of both is safe. Applied as the
        classic rule, the one a check did not set was the schema's default (`atol: 1e-12` under `exact` passed 12.001
        for 12 at rtol 1e-4) and the profile's partial credit was lost (a second ninth audit). Reads only
        `tolerance` and `checks`, both fields of a batch's answer part (service/views/check_loading.py)."""
        inherited = data.get("tolerance")
        errors = {}
        for name, options in data.get("checks", {}).items():
            own = {key: options[key] for key in ("rtol", "atol") if key in options}
            own_profile = options.get("tolerance")
            profile, whose = (own_profile, "its own") if own_profile is not None else (inherited, "the inherited")
            if own and profile is not None and profile["profile"] != "allclose":
                errors[name] = {"value": {key: [ambiguous_tolerance(profile, own, whose)] for key in own}}
        if errors:
            raise ValidationError(errors, "checks")

    @validates_schema
    def something_to_grade(self, data, **kwargs):
        submission = data.get("submission")
        if submission is not None and not submission and not data.get("checks"):
            raise ValidationError("Nothing to grade: give answers in `submission` (or list `checks`).", "submission")


class CheckQuerySchema(CappedSchema):
    """Query string of POST /v1/check."""

    class Meta:
        unknown = EXCLUDE

    format = fields.String(
        load_default="json",
        validate=validate.OneOf(FORMATS),
        metadata={
            "description": "json (default), gradescope (a results.json body) "
            "or prairielearn (an external grader result)"
        },
    )


# --- responses ----------------------------------------------------------------------------------


class CheckResultSchema(Schema):
    """One graded check. `expected` is autograd's reference, `actual` the submission's value."""

    name = fields.String(
        required=True, metadata={"description": "loss, gradients.w, intermediates.z, gradient_formulas.x, ..."}
    )
    title = fields.String(required=True, metadata={"description": "human name, e.g. dL/dw"})
    kind = fields.String(
        required=True, validate=validate.OneOf(("loss", "gradient", "intermediate", "gradient_formula"))
    )
    expected = TensorOut(
        allow_none=True, metadata={"description": "autograd's value (float64); with several points, a list per point"}
    )
    actual = TensorOut(
        allow_none=True, metadata={"description": "the submitted value, or the formula's value at each point"}
    )
    actual_summary = fields.String(
        metadata={
            "description": "instead of `actual` (then null), when the answer is not echoed as sent: it is not a tensor"
            " of at most max_tensor_dims dimensions, or it has neither the checked shape nor at most 100 numbers;"
            " its first numbers, an ellipsis, the count and the shape or depth, in about 200 characters"
        }
    )
    formula = fields.String(
        allow_none=True,
        metadata={
            "description": "the submitted formula, for gradient_formula checks; over 200 characters, its first 200,"
            " an ellipsis and its length"
        },
    )
    abs_error = fields.Float(
        allow_none=True,
        metadata={"description": "max |actual - expected|; null when missing, mis-shaped or not finite"},
    )
    rel_error = fields.Float(
        allow_none=True,
        metadata={
            "description": "the largest relative error. Under rtol/atol (no `tolerance` profile): max |actual -"
            " expected| / |expected| over the elements whose expected value is not zero. With any tolerance profile"
            " (rel_error, norm_ratio, allclose, round_atol, exact): CS231n's max |actual - expected| / max(1e-8,"
            " |actual| + |expected|) over every element. Null when missing, mis-shaped or not finite"
        },
    )
    rtol = fields.Float(required=True)
    atol = fields.Float(required=True)
    passed = fields.Boolean(required=True)
    points = fields.Float(required=True)
    max_points = fields.Float(required=True)
    message = fields.String(required=True, metadata={"description": "feedback: what is off, where, and by how much"})
    worst_point = fields.Integer(
        allow_none=True,
        metadata={
            "description": "the point the message describes: a failed check's first failing point (in the order of"
            " `points`), a passed check's point with the largest |actual - expected|; null when nothing was compared"
        },
    )
    chain_rule = fields.Dict(
        keys=fields.String(),
        values=TensorOut(),
        allow_none=True,
        metadata={
            "description": "neuron dL/dw, dL/db: the tutorial's factors at worst_point (per sample, before reduction):"
            " dL/dy_pred, dy_pred/dz and dz/dw or dz/db; where the tutorial's clamp bites there (loss bce), also"
            " dclamp(y_pred)/dy_pred (0 where it bites, 1 elsewhere), so that their product is autograd's"
        },
    )
    visibility = fields.String(required=True, validate=validate.OneOf(VISIBILITIES))
    tolerance = fields.Dict(
        metadata={
            "description": "with a profile: its metric, value (the metric at worst_point: a failed check's first"
            " failing point), threshold, fraction_within (over every point)"
        }
    )
    diagnosis = fields.String(metadata={"description": "the classic mistake a wrong gradient matches"})
    feedback = fields.String(
        validate=validate.OneOf(FEEDBACK_MODES[1:]),
        metadata={
            "description": "present when not expected: then `expected` and `chain_rule` are null and so are a failed"
            " check's abs_error, rel_error and tolerance value"
        },
    )


class CheckResponseSchema(Schema):
    """Body of a 200 from POST /v1/check (default format)."""

    score = fields.Float(required=True)
    max_score = fields.Float(required=True)
    passed = fields.Boolean(required=True, metadata={"description": "every check passed"})
    rtol = fields.Float(required=True, metadata={"description": "the request's default relative tolerance"})
    atol = fields.Float(required=True, metadata={"description": "the request's default absolute tolerance"})
    tolerance_rule = fields.String(required=True)
    n_points = fields.Integer(required=True)
    points = fields.List(
        fields.Dict(keys=fields.String(), values=TensorOut()),
        required=True,
        metadata={"description": "the points graded (drawn ones included)"},
    )
    checks = fields.List(fields.Nested(CheckResultSchema), required=True)
    summary = fields.String(required=True)
    warnings = fields.List(fields.String(), required=True)
    first_wrong = fields.Dict(metadata={"description": "networks: the first wrong intermediate and its layer"})


class BatchRequestSchema(CappedSchema):
    """Body of POST /v1/batch.

    A job with a `check` key is a check (`{"check": {...}}`, nothing beside it); any other job is a gradients request.
    """

    jobs = fields.List(
        fields.Raw(allow_none=True),
        required=True,
        metadata={
            "description": 'each a POST /v1/gradients body, or {"check": <POST /v1/check body>}; '
            "an invalid job gets an `error` in its place"
        },
    )


class CheckJobSchema(CappedSchema):
    """A /v1/batch job with a `check` key: a check request, in `check`, with no other key beside it (an extra key is
    named as an unknown field, not read as a gradients request's)."""

    check = fields.Raw(required=True, allow_none=True)


class BatchErrorSchema(Schema):
    """A failed job's place in `results`."""

    error = fields.Nested(ProblemSchema, required=True)


__all__ = [
    "BatchErrorSchema",
    "BatchRequestSchema",
    "CheckJobSchema",
    "CheckQuerySchema",
    "CheckRequestSchema",
    "CheckResponseSchema",
]
