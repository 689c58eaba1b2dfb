"""Response schemas: they document the contract in /openapi.json and shape what the views return."""

from __future__ import annotations

from dataclasses import fields as dataclass_fields

from marshmallow import Schema, fields, validate

from service.engine.limits import Limits

from .requests import DTYPES, MODES


class TensorOut(fields.Raw):
    """A number, a non-finite value as "NaN"/"Infinity"/"-Infinity", or a nested list of those."""


class NodeSchema(Schema):
    id = fields.Integer(required=True)
    op = fields.String(
        required=True,
        metadata={"description": "autograd function name, e.g. SigmoidBackward0; AccumulateGrad for leaves"},
    )
    label = fields.String(
        allow_none=True,
        metadata={"description": "input name for leaves; intermediate name (z, y_pred, a subexpression) where known"},
    )
    shape = fields.List(fields.Integer(), allow_none=True)
    value = TensorOut(
        allow_none=True, metadata={"description": "forward value of the node's output, when known and small"}
    )
    grad = TensorOut(allow_none=True, metadata={"description": "dL/d(node output), when known and small"})


class EdgeSchema(Schema):
    from_ = fields.Integer(data_key="from", attribute="from", required=True)
    to = fields.Integer(required=True)


class GraphSchema(Schema):
    root = fields.Integer(allow_none=True)
    nodes = fields.List(fields.Nested(NodeSchema), required=True)
    edges = fields.List(fields.Nested(EdgeSchema), required=True)


class IntermediateSchema(Schema):
    value = TensorOut(required=True)
    grad = TensorOut(allow_none=True)


class NumericSchema(Schema):
    gradients = fields.Dict(keys=fields.String(), values=TensorOut())
    max_abs_error = TensorOut()
    max_rel_error = TensorOut()


class ManualSchema(Schema):
    gradients = fields.Dict(keys=fields.String(), values=TensorOut())
    max_abs_diff = TensorOut()


class GradientResponseSchema(Schema):
    """Body of a 200 from POST /v1/gradients: every key but the last three is always there (docs/api.md), null
    when not asked for or not computable, so each is `required` (and nullable) in the OpenAPI document."""

    loss = TensorOut(required=True, metadata={"description": "value of the tensor backward() starts from"})
    gradients = fields.Dict(keys=fields.String(), values=TensorOut(), required=True, allow_none=True)
    graph = fields.Nested(GraphSchema, required=True, allow_none=True)
    requires_grad = fields.Boolean(required=True)
    mode = fields.String(required=True, validate=validate.OneOf(MODES))
    dtype = fields.String(required=True, validate=validate.OneOf(DTYPES))
    intermediates = fields.Dict(
        keys=fields.String(), values=fields.Nested(IntermediateSchema), required=True, allow_none=True
    )
    numeric = fields.Nested(NumericSchema, required=True, allow_none=True)
    manual = fields.Nested(ManualSchema, required=True, allow_none=True)
    hessian = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(keys=fields.String(), values=TensorOut()),
        required=True,
        allow_none=True,
    )
    dot = fields.String(required=True, allow_none=True)
    warnings = fields.List(fields.String(), required=True)
    # only in answers that asked for them (docs/networks.md), so the other answers keep their exact shape
    jacobian = fields.Dict(
        keys=fields.String(),
        values=TensorOut(),
        metadata={"optional": True, "description": "include jacobian: d(output)/d(input), shape output + input"},
    )
    jvp = TensorOut(metadata={"optional": True, "description": "with `tangents`: J·v, the output's shape"})
    independent = fields.List(
        fields.String(), metadata={"optional": True, "description": "`wrt` inputs the output does not depend on at all"}
    )


class CatalogEntrySchema(Schema):
    name = fields.String(required=True)
    formula = fields.String(required=True)
    variables = fields.List(fields.String(), required=True)
    gradient = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    description = fields.String()
    example = fields.Dict(keys=fields.String(), values=TensorOut())


class FunctionSchema(Schema):
    name = fields.String(required=True)
    arity = fields.Integer(required=True)
    description = fields.String()


def _limit_field(kind) -> fields.Field:
    return fields.Float(required=True) if kind in (float, "float") else fields.Integer(required=True)


# Every limit with its own type (a count stays an integer: 1048576, not 1048576.0), built from the Limits
# dataclass so a new limit is documented without an edit here; max_body_bytes is enforced before the engine.
LIMIT_FIELDS = {f.name: _limit_field(f.type) for f in dataclass_fields(Limits)}
LimitsSchema = Schema.from_dict({**LIMIT_FIELDS, "max_body_bytes": fields.Integer(required=True)}, name="LimitsSchema")


class ModelsResponseSchema(Schema):
    """Body of GET /v1/models: what can be posted, and within which limits."""

    kinds = fields.Dict(keys=fields.String(), values=fields.Dict())
    expressions = fields.List(fields.Nested(CatalogEntrySchema), required=True)
    functions = fields.List(fields.Nested(FunctionSchema), required=True)
    constants = fields.Dict(keys=fields.String(), values=fields.Float())
    limits = fields.Nested(LimitsSchema, required=True)
    networks = fields.List(
        fields.Dict(), metadata={"description": "published course fixtures, each a request to start from"}
    )


class StatusSchema(Schema):
    status = fields.String(required=True)
