"""Schemas for coursework networks (model kind "network") and the tolerance profiles of POST /v1/check."""

from __future__ import annotations

from marshmallow import ValidationError, fields, validate, validates_schema

from service.engine.network import ACTIVATIONS, INIT_SCHEMES, L2_FORMS, LAYER_TYPES, LAYOUTS, LOSSES, REDUCTIONS
from service.engine.tolerance import DEFAULTS as PROFILES

from .fields import CappedSchema, StrictBoolean, StrictFloat, StrictInteger, Tensor

# gamma<l>_<k>: the k-th batchnorm layer of block l, k >= 2 (docs/networks.md)
TENSOR_NAME = r"^(X|y|[Wb][1-9][0-9]{0,2}|(gamma|beta)[0-9]{1,3}(_[1-9][0-9]?)?)$"
TENSOR_NAME_ERROR = "X, y, W<l>, b<l>, gamma<l>, beta<l>, gamma<l>_<k> or beta<l>_<k>."
MAX_LAYERS = 64
MAX_FEATURES = 1_000_000
SEED = {"validate": validate.Range(min=0, max=2**32 - 1), "metadata": {"description": "numpy's seeds are < 2**32"}}
finite = {"validate": validate.Range(min=-1e100, max=1e100)}
# which optional fields each layer type takes
LAYER_FIELDS = {
    "linear": {"out_features", "bias", "activation", "negative_slope"},
    "batchnorm": {"eps", "variance"},
    "dropout": {"keep_prob", "p", "seed", "mask", "scale"},
    "leaky_relu": {"negative_slope"},
}


def _of_type(kind: str) -> dict:
    return {"properties": {"type": {"const": kind}}}


class LayerSchema(CappedSchema):
    """One layer; `type` says which of the other fields apply."""

    type = fields.String(required=True, validate=validate.OneOf(LAYER_TYPES))
    out_features = StrictInteger(validate=validate.Range(min=1, max=MAX_FEATURES))
    bias = StrictBoolean(metadata={"description": "linear: with a bias (default true)"})
    activation = fields.String(
        allow_none=True, validate=validate.OneOf(ACTIVATIONS), metadata={"description": "linear: applied inline"}
    )
    negative_slope = StrictFloat(validate=validate.Range(min=0, max=1), metadata={"description": "leaky_relu; 0.01"})
    eps = StrictFloat(validate=validate.Range(min=0, max=1, min_inclusive=False), metadata={"description": "1e-5"})
    variance = fields.String(
        validate=validate.OneOf(("biased", "unbiased")),
        metadata={"description": "batchnorm: divide by n (biased, default: CS231n, torch) or n - 1"},
    )
    keep_prob = StrictFloat(
        validate=validate.Range(min=0, max=1, min_inclusive=False), metadata={"description": "CS231n's p"}
    )
    p = StrictFloat(validate=validate.Range(min=0, max=1, max_inclusive=False), metadata={"description": "torch's"})
    seed = StrictInteger(**SEED)
    mask = Tensor(metadata={"description": "dropout: the 0/1 keep mask, in the activation's shape"})
    scale = StrictBoolean(metadata={"description": "dropout: inverted dropout, divide by keep_prob (default true)"})
    json_schema_rules = {  # fields_fit_type, for the OpenAPI document
        "allOf": [
            *(
                {
                    "if": _of_type(kind),
                    "then": {"propertyNames": {"enum": ["type", *sorted(LAYER_FIELDS.get(kind, set()))]}},
                }
                for kind in LAYER_TYPES
            ),
            {"if": _of_type("linear"), "then": {"required": ["out_features"]}},
            {
                "if": _of_type("dropout"),
                "then": {
                    "anyOf": [{"required": ["mask"]}, {"oneOf": [{"required": ["keep_prob"]}, {"required": ["p"]}]}]
                },
            },
        ]
    }

    @validates_schema
    def fields_fit_type(self, data, **kwargs):
        kind = data.get("type")
        extra = sorted(set(data) - {"type"} - LAYER_FIELDS.get(kind, set()))
        if extra:
            raise ValidationError(f"A {kind} layer does not take {', '.join(extra)}.", "type")
        if kind == "linear" and "out_features" not in data:
            raise ValidationError("A linear layer needs out_features.", "out_features")
        if kind == "dropout" and ("keep_prob" in data) == ("p" in data) and "mask" not in data:
            raise ValidationError("Give exactly one of keep_prob (kept) or p (dropped), or a mask.", "keep_prob")


