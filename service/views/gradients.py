"""POST /v1/gradients: load the request, run the engine, return the response body; errors are mapped centrally."""
from __future__ import annotations

from flask import Blueprint, current_app

from schemas import GradientRequestSchema, GradientResponseSchema

from ..engine import cost
from ..engine.compute import compute
from ..jsonio import Encoded, read_json
from ..observability import compute_timer
from ..openapi import operation

bp = Blueprint("gradients", __name__)
gradient_request = GradientRequestSchema()
gradient_response = GradientResponseSchema()
# compute() already returns this schema's shape (every key, JSON-ready values, nested keys in schema order), so
# dumping it through marshmallow is an identity that cost ~25 % of a small request (docs/performance.md); the
# view only puts the top-level keys in the schema's order. tests/test_hardening.py checks the two agree.
RESPONSE_KEYS = tuple(field.data_key or name for name, field in gradient_response.dump_fields.items())


@bp.post("/v1/gradients")
@operation("Loss, gradients and autograd graph for a neuron or an expression", GradientResponseSchema,
           ok="The forward value, the gradients and the requested extras", body=GradientRequestSchema,
           errors=(400, 413, 415, 422, 503))
def gradients():
    """Run a forward and backward pass."""
    body = read_json()
    cost.check_raw(body, current_app.config["LIMITS"])
    spec = gradient_request.load(body)
    with compute_timer(spec["model"]["kind"]):
        result = compute(spec, current_app.config["LIMITS"])
    return gradient_body(result)


def gradient_body(result: dict) -> Encoded:
    """GradientResponseSchema().dump(result) for a compute() result: the keys in the schema's order, marked as
    encoded (compute()'s encode_tree already made every float finite, so the JSON writer does not walk it again)."""
    return Encoded((key, result[key]) for key in RESPONSE_KEYS if key in result)
