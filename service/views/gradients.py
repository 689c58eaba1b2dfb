"""POST /v1/gradients: load the request, run the engine, return the response body; errors are mapped centrally."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from schemas import GradientRequestSchema, GradientResponseSchema

from ..engine import cost
from ..engine.compute import compute
from ..jsonio import Encoded, read_json
from ..observability import compute_timer
from ..openapi import operation
from ..render_svg import SVG, SVG_CSP, render_svg

bp = Blueprint("gradients", __name__)
gradient_request = GradientRequestSchema()
gradient_response = GradientResponseSchema()
# compute() already returns this schema's shape (every key, JSON-ready values, nested keys in schema order), so
# dumping it through marshmallow is an identity that cost ~25 % of a small request (docs/performance.md); the
# view only puts the top-level keys in the schema's order. tests/test_hardening.py checks the two agree.
_KEYS = [(f.data_key or name, f.metadata.get("optional", False)) for name, f in gradient_response.dump_fields.items()]
RESPONSE_KEYS = tuple(key for key, optional in _KEYS if not optional)
OPTIONAL_KEYS = tuple(key for key, optional in _KEYS if optional)  # jacobian, jvp, independent: only when asked
PICTURE = {"type": "string", "description": "With `Accept: image/svg+xml`: the autograd graph drawn by Graphviz"}


@bp.post("/v1/gradients")
@operation(
    "Loss, gradients and autograd graph for a neuron, an expression or a network",
    GradientResponseSchema,
    ok="The forward value, the gradients and the requested extras",
    body=GradientRequestSchema,
    alternatives={SVG: PICTURE},
    errors=(400, 413, 415, 422, 501, 503),
)
def gradients():
    """Run a forward and backward pass; answer JSON, or the graph as SVG when the client prefers image/svg+xml."""
    body = read_json()
    cost.check_raw(body, current_app.config["LIMITS"])
    spec = gradient_request.load(body)
    del body  # its lists (8 bytes a number; the numbers are the spec's) are freed before the computation
    picture = request.accept_mimetypes.best_match(["application/json", SVG]) == SVG  # docs/playground.md
    if picture:  # the graph is built for the picture, and `dot` is priced (engine/cost.py svg_bytes)
        spec["picture"] = True
        if "graph" not in spec["include"]:
            spec["include"] = [*spec["include"], "graph"]
    with compute_timer(spec["model"]["kind"]):
        result = compute(spec, current_app.config["LIMITS"])
    if picture:
        svg = render_svg(result["graph"], current_app.config["LIMITS"], result["mode"])
        return Response(svg, mimetype=SVG, headers={"Content-Security-Policy": SVG_CSP, "Vary": "Accept"})
    return gradient_body(result), {"Vary": "Accept"}


def gradient_body(result: dict) -> Encoded:
    """GradientResponseSchema().dump(result) for a compute() result: the keys in the schema's order (the optional
    ones when asked for), marked as encoded (compute()'s encode_tree already made every float finite, so the JSON
    writer does not walk it again)."""
    return Encoded((key, result[key]) for key in RESPONSE_KEYS + OPTIONAL_KEYS if key in result)
