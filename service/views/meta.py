"""About the service rather than a computation: liveness, readiness, the model catalog, metrics, OpenAPI."""
from __future__ import annotations

from flask import Blueprint, current_app, request

from schemas import ModelsResponseSchema

from ..engine.describe import models_document
from ..engine.warmup import is_ready
from ..errors import NotReady
from ..observability import metrics_response
from ..openapi import document_for

bp = Blueprint("meta", __name__)
models_response = ModelsResponseSchema()


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
    return models_response.dump(models_document(config["LIMITS"], extra))


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
    if not is_ready():
        raise NotReady("torch is not warmed up yet.")
    return {"status": "ready"}


@bp.get("/metrics")
def metrics():
    """Prometheus metrics: requests, latency, compute time, in-flight.
    ---
    get:
      summary: Prometheus text format, summed over all gunicorn workers
      responses:
        200:
          description: Metrics in Prometheus text exposition format
          content:
            text/plain:
              schema: {type: string}
    """
    return metrics_response()


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 document, with `servers` set to the prefix the request came through."""
    return document_for(current_app.extensions["openapi"], request.script_root)
