"""Application factory: configuration, logging, JSON, blueprint, error handlers, OpenAPI."""

from __future__ import annotations

import logging.config

from flask import Flask

from .auth import init_auth
from .config import Config, check_config
from .deadline import init_deadline
from .engine import refcache
from .errors import register_error_handlers, sorted_allow
from .jsonio import StrictJSONProvider
from .logformat import JSON_FORMATTER
from .memory import init_memory
from .observability import init_observability, watch_reference_cache
from .openapi import build_spec
from .proxy import trust_proxies
from .views import BLUEPRINTS
from .warmup import warm_up


def configure_logging(level: str) -> None:
    """JSON lines to stdout, each with the request id; configured before the app exists."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {**JSON_FORMATTER, "fmt": JSON_FORMATTER["fmt"] + " %(request_id)s"}},
            "filters": {"request_id": {"()": "service.observability.RequestIdFilter"}},
            "handlers": {
                "stdout": {
                    "class": "logging.StreamHandler",
                    "stream": "ext://sys.stdout",
                    "formatter": "json",
                    "filters": ["request_id"],
                }
            },
            "root": {"level": level, "handlers": ["stdout"]},
        }
    )


class App(Flask):
    """Flask, remembering ensure_sync()'s answer per function: Flask asks inspect.iscoroutinefunction() again for
    every hook and view on every request (~2 µs each, four or five times a request; the method is documented as
    the one to override).  The app's functions are fixed once it serves, so the dict stays small."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sync_functions: dict = {}

    def ensure_sync(self, func):
        try:
            return self._sync_functions[func]
        except KeyError:
            sync = self._sync_functions[func] = super().ensure_sync(func)
            return sync
        except TypeError:  # an unhashable callable
            return super().ensure_sync(func)

    def make_default_options_response(self):
        """OPTIONS on any route (an unknown path stays a 404): 204 No Content with `Allow` (its methods sorted, as on a
        405), no body and so no Content-Type (Flask's is a 200 with an empty text/html body, the one non-JSON type
        the API would send)."""
        response = super().make_default_options_response()
        response.status_code = 204
        response.headers["Allow"] = sorted_allow(response.headers["Allow"])
        response.headers.pop("Content-Type", None)
        return response


def create_app(config: type[Config] | None = None) -> Flask:
    """Build a configured app; the default config reads the environment."""
    config = config or Config
    configure_logging(config.LOG_LEVEL)
    app = App(__name__, static_folder=None)  # the playground blueprint serves its own assets
    # `/v1//gradients` is an unknown path (the 404 problem), not werkzeug's 308 to `/v1/gradients` with an HTML
    # body: Flask returns routing redirects as they are, past the error handlers. Set before any route is added.
    app.url_map.merge_slashes = False
    app.config.from_object(config)
    app.json = StrictJSONProvider(app)
    check_config(config)
    if app.config["TRUSTED_PROXY_HOPS"]:
        app.wsgi_app = trust_proxies(app.wsgi_app, app.config["TRUSTED_PROXY_HOPS"])
    init_observability(app)  # first: every later hook and error already has a request id
    cache = refcache.configure(app.config["REFERENCE_CACHE_ENTRIES"], app.config["REFERENCE_CACHE_BYTES"])
    watch_reference_cache(cache)
    init_auth(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    register_error_handlers(app)
    app.extensions["openapi"] = build_spec(app)  # served by views/meta.py
    init_deadline(app)  # outermost but one: the deadline covers the body read, hooks, views and encoding
    if app.config["WARM_UP"]:
        warm_up(app.config["TORCH_THREADS"])
    init_memory(app)  # outermost: memory is given back after the response, outside the deadline
    return app
