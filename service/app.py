"""Application factory: configuration, logging, JSON, blueprint, error handlers, OpenAPI."""
from __future__ import annotations

import logging.config

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from . import engine
from .api import bp
from .auth import init_auth
from .config import Config
from .errors import register_error_handlers
from .grading import bp as grading_bp
from .jsonio import StrictJSONProvider
from .engine import refcache
from .observability import init_observability, watch_reference_cache
from .openapi import build_spec, document_for

DOCUMENTED_VIEWS = ["api.gradients", "api.models", "api.healthz", "api.readyz", "metrics", "grading.check", "grading.batch"]


def configure_logging(level: str) -> None:
    """JSON lines to stdout, each with the request id; configured before the app exists."""
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }},
        "filters": {"request_id": {"()": "service.observability.RequestIdFilter"}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout",
                                "formatter": "json", "filters": ["request_id"]}},
        "root": {"level": level, "handlers": ["stdout"]},
    })


def create_app(config: type[Config] | None = None) -> Flask:
    """Build a configured app; the default config reads the environment."""
    config = config or Config
    configure_logging(config.LOG_LEVEL)
    app = Flask(__name__)
    app.config.from_object(config)
    app.json = StrictJSONProvider(app)
    if app.config["TRUSTED_PROXY_HOPS"]:
        hops = app.config["TRUSTED_PROXY_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_prefix=hops)
    init_observability(app)  # first: every later hook and error already has a request id
    cache = refcache.configure(app.config["REFERENCE_CACHE_ENTRIES"], app.config["REFERENCE_CACHE_BYTES"])
    watch_reference_cache(cache)
    init_auth(app)
    app.register_blueprint(bp)
    app.register_blueprint(grading_bp)
    register_error_handlers(app)

    spec = build_spec(app, DOCUMENTED_VIEWS)

    @app.get("/openapi.json")
    def openapi():
        """The OpenAPI 3 document, with `servers` set to the prefix the request came through."""
        return document_for(spec, request.script_root)

    if app.config["WARM_UP"]:
        engine.warm_up(app.config["TORCH_THREADS"])
    return app
