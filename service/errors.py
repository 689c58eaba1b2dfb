"""One problem+json (RFC 9457) envelope for every error: HTTP errors, validation errors, engine errors, crashes."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, has_request_context, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from .engine.errors import LIMIT_HINTS, DeadlineExceeded, EngineError, FormulaError, LimitExceeded
from .observability import request_id

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "/problems/"
log = logging.getLogger(__name__)

# engine errors carry no HTTP status; this is the one place that assigns them
STATUS_BY_ERROR: list[tuple[type[EngineError], int]] = [
    (FormulaError, 400),
    (LimitExceeded, 413),
    (DeadlineExceeded, 503),
    (EngineError, 422),
]


class ServiceError(Exception):
    """An error raised by the HTTP layer itself, with its status and problem type."""

    status = 400
    slug = "bad-request"
    title = "Bad Request"

    def __init__(self, detail: str, headers: dict | None = None, **extra) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class MalformedJSON(ServiceError):
    """The body is not RFC 8259 JSON."""

    slug = "malformed-json"
    title = "Malformed JSON"


class IncompleteBody(ServiceError):
    """The body's framing broke: shorter than its Content-Length, or a malformed chunked encoding."""

    slug = "incomplete-body"
    title = "Incomplete Body"


class BodyTimeout(ServiceError):
    """The body did not arrive within the request's wall-time limit (a client that stalls, not a computation)."""

    status = 408
    slug = "body-timeout"
    title = "Request Timeout"


class InvalidQuery(ServiceError):
    """The query string does not match its schema (the body may be fine, and is not read)."""

    slug = "invalid-request"
    title = "Invalid request"

    def __init__(self, messages: dict) -> None:
        super().__init__("The query string does not match the schema; see `errors.query`.", errors={"query": messages})


class DuplicateKey(MalformedJSON):
    """The same key twice in one object: which value was meant is a guess, so the request is refused."""


class UnsupportedMediaType(ServiceError):
    """The body is not sent as application/json."""

    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported Media Type"


class BodyTooLarge(ServiceError):
    """A JSON document larger than a request may carry (e.g. too many batch jobs)."""

    status = 413
    slug = "limit-exceeded"
    title = "Limit exceeded"


class Unauthorized(ServiceError):
    """Missing or wrong API key."""

    status = 401
    slug = "unauthorized"
    title = "Unauthorized"


class NotReady(ServiceError):
    """torch is not warmed up in this worker yet."""

    status = 503
    slug = "not-ready"
    title = "Service Unavailable"


class MetricsUnavailable(ServiceError):
    """PROMETHEUS_MULTIPROC_DIR is gone: no count can be read (the requests are still answered)."""

    status = 503
    slug = "metrics-unavailable"
    title = "Service Unavailable"


class InvalidProblem(ServiceError):
    """The instructor's problem file is wrong: never the student's fault, never a student's score."""

    slug = "invalid-problem"
    title = "Invalid problem file"

    def __init__(self, status: int, detail: str, errors: dict) -> None:
        super().__init__(
            f"{detail} This is an error in the problem file (course staff), not in the answers.",
            errors=errors,
            party="instructor",
        )
        self.status = status


class NoGraph(ServiceError):
    """An SVG picture was asked for, but inference mode builds no autograd graph to draw."""

    status = 422
    slug = "no-graph"
    title = "No autograd graph"


class GraphvizMissing(ServiceError):
    """The `dot` binary is not installed, so no picture can be drawn (JSON answers still work)."""

    status = 501
    slug = "graphviz-not-installed"
    title = "Graphviz is not installed"


class GraphvizFailed(ServiceError):
    """`dot` ran but did not produce a picture: a bug in the DOT text we wrote, so a 500."""

    status = 500
    slug = "graphviz-failed"
    title = "Graphviz failed"


class NonFiniteInJSON(ValueError):
    """A NaN or infinity got past the encoder (engine/encode.py); orjson would silently write null. A bug: a 500."""


def problem(status: int, title: str, detail: str | None = None, slug: str | None = None, **extra) -> dict:
    """The RFC 9457 body; `type` is a relative URI naming the problem, documented in the README."""
    body = {
        "type": PROBLEM_BASE + slug if slug else "about:blank",
        "title": title,
        "status": status,
        "detail": detail or title,
        # with the gateway's prefix (X-Forwarded-Prefix, trusted under TRUSTED_PROXY_HOPS: service/proxy.py), as the
        # gateway's own problems and the OpenAPI `servers` name it: /grad/v1/gradients, not /v1/gradients
        "instance": request.script_root + request.path if has_request_context() else None,
    }
    body.update({k: v for k, v in {**extra, "request_id": request_id()}.items() if v is not None})
    return body


def problem_response(body: dict, headers: dict | None = None) -> Response:
    resp = Response(current_app.json.dumps(body), status=body["status"], mimetype=PROBLEM_JSON)
    resp.headers.update(headers or {})
    return resp


def engine_problem(err: EngineError) -> dict:
    """The problem body for an engine error (also used per job inside /v1/batch)."""
    status = next(code for cls, code in STATUS_BY_ERROR if isinstance(err, cls))
    extra = {}
    if hasattr(err, "limit"):
        extra["limit"] = {"name": err.limit, "value": err.value}
        if getattr(err, "estimate", None) is not None:
            extra["limit"]["estimate"] = err.estimate
        if getattr(err, "breakdown", None) is not None:
            extra["limit"]["breakdown"] = err.breakdown
        extra["hint"] = getattr(err, "hint", None)
    return problem(status, err.title, err.detail, err.slug, **extra)


def validation_problem(err: ValidationError) -> dict:
    return problem(
        400,
        "Invalid request",
        "The request body does not match the schema; see `errors`.",
        "invalid-request",
        errors=err.messages,
    )


def sorted_allow(value: str) -> str:
    """An `Allow` header's methods in alphabetical order: werkzeug lists them from a set, in an order that changes
    with each process's string hashing ("OPTIONS, POST" in one worker, "POST, OPTIONS" in another)."""
    return ", ".join(sorted({method.strip() for method in value.split(",") if method.strip()}))


def register_error_handlers(app: Flask) -> None:
    """Map every exception to problem+json; unexpected ones become a 500 without internals."""

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        headers = {k: v for k, v in err.get_headers() if k.lower() != "content-type"}
        if "Allow" in headers:  # a 405
            headers["Allow"] = sorted_allow(headers["Allow"])
        extra = {}
        if err.code == 413:
            extra = {"limit": {"name": "max_body_bytes", "value": app.config["MAX_CONTENT_LENGTH"]}}
            return problem_response(
                problem(
                    413,
                    "Limit exceeded",
                    f"The request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes.",
                    "limit-exceeded",
                    **extra,
                    hint=LIMIT_HINTS["max_body_bytes"],
                ),
                headers,
            )
        return problem_response(problem(err.code or 500, err.name, err.description), headers)

    @app.errorhandler(ValidationError)
    def invalid(err: ValidationError):
        return problem_response(validation_problem(err))

    @app.errorhandler(ServiceError)
    def service_error(err: ServiceError):
        return problem_response(problem(err.status, err.title, err.detail, err.slug, **err.extra), err.headers)

    @app.errorhandler(EngineError)
    def engine_error(err: EngineError):
        body = engine_problem(err)
        headers = {"Retry-After": "1"} if body["status"] == 503 else None
        return problem_response(body, headers)

    @app.errorhandler(Exception)
    def crash(err: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(problem(500, "Internal Server Error", "The server failed to compute this request."))
