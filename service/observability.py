"""Request ids, one JSON log line per request, and Prometheus metrics that add up across gunicorn workers."""
from __future__ import annotations

import logging
import os
import re
import time
import uuid
from contextlib import contextmanager

from flask import Flask, Response, g, has_request_context, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUEST_ID_HEADER = "X-Request-ID"
VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("gradsvc.access")

REQUESTS = Counter("gradsvc_http_requests_total", "HTTP requests answered", ["route", "method", "status"])
LATENCY = Histogram(
    "gradsvc_http_request_duration_seconds", "Time to answer a request", ["route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
COMPUTE = Histogram(
    "gradsvc_compute_seconds", "Time in the torch engine, by model kind", ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WORKER_RECYCLES = Counter(
    "gradsvc_worker_recycles_total", "Workers that exited for a fresh one after a request (reason: rss)", ["reason"],
)
IN_FLIGHT = Gauge("gradsvc_requests_in_flight", "Requests being answered", multiprocess_mode="livesum")


class RequestIdFilter(logging.Filter):
    """Put the current request id on every log record (\"-\" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


def request_id() -> str | None:
    return g.get("request_id") if has_request_context() else None


@contextmanager
def compute_timer(kind: str):
    """Time one engine call for gradsvc_compute_seconds{kind}."""
    start = time.perf_counter()
    try:
        yield
    finally:
        COMPUTE.labels(kind).observe(time.perf_counter() - start)


def metrics_response() -> Response:
    """Prometheus text format; in multiprocess mode the workers' files are summed on every scrape."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE_LATEST})


def init_observability(app: Flask) -> None:
    """Accept or make a request id, echo it, count and time the request, log one JSON line for it."""

    @app.before_request
    def start_request():
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()
        IN_FLIGHT.inc()
        g.in_flight = True

    @app.after_request
    def finish_request(response: Response) -> Response:
        rid = g.get("request_id") or uuid.uuid4().hex  # a request rejected before before_request ran
        response.headers[REQUEST_ID_HEADER] = rid
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        route = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        LATENCY.labels(route, str(response.status_code)).observe(elapsed)
        access_log.info(
            "request",
            extra={"method": request.method, "path": request.path, "route": route, "status": response.status_code,
                   "duration_ms": round(elapsed * 1000, 3), "bytes": response.calculate_content_length(),
                   "remote_addr": request.remote_addr},
        )
        return response

    @app.teardown_request
    def end_request(exc):
        if g.pop("in_flight", False):
            IN_FLIGHT.dec()
