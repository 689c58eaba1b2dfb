"""About the service rather than a computation: liveness, readiness, the model catalog, metrics, OpenAPI."""

from __future__ import annotations

from flask import Blueprint, current_app, request

from schemas import ModelsResponseSchema, StatusSchema

from ..engine.describe import models_document
from ..errors import MetricsUnavailable, NotReady
from ..observability import metrics_response
from ..openapi import document_for, operation
from ..warmup import is_ready

bp = Blueprint("meta", __name__)
models_response = ModelsResponseSchema()


@bp.get("/v1/models")
@operation(
    "What can be posted to /v1/gradients",
    ModelsResponseSchema,
    ok="Model kinds, named expressions with hand-derived gradients, formula functions, limits",
)
def models():
    """The catalog of models, named expressions, formula functions and limits."""
    config = current_app.config
    extra = {"max_body_bytes": config["MAX_CONTENT_LENGTH"]}
    return models_response.dump(models_document(config["LIMITS"], extra))


@bp.get("/healthz")
@operation("Liveness probe", StatusSchema, ok="Alive")
def healthz():
    """Liveness: the process answers."""
    return {"status": "ok"}


@bp.get("/readyz")
@operation("Readiness probe", StatusSchema, ok="Ready to compute", errors=(503,))
def readyz():
    """Readiness: torch is imported and one forward/backward pass has run in this worker."""
    if not is_ready():
        raise NotReady("torch is not warmed up yet.")
    return {"status": "ready"}


@bp.get("/metrics")
@operation(
    "Prometheus text format, summed over all gunicorn workers",
    {"type": "string"},
    ok="Metrics in Prometheus text exposition format",
    media_type="text/plain",
    errors=(503,),
)
def metrics():
    """Prometheus metrics: requests, latency, compute time, in-flight."""
    try:
        return metrics_response()
    except FileNotFoundError as exc:
        raise MetricsUnavailable(
            "The metrics directory (PROMETHEUS_MULTIPROC_DIR) is gone: it was deleted while the server ran. Requests "
            "are still answered, but no count can be read or kept; restart the server to count again."
        ) from exc


@bp.get("/openapi.json")
@operation("This OpenAPI 3 document", {"type": "object"}, ok="The document; `servers` names the gateway prefix")
def openapi():
    """The OpenAPI 3 document, with `servers` set to the prefix the request came through."""
    return document_for(current_app.extensions["openapi"], request.script_root)
