"""Trusting a gateway's X-Forwarded-* headers (TRUSTED_PROXY_HOPS), with X-Forwarded-Prefix kept to a path.

werkzeug's ProxyFix copies X-Forwarded-Prefix into SCRIPT_NAME unchecked, and /openapi.json names it as the
server URL: `X-Forwarded-Prefix: https://evil.example` would point a client's generated code elsewhere.
The prefix (SCRIPT_NAME) also begins every problem's `instance` (service/errors.py), as in the gateway's own.
"""

from __future__ import annotations

import re

from werkzeug.middleware.proxy_fix import ProxyFix

# One or more path segments of unreserved characters (what deploy/nginx/render.py accepts for its prefix),
# none of them "." or "..".
PREFIX_PATH = re.compile(r"^(/(?!\.\.?(?:/|$))[A-Za-z0-9._~-]+)+$")


class PathOnlyPrefix:
    """Drop an X-Forwarded-Prefix header unless every comma-separated value is a plain absolute path."""

    def __init__(self, app) -> None:
        self.app = app

    def __call__(self, environ, start_response):
        prefix = environ.get("HTTP_X_FORWARDED_PREFIX")
        if prefix is not None and not all(PREFIX_PATH.match(p.strip()) for p in prefix.split(",")):
            del environ["HTTP_X_FORWARDED_PREFIX"]
        return self.app(environ, start_response)


def trust_proxies(wsgi_app, hops: int):
    """ProxyFix for `hops` proxies, behind a guard that lets only a path through as the prefix."""
    return PathOnlyPrefix(ProxyFix(wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_prefix=hops))
