"""Request schemas: what POST /v1/gradients accepts, validated before any torch work."""

from __future__ import annotations

from marshmallow import ValidationError, fields, validate, validates_schema

from service.engine.limits import Limits
from service.engine.neuron import DEFAULT_EPSILON, LOSSES, REDUCTIONS
from service.engine.neuron import INPUTS as NEURON_INPUTS

from .fields import CappedSchema, InputMap, OneOfKind, StrictFloat, Tensor, input_name
from .network import NetworkModelSchema

MODES = ("grad", "inference")
DTYPES = ("float32", "float64")
INCLUDES = ("graph", "dot", "intermediates", "manual", "numeric", "hessian", "jacobian")
# `wrt` and `tangents` name inputs: as many as a request may have (MAX_INPUTS' default). At 64, a formula of 100
# inputs worked with the default `wrt` (every input) and was a 400 when `wrt` named the same 100.
MAX_WRT = Limits.max_inputs


# JSON Schema (OpenAPI 3.1) for what the @validates_schema methods check, in each schema's `json_schema_rules`
NEURON_MODEL = {"properties": {"model": {"properties": {"kind": {"const": "neuron"}}}}}
NEURON_INPUT_NAMES = {"required": list(NEURON_INPUTS), "propertyNames": {"enum": list(NEURON_INPUTS)}}


def neuron_input_errors(names) -> dict:
    """A neuron takes exactly x, y, w, b: one message per missing or extra input name."""
    errors = {name: ["Missing data for required field."] for name in NEURON_INPUTS if name not in names}
    errors |= {name: ["Unknown field: a neuron takes x, y, w, b."] for name in names if name not in NEURON_INPUTS}
    return errors


class NeuronModelSchema(CappedSchema):
    """linear -> sigmoid -> binary cross-entropy, as in the tutorial."""

    kind = fields.String(required=True, validate=validate.Equal("neuron"))
    loss = fields.String(load_default=LOSSES[0], validate=validate.OneOf(LOSSES))
    reduction = fields.String(load_default=REDUCTIONS[0], validate=validate.OneOf(REDUCTIONS))
    epsilon = StrictFloat(
        load_default=DEFAULT_EPSILON, validate=validate.Range(min=0, max=0.5, min_inclusive=False, max_inclusive=False)
    )


class ExpressionModelSchema(CappedSchema):
    """A catalog expression by `name`, or a free-form `formula` in the safe formula language."""

    kind = fields.String(required=True, validate=validate.Equal("expression"))
    name = fields.String(validate=validate.Length(min=1, max=64))
    formula = fields.String(validate=validate.Length(min=1))  # max_formula_length is a 413, checked by the engine
    json_schema_rules = {"oneOf": [{"required": ["name"]}, {"required": ["formula"]}]}

    @validates_schema
    def exactly_one_source(self, data, **kwargs):
        if ("name" in data) == ("formula" in data):
            raise ValidationError("Give exactly one of `name` or `formula`.", "_schema")


MODEL_SCHEMAS = {"neuron": NeuronModelSchema, "expression": ExpressionModelSchema, "network": NetworkModelSchema}
upstream_gradient = {
    "metadata": {"description": "upstream gradient of a non-scalar output: `gradients` is then dout·J"}
}


class GradientRequestSchema(CappedSchema):
    """Body of POST /v1/gradients (and of each job in /v1/batch)."""

    model = OneOfKind(MODEL_SCHEMAS, required=True)
    inputs = InputMap(Tensor(), required=True)
    wrt = fields.List(input_name(), validate=validate.Length(min=1, max=MAX_WRT), metadata={"uniqueItems": True})
    mode = fields.String(load_default="grad", validate=validate.OneOf(MODES))
    dtype = fields.String(load_default="float32", validate=validate.OneOf(DTYPES))
    include = fields.List(
        fields.String(validate=validate.OneOf(INCLUDES)),
        load_default=lambda: ["graph"],
        validate=validate.Length(max=len(INCLUDES)),
    )
    dout = Tensor(**upstream_gradient)
    tangents = InputMap(
        Tensor(),
        validate=validate.Length(min=1, max=MAX_WRT),
        metadata={"description": "input name -> direction: `jvp` is J·v, how the output moves along it"},
    )

    json_schema_rules = {"if": NEURON_MODEL, "then": {"properties": {"inputs": NEURON_INPUT_NAMES}}}

    @validates_schema
    def neuron_inputs(self, data, **kwargs):
        """A neuron needs exactly x, y, w, b; name each missing or extra input."""
        model, inputs = data.get("model"), data.get("inputs")
        if not model or inputs is None or model["kind"] != "neuron":
            return
        errors = neuron_input_errors(inputs)
        if errors:
            raise ValidationError({"inputs": errors})

    @validates_schema
    def wrt_unique(self, data, **kwargs):
        wrt = data.get("wrt")
        if wrt is not None and len(set(wrt)) != len(wrt):
            raise ValidationError({"wrt": ["Names must be unique."]})
