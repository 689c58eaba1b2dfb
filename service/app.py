"""Application factory: configuration, logging, JSON, blueprint, error handlers, OpenAPI."""
from __future__ import annotations

import logging.config

from flask import Flask, request

from . import engine
from .api import bp
from .config import Config
from .errors import register_error_handlers
from .grading import bp as grading_bp
from .jsonio import StrictJSONProvider
from .openapi import build_spec, document_for

DOCUMENTED_VIEWS = ["api.gradients", "api.models", "api.healthz", "api.readyz", "grading.check", "grading.batch"]


def configure_logging(level: str) -> None:
    """Log to stdout once, before the app exists, so gunicorn's and ours interleave in one stream."""
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "plain"}},
        "root": {"level": level, "handlers": ["stdout"]},
    })


def create_app(config: type[Config] | None = None) -> Flask:
    """Build a configured app; the default config reads the environment."""
    config = config or Config
    configure_logging(config.LOG_LEVEL)
    app = Flask(__name__)
    app.config.from_object(config)
    app.json = StrictJSONProvider(app)
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