class LossSchema(CappedSchema):
    type = fields.String(required=True, validate=validate.OneOf(LOSSES))
    reduction = fields.String(
        load_default="mean",
        validate=validate.OneOf(REDUCTIONS),
        metadata={"description": "mean over samples (default), sum, or mean over every element (torch's mse/bce)"},
    )
    margin = StrictFloat(validate=validate.Range(min=0, max=1e6), metadata={"description": "hinge; default 1"})


class L2Schema(CappedSchema):
    reg = StrictFloat(required=True, validate=validate.Range(min=0, max=1e6))
    form = fields.String(
        required=True,
        validate=validate.OneOf(tuple(L2_FORMS)),
        metadata={"description": "sum_sq: reg*ΣW²; half_sum_sq: 0.5*reg*ΣW²; over_2m: reg/(2m)*ΣW²"},
    )
    include_biases = StrictBoolean(load_default=False)


class InitSchema(CappedSchema):
    """How a tensor is made: numpy_legacy (mean + std * RandomState(seed).randn), zeros, ones, constant, linspace."""

    scheme = fields.String(required=True, validate=validate.OneOf(INIT_SCHEMES))
    seed = StrictInteger(**SEED)
    std = StrictFloat(**finite)
    mean = StrictFloat(**finite)
    value = StrictFloat(**finite)
    start = StrictFloat(**finite)
    stop = StrictFloat(**finite)
    shape = fields.List(
        StrictInteger(validate=validate.Range(min=0, max=MAX_FEATURES)),
        validate=validate.Length(min=1, max=2),
        metadata={"description": "needed for X and y (a parameter's shape follows from the layers)"},
    )
    transpose = StrictBoolean(metadata={"description": "linspace: fill the reversed shape, then transpose"})


class NetworkModelSchema(CappedSchema):
    """An ordered list of layers on X, a loss against y, L2, in a course's layout (docs/networks.md)."""

    kind = fields.String(required=True, validate=validate.Equal("network"))
    layout = fields.String(required=True, validate=validate.OneOf(tuple(LAYOUTS)))
    layers = fields.List(fields.Nested(LayerSchema), required=True, validate=validate.Length(max=MAX_LAYERS))
    loss = fields.Nested(LossSchema, required=True)
    l2 = fields.Nested(L2Schema)
    init = fields.Nested(InitSchema, metadata={"description": "for every parameter not given; weights in layer order"})
    generate = fields.Dict(
        keys=fields.String(validate=validate.Regexp(TENSOR_NAME, error=TENSOR_NAME_ERROR)),
        values=fields.Nested(InitSchema),
        validate=validate.Length(max=2 * MAX_LAYERS + 2),
        metadata={"description": "tensor name -> how to make it (e.g. X from a seed, as a course's fixture does)"},
    )
    dropout_seed = StrictInteger(**SEED)


class ToleranceSchema(CappedSchema):
    """How a check compares, named after the course that uses the rule."""

    profile = fields.String(
        required=True,
        validate=validate.OneOf(tuple(PROFILES)),
        metadata={"description": "rel_error (CS231n), norm_ratio (dlai), allclose, round_atol (MyTorch), exact"},
    )
    threshold = StrictFloat(
        validate=validate.Range(min=0, max=1e6),
        metadata={"description": "rel_error: 1e-7, norm_ratio: 2e-7 by default"},
    )
    rtol = StrictFloat(validate=validate.Range(min=0, max=1e6), metadata={"description": "allclose"})
    atol = StrictFloat(validate=validate.Range(min=0, max=1e6), metadata={"description": "allclose, round_atol"})
    decimals = StrictInteger(validate=validate.Range(min=0, max=15), metadata={"description": "round_atol; 4"})
    partial_credit = StrictBoolean(
        load_default=False, metadata={"description": "points times the fraction of elements within tolerance"}
    )
