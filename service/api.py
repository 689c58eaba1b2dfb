"""HTTP views: each one loads the body, calls the engine, and returns the result; errors are mapped centrally."""
from __future__ import annotations

import orjson
from flask import Blueprint, current_app, request

from schemas import GradientRequestSchema, GradientResponseSchema, ModelsResponseSchema

from . import engine
from .errors import MalformedJSON, ServiceError, UnsupportedMediaType
from .jsonio import Encoded
from .observability import compute_timer

bp = Blueprint("api", __name__)
gradient_request = GradientRequestSchema()
gradient_response = GradientResponseSchema()
# engine.compute() already returns this schema's shape (every key, JSON-ready values, nested keys in schema
# order), so dumping it through marshmallow is an identity that cost ~25 % of a small request (docs/PERFORMANCE.md);
# the view only puts the top-level keys in the schema's order. tests/test_hardening.py checks the two agree.
RESPONSE_KEYS = tuple(field.data_key or name for name, field in gradient_response.dump_fields.items())
models_response = ModelsResponseSchema()


class NotReady(ServiceError):
    """torch is not warmed up in this worker yet."""

    status = 503
    slug = "not-ready"
    title = "Service Unavailable"


def read_json():
    """The request body parsed as strict RFC 8259 JSON (no NaN literals, nesting at most 1024 deep)."""
    if not request.is_json:
        raise UnsupportedMediaType(f"Send the body as application/json, not {request.mimetype or 'no Content-Type'}.")
    try:
        return orjson.loads(request.get_data(cache=False))
    except orjson.JSONDecodeError as err:
        raise MalformedJSON(f"The body is not valid JSON: {err}.") from None


@bp.post("/v1/gradients")
def gradients():
    """Run a forward and backward pass.
    ---
    post:
      summary: Loss, gradients and autograd graph for a neuron or an expression
      requestBody:
        required: true
        content:
          application/json:
            schema: GradientRequestSchema
      responses:
        200:
          description: The forward value, the gradients and the requested extras
          content:
            application/json:
              schema: GradientResponseSchema
        400: {$ref: '#/components/responses/BadRequest'}
        413: {$ref: '#/components/responses/TooLarge'}
        415: {$ref: '#/components/responses/UnsupportedMediaType'}
        422: {$ref: '#/components/responses/NotComputable'}
        503: {$ref: '#/components/responses/Unavailable'}
    """
    spec = gradient_request.load(read_json())
    with compute_timer(spec["model"]["kind"]):
        result = engine.compute(spec, current_app.config["LIMITS"])
    return Encoded((key, result[key]) for key in RESPONSE_KEYS if key in result)


@bp.get("/v1/models")
def models():
    """The catalog of models, named expressions, formula functions and limits.
    ---
    get:
      summary: What can be posted to /v1/gradients
      responses:
        200:
          description: Model kinds, named expressions with hand-derived gradients, formula functions, limits
          content:
            application/json:
              schema: ModelsResponseSchema
    """
    config = current_app.config
    extra = {"max_body_bytes": config["MAX_CONTENT_LENGTH"], "max_batch_jobs": config["MAX_BATCH_JOBS"]}
    return models_response.dump(engine.models_document(config["LIMITS"], extra))


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers.
    ---
    get:
      summary: Liveness probe
      responses:
        200:
          description: Alive
          content:
            application/json:
              schema: StatusSchema
    """
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Readiness: torch is imported and one forward/backward pass has run in this worker.
    ---
    get:
      summary: Readiness probe
      responses:
        200:
          description: Ready to compute
          content:
            application/json:
              schema: StatusSchema
        503: {$ref: '#/components/responses/Unavailable'}
    """
    if not engine.is_ready():
        raise NotReady("torch is not warmed up yet.")
    return {"status": "ready"}
