"""Label values with a fixed upper bound: a client chooses the method and the path, never the series count.

Unknown methods fold into `other` and paths that match no route into `unmatched`; a 405 on a known path is
labelled with that route (werkzeug raises before it sets request.url_rule).
"""

from __future__ import annotations

from flask import Request, current_app
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map

KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def route_label(request: Request) -> str:
    if request.url_rule is not None:
        return request.url_rule.rule
    return environ_route(current_app.url_map, request.environ)


def environ_route(url_map: Map, environ: dict) -> str:
    """The route label of a request's environ, also outside a request context (the deadline's middleware)."""
    adapter = url_map.bind_to_environ(environ)
    try:
        return adapter.match(return_rule=True)[0].rule
    except MethodNotAllowed as exc:
        if exc.valid_methods:
            try:
                return adapter.match(method=next(iter(exc.valid_methods)), return_rule=True)[0].rule
            except HTTPException:
                pass
    except HTTPException:
        pass
    return "unmatched"
