"""Label values with a fixed upper bound: a client chooses the method and the path, never the series count.

Unknown methods fold into `other` and paths that match no route into `unmatched`; a 405 on a known path is
labelled with that route (werkzeug raises before it sets request.url_rule).
"""

from __future__ import annotations

from flask import Request, current_app
from werkzeug.exceptions import HTTPException, MethodNotAllowed

KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def route_label(request: Request) -> str:
    if request.url_rule is not None:
        return request.url_rule.rule
    exc = request.routing_exception
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        try:
            adapter = current_app.url_map.bind_to_environ(request.environ)
            rule, _ = adapter.match(method=next(iter(exc.valid_methods)), return_rule=True)
            return rule.rule
        except HTTPException:
            pass
    return "unmatched"
