"""The service with extra hooks that stall past the deadline when a request asks (`X-Stall: WHERE`), so the deadline
fires at a chosen place, deterministically, for tests/test_deadline.py. Served by gunicorn as
`stalling_hooks_app:app` (tests/ on PYTHONPATH); not part of the service.

- `before`: a before_request hook, after observability's start_request (the request has its id), before the view;
- `after`: the last after_request hook, after finish_request logged the request;
- `push`: while Flask pushes the request's contexts (an appcontext_pushed receiver), before any hook;
- `teardown`: a teardown_request function, after the app called start_response.

`X-Stall-Seconds` sets how long (default 60 s, which the deadline's SIGALRM interrupts where it may)."""

from __future__ import annotations

import time

from flask import appcontext_pushed

from service import create_app

app = create_app()
_asked: dict[str, str] = {}  # the current request's X-Stall headers, seen before its contexts exist (sync worker)


def stall(where: str) -> None:
    if _asked.get("where") == where:
        time.sleep(float(_asked.get("seconds") or 60))


class StallingRequest(app.request_class):
    """Built before Flask pushes the contexts: notes what the request asks for."""

    def __init__(self, environ, *args, **kwargs):
        super().__init__(environ, *args, **kwargs)
        _asked.clear()
        _asked.update(where=environ.get("HTTP_X_STALL", ""), seconds=environ.get("HTTP_X_STALL_SECONDS", ""))


app.request_class = StallingRequest
appcontext_pushed.connect(lambda sender, **_: stall("push"), app, weak=False)


@app.before_request
def stall_before_the_view():
    """After observability's start_request (the request has its id), before the view."""
    stall("before")


def stall_after_the_access_line(response):
    """Run last of the after_request hooks (Flask runs them in reverse), after finish_request logged the request."""
    stall("after")
    return response


app.after_request_funcs.setdefault(None, []).insert(0, stall_after_the_access_line)


@app.teardown_request
def stall_after_start_response(exc):
    """Teardown runs as Flask pops the request context, after the response's start_response."""
    stall("teardown")
