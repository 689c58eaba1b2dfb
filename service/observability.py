"""Request ids, one JSON log line per request, and Prometheus metrics that add up across gunicorn workers."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime

from flask import Flask, Response, g, has_request_context, request
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder

from . import metrics_compact, metrics_files
from .metric_labels import environ_route, method_label, route_label
from .process_metrics import update_process_memory

REQUEST_ID_HEADER = "X-Request-ID"
VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("gradsvc.access")
log = logging.getLogger(__name__)

metrics_files.install()  # before the first metric: its files' space allocated, never sparse

REQUESTS = Counter("gradsvc_http_requests_total", "HTTP requests answered", ["route", "method", "status"])
LATENCY = Histogram(
    "gradsvc_http_request_duration_seconds",
    "Time to answer a request",
    ["route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
COMPUTE = Histogram(
    "gradsvc_compute_seconds",
    "Time in the torch engine, by model kind",
    ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WORKER_RECYCLES = Counter(
    "gradsvc_worker_recycles_total",
    "Workers that exited for a fresh one after a request (reason: rss)",
    ["reason"],
)
IN_FLIGHT = Gauge("gradsvc_requests_in_flight", "Requests being answered", multiprocess_mode="livesum")
REFCACHE_LOOKUPS = Counter("gradsvc_reference_cache_lookups_total", "Grading reference cache lookups", ["result"])
REFCACHE_EVICTIONS = Counter("gradsvc_reference_cache_evictions_total", "Grading references evicted (LRU)")
REFCACHE_ENTRIES = Gauge("gradsvc_reference_cache_entries", "Grading references cached", multiprocess_mode="livesum")
REFCACHE_BYTES = Gauge(
    "gradsvc_reference_cache_bytes", "Estimated bytes held by cached references", multiprocess_mode="livesum"
)
METRICS_WRITE_ERRORS = Counter(
    "gradsvc_metrics_write_errors_total",
    "Metric updates lost because PROMETHEUS_MULTIPROC_DIR had no room for them; their requests were answered",
)


ENVIRON_REQUEST_ID = "gradsvc.request_id"
ENVIRON_LOGGED = "gradsvc.logged"  # the request's access line is written
ENVIRON_COUNTED = "gradsvc.counted"  # the request is counted in /metrics


class RequestIdFilter(logging.Filter):
    """Put the current request id on every log record (\"-\" outside a request, unless the caller gave one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context():
            record.request_id = g.get("request_id", "-")
        elif not hasattr(record, "request_id"):  # after the request, a caller may name it (`extra`)
            record.request_id = "-"
        return True


class AccessLog:
    """One JSON line per request, written straight to stdout.

    The line is byte for byte what the logging formatter of service/logformat.py writes (json.dumps' separators
    and ASCII escapes; level, logger, message, pid, request_id, then the request's fields, then time in ISO 8601
    UTC with its zone), so one parser and one grep read every line; building it without a LogRecord,
    a filter and python-json-logger's generic formatter cut ~8 % of a small request's time
    (docs/performance.md, "Real workload").
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def write(self, rid: str, fields: dict) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        now = datetime.now(UTC).isoformat(timespec="microseconds")  # 2026-11-27T06:39:00.092113+00:00
        line = {
            "level": "INFO",
            "logger": self.logger.name,
            "message": "request",
            "pid": os.getpid(),
            "request_id": rid,
            **fields,
            "time": now,
        }
        try:
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):  # stdout closed: as logging does, never fail the request for its log line
            pass


class LostMetrics:
    """A metric update the files could not take costs that update, never the request it belongs to.

    Only a new label combination can fail once a worker runs (its files are allocated when it starts: the values it
    has are written in place), when its file must grow on a full volume (service/metrics_files.py). That failure
    is counted in gradsvc_metrics_write_errors_total (its own value sits in the allocated space) and logged at most
    once a minute per worker: a full volume fails every new combination, and a line each would flood the log."""

    LOG_EVERY_SECONDS = 60.0

    def __init__(self) -> None:
        self.logged_at: float | None = None

    def __call__(self, exc: OSError) -> None:
        METRICS_WRITE_ERRORS.inc()
        now = time.monotonic()
        if self.logged_at is None or now - self.logged_at >= self.LOG_EVERY_SECONDS:
            self.logged_at = now
            log.warning(
                "a metric update was lost, its request answered all the same (the next such line in a minute at the "
                "earliest; gradsvc_metrics_write_errors_total counts them): %s",
                exc,
            )


metric_lost = LostMetrics()


class RequestMetrics:
    """Counter and histogram children per (route, method, status), resolved once instead of per request; the
    labels are bounded (service/metric_labels.py), so this dict is too."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._children.get((route, method, status))
        if children is None:  # a few dozen combinations at most: routes are the app's rules
            try:
                children = REQUESTS.labels(route, method, str(status)), LATENCY.labels(route, str(status))
            except OSError as exc:  # no room for the new combination: tried again next time
                metric_lost(exc)
                return
            self._children[route, method, status] = children
        children[0].inc()
        children[1].observe(seconds)


def environ_request_id(environ: dict) -> str:
    """The id of a request whose context may be gone: the one start_request gave it, else (it never ran) the
    client's valid X-Request-ID or a new one, kept in the environ from then on."""
    rid = environ.get(ENVIRON_REQUEST_ID)
    if rid is None:
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        rid = environ[ENVIRON_REQUEST_ID] = incoming if VALID_REQUEST_ID.match(incoming) else os.urandom(16).hex()
    return rid


def request_id() -> str | None:
    return g.get("request_id") if has_request_context() else None


@contextmanager
def compute_timer(kind: str):
    """Time one engine call for gradsvc_compute_seconds{kind}."""
    start = time.perf_counter()
    try:
        yield
    finally:
        try:
            COMPUTE.labels(kind).observe(time.perf_counter() - start)
        except OSError as exc:  # a kind's first request, on a full metrics volume
            metric_lost(exc)


_count_lookups = True


@contextmanager
def lookups_uncounted():
    """The warm-up's reference cache lookups (service/warmup.py) are not the service's: like its engine calls, which
    compute_timer never sees, they stay out of gradsvc_reference_cache_lookups_total (each worker's start counted
    5 hits and 5 misses). The size gauges still follow what the cache keeps."""
    global _count_lookups
    _count_lookups = False
    try:
        yield
    finally:
        _count_lookups = True


def watch_reference_cache(cache) -> None:
    """Count the reference cache's hits and misses, and export its size (engine/refcache.py knows no Prometheus)."""
    hit, miss = REFCACHE_LOOKUPS.labels("hit"), REFCACHE_LOOKUPS.labels("miss")

    def on_event(event: str, cache) -> None:
        if event == "hit":
            if _count_lookups:
                hit.inc()
        elif event == "miss":
            if _count_lookups:
                miss.inc()
        else:  # store, evict, clear
            if event == "evict":
                REFCACHE_EVICTIONS.inc()
            REFCACHE_ENTRIES.set(len(cache))
            REFCACHE_BYTES.set(cache.nbytes)

    cache.listener = on_event


class MultiProcessCollector(multiprocess.MultiProcessCollector):
    """The library's collector, minus the files another process is creating at this moment: MmapedDict opens a
    new file and only then sizes it, and a scrape that read it in between failed with struct.error (a 500, seen
    while workers recycled every 20 requests). Such a file holds no value yet, so skipping it loses nothing."""

    def __init__(self, registry: CollectorRegistry, path: str) -> None:
        super().__init__(registry, path)
        self.directory = path

    def collect(self):
        files = []
        for entry in os.scandir(self.directory):
            try:
                if entry.name.endswith(".db") and entry.stat().st_size > 0:
                    files.append(entry.path)
            except FileNotFoundError:  # a dead worker's live gauge, removed by the master meanwhile
                continue
        return self.merge(files, accumulate=True)


def metrics_response() -> Response:
    """Prometheus text format; in multiprocess mode the workers' files are summed on every scrape, under the shared
    lock that keeps the master's compaction from swapping files mid-scrape (service/metrics_compact.py).
    FileNotFoundError if the directory is gone (deleted while the server runs)."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return Response(encoder(REGISTRY), content_type=content_type)
    if not os.path.isdir(path):  # the library's collector would say ValueError
        raise FileNotFoundError(errno.ENOENT, "the metrics directory is gone", path)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path)
    with metrics_compact.shared_lock(path):
        body = encoder(registry)
    return Response(body, content_type=content_type)


def init_observability(app: Flask) -> None:
    """Accept or make a request id, echo it, count and time the request, log one JSON line for it."""

    access = AccessLog(access_log)
    request_metrics = RequestMetrics()

    # Each `request.` or `g.` is a context-variable lookup through a proxy (~1 µs): the hooks bind both once.
    @app.before_request
    def start_request():
        ctx = g._get_current_object()
        # kept in the environ too: for what answers after the request context is gone (the deadline's middleware)
        ctx.request_id = environ_request_id(request.environ)
        ctx.started = time.perf_counter()
        IN_FLIGHT.inc()
        ctx.in_flight = True

    @app.after_request
    def finish_request(response: Response) -> Response:
        req, ctx = request._get_current_object(), g._get_current_object()
        rid = ctx.get("request_id") or os.urandom(16).hex()  # a request rejected before before_request ran
        response.headers[REQUEST_ID_HEADER] = rid
        environ = req.environ
        environ[ENVIRON_REQUEST_ID] = rid  # for what runs after the request context is gone (the memory guard)
        now = time.perf_counter()
        elapsed = now - ctx.get("started", now)
        route = route_label(req)
        status = response.status_code
        method = req.method
        request_metrics.observe(route, method_label(method), status, elapsed)
        environ[ENVIRON_COUNTED] = True
        access.write(
            rid,
            {
                "method": method,
                "path": req.path,
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "bytes": response.calculate_content_length(),
                "remote_addr": req.remote_addr,
            },
        )
        environ[ENVIRON_LOGGED] = True  # after the line: a deadline between the two logs it twice, never not at all
        update_process_memory()
        return response

    def finish_outside_app(environ: dict, status: int, size: int, seconds: float) -> None:
        """Count and log a response the app did not finish (the deadline fired in a hook or an error handler, and
        the deadline's middleware answers, under environ_request_id): its metrics and access line, unless the app
        wrote them already (then they have the status the app meant to send, and the middleware's warning the 503:
        counted again, one request was two in /metrics, a second audit)."""
        if environ.get(ENVIRON_LOGGED):
            return
        environ[ENVIRON_LOGGED] = True
        method = environ.get("REQUEST_METHOD", "-")
        route = environ_route(app.url_map, environ)  # a 405's route too, as route_label labels it
        if not environ.get(ENVIRON_COUNTED):  # the deadline fired while finish_request wrote the line: counted once
            request_metrics.observe(route, method_label(method), status, seconds)
        fields = {
            "method": method,
            "path": environ.get("PATH_INFO", ""),
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "bytes": size,
            "remote_addr": environ.get("REMOTE_ADDR"),
        }
        access.write(environ_request_id(environ), fields)

    app.extensions["finish_outside_app"] = finish_outside_app

    @app.teardown_request
    def end_request(exc):
        if g.pop("in_flight", False):
            IN_FLIGHT.dec()
