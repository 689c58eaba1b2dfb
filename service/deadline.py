"""The request's hard deadline on the HTTP side: armed around the whole WSGI call, answered as a 503 problem.

From the first byte of the body read to the encoded answer, a request gets MAX_WALL_SECONDS
(engine/deadline.py interrupts it there).  Inside a view, or while its answer is encoded, the interrupt becomes
DeadlineExceeded, so the usual error handler, access log and metrics answer it; anywhere else in the dispatch (a
hook, the error handler itself) the middleware answers the 503 on its own, under the request's id and with its
access line (observability's finish_outside_app).  gunicorn's worker timeout (deploy/gunicorn.conf.py) is set well
above MAX_WALL_SECONDS, so it never is what ends a request.

The timer interrupts Flask's dispatch only (full_dispatch_request: hooks, view, encoding, error handlers).  Flask's
context push before it and, after it, start_response and the context's pop are fixed work of well under a
millisecond that an exception would leave half done: an interrupt in the push answered a 500 (LookupError, the app
context left pushed), and one after start_response made the middleware's 503 follow the 200's headers, which
gunicorn sent as one response with two Content-Lengths.  So an alarm during the push ends the request as its
dispatch begins, and one after the dispatch is ignored: the answer is built, and it is sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flask import Flask

from .engine.deadline import DeadlineInterrupt, interruptible, request_deadline
from .engine.errors import DeadlineExceeded
from .jsonio import dumps_bytes
from .observability import REQUEST_ID_HEADER, environ_request_id

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class DeadlineMiddleware:
    """WSGI middleware: the request's deadline is armed before the app reads anything and disarmed after it."""

    def __init__(self, app, seconds: float, finish: Callable[[dict, int, int, float], None]) -> None:
        self.app = app
        self.seconds = seconds
        self.finish = finish  # counts the middleware's own answer and writes its access line

    def __call__(self, environ, start_response):
        began = time.perf_counter()
        try:
            with request_deadline(self.seconds, anywhere=False):  # init_deadline opens it for the dispatch
                return self.app(environ, start_response)
        except DeadlineInterrupt as stop:  # raised in the dispatch, before the app called start_response
            return self._deadline_response(environ, start_response, stop, began)

    def _deadline_response(self, environ, start_response, stop: DeadlineInterrupt, began: float):
        err = DeadlineExceeded(stop.seconds)
        body = {
            "type": "/problems/" + err.slug,
            "title": err.title,
            "status": 503,
            "detail": err.detail,
            "instance": environ.get("SCRIPT_NAME", "") + environ["PATH_INFO"] if "PATH_INFO" in environ else None,
            "limit": {"name": err.limit, "value": err.value},
            "request_id": environ_request_id(environ),
        }
        payload = dumps_bytes(body)
        self.finish(environ, 503, len(payload), time.perf_counter() - began)
        log.warning(
            "wall-time limit hit outside a view on %s %s",
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
            extra={"request_id": body["request_id"]},
        )
        headers = [
            ("Content-Type", PROBLEM_JSON),
            ("Content-Length", str(len(payload))),
            ("Retry-After", "1"),
            (REQUEST_ID_HEADER, body["request_id"]),
        ]
        start_response("503 Service Unavailable", headers)
        return [payload]


def init_deadline(app: Flask) -> None:
    """Arm MAX_WALL_SECONDS around every request; call last in create_app so the middleware is outermost."""
    seconds = app.config["LIMITS"].max_wall_seconds
    full_dispatch = app.full_dispatch_request

    def full_dispatch_request():
        """The stretch the deadline may interrupt: from the first hook to the finished response."""
        with interruptible():
            return full_dispatch()

    app.full_dispatch_request = full_dispatch_request
    dispatch_view = app.dispatch_request

    def dispatch_request():
        """The view, with the interrupt turned into an ordinary engine error for the error handlers."""
        try:
            return dispatch_view()
        except DeadlineInterrupt as stop:
            raise DeadlineExceeded(stop.seconds) from None

    app.dispatch_request = dispatch_request
    make_response = app.make_response

    def make_response_within_deadline(rv):
        """Encoding the view's answer (a large one takes ~0.2 s) can be where the deadline fires: answered by the
        error handler like a view's, so the 503 is counted, logged and carries the request id."""
        try:
            return make_response(rv)
        except DeadlineInterrupt as stop:
            return make_response(app.handle_user_exception(DeadlineExceeded(stop.seconds)))

    app.make_response = make_response_within_deadline
    app.wsgi_app = DeadlineMiddleware(app.wsgi_app, seconds, app.extensions["finish_outside_app"])
