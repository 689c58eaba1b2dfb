"""The service with two extra hooks that stall past the deadline when a request asks (`X-Stall: before` or
`after`): the deadline then fires outside any view, deterministically, for tests/test_deadline.py. Served by
gunicorn as `stalling_hooks_app:app` (tests/ on PYTHONPATH); not part of the service."""

from __future__ import annotations

import time

from flask import request

from service import create_app

app = create_app()


@app.before_request
def stall_before_the_view():
    """After observability's start_request (the request has its id), before the view."""
    if request.headers.get("X-Stall") == "before":
        time.sleep(60)  # the deadline's SIGALRM interrupts it


def stall_after_the_access_line(response):
    """Run last of the after_request hooks (Flask runs them in reverse), after finish_request logged the request."""
    if request.headers.get("X-Stall") == "after":
        time.sleep(60)
    return response


app.after_request_funcs.setdefault(None, []).insert(0, stall_after_the_access_line)
