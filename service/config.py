"""Configuration: environment variables read once at start-up and converted explicitly.

A bad value must stop the server, not fall back to a default: every conversion that fails is collected in
ENV_ERRORS (importing this module never raises, so gunicorn's entry point can report them) and
check_config() turns them into one ConfigError, which service/wsgi.py prints as one line before exiting.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import fields

from .engine.limits import MAX_AST_DEPTH_CEILING, MAX_WALL_SECONDS_CEILING, MIN_WALL_SECONDS, Limits

ENV_ERRORS: list[str] = []
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class ConfigError(ValueError):
    """A setting that would make the server run differently from what the operator asked for."""


def as_int(name: str, default: int, minimum: int = 0, maximum: int | None = None, why: str = "") -> int:
    """An integer from `minimum` to `maximum`; anything else is recorded in ENV_ERRORS (with `why` a bound holds)
    and the default kept meanwhile."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        ENV_ERRORS.append(f"{name}={raw!r} is not an integer")
        return default
    if value < minimum:
        ENV_ERRORS.append(
            f"{name}={raw!r} " + ("must not be negative" if minimum == 0 else f"must be at least {minimum}")
        )
        return default
    if maximum is not None and value > maximum:
        ENV_ERRORS.append(f"{name}={raw!r} must be at most {maximum}{why}")
        return default
    return value


def as_float(name: str, default: float, minimum: float = 0.0, maximum: float | None = None, why: str = "") -> float:
    """A finite number from `minimum` to `maximum`; anything else is recorded in ENV_ERRORS (with `why` the bounds
    hold)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        ENV_ERRORS.append(f"{name}={raw!r} is not a number")
        return default
    if not math.isfinite(value) or value < 0:
        ENV_ERRORS.append(f"{name}={raw!r} must be a finite, non-negative number")
        return default
    if value < minimum:
        ENV_ERRORS.append(f"{name}={raw!r} must be at least {minimum:g}{why}")
        return default
    if maximum is not None and value > maximum:
        ENV_ERRORS.append(f"{name}={raw!r} must be at most {maximum:g}{why}")
        return default
    return value


def as_bool(name: str, default: bool) -> bool:
    """1/true/yes/on or 0/false/no/off, as deploy/gunicorn.conf.py reads GUNICORN_PRELOAD; anything else is refused."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    ENV_ERRORS.append(f"{name}={raw!r} is not a boolean (1/0, true/false, yes/no, on/off)")
    return default


def as_log_level(name: str, default: str) -> str:
    raw = os.environ.get(name, "").strip().upper() or default
    if raw not in LOG_LEVELS:
        ENV_ERRORS.append(f"{name}={raw!r} is not one of {', '.join(LOG_LEVELS)}")
        return default
    return raw


# The bounds of engine/limits.py, with why they hold, for the one-line refusal
LIMIT_BOUNDS = {
    "max_wall_seconds": {
        "minimum": MIN_WALL_SECONDS,
        "maximum": MAX_WALL_SECONDS_CEILING,
        "why": " (seconds): below, a request's fixed work runs into the deadline; above, it bounds nothing "
        "(docs/operate.md)",
    },
    "max_ast_depth": {
        "maximum": MAX_AST_DEPTH_CEILING,
        "why": ": Python's parser refuses formulas nested deeper (200 parentheses; docs/operate.md)",
    },
}


def limits_from_env() -> Limits:
    """Every Limits field can be overridden by its upper-case name, e.g. MAX_TENSOR_ELEMENTS=10000."""
    cast = {int: as_int, float: as_float, "int": as_int, "float": as_float}
    values = {f.name: cast[f.type](f.name.upper(), f.default, **LIMIT_BOUNDS.get(f.name, {})) for f in fields(Limits)}
    return Limits(**values)


def zero_limits(config) -> list[str]:
    """A limit of 0 refuses every request (or, for the RSS ceiling, recycles the worker after each one)."""
    values = {f.name.upper(): getattr(config.LIMITS, f.name) for f in fields(Limits)}
    values.update(MAX_BODY_BYTES=config.MAX_CONTENT_LENGTH, MAX_WORKER_RSS_MB=config.MAX_WORKER_RSS_MB)
    return [f"{name}=0 must be positive" for name, value in values.items() if value == 0]


def check_config(config) -> None:
    """Raise one ConfigError naming every bad environment value (only for configs read from the environment)."""
    if getattr(config, "FROM_ENVIRONMENT", False):
        errors = ENV_ERRORS + zero_limits(config)
        if errors:
            raise ConfigError("; ".join(errors))
    if config.TRUSTED_PROXY_HOPS:
        logging.getLogger("gradsvc.config").warning(
            "TRUSTED_PROXY_HOPS=%d: X-Forwarded-For/Proto/Host/Prefix are trusted; the app port must be "
            "reachable only through the gateway (docs/edge.md)",
            config.TRUSTED_PROXY_HOPS,
        )


class Config:
    """Production defaults; tests subclass it."""

    FROM_ENVIRONMENT = True  # check_config() refuses to start when a variable below was malformed

    # request limits (engine limits plus the ones enforced before the engine)
    LIMITS = limits_from_env()
    MAX_CONTENT_LENGTH = as_int("MAX_BODY_BYTES", 32 * 1024 * 1024)
    MAX_BATCH_JOBS = LIMITS.max_batch_jobs  # one of the Limits, read from MAX_BATCH_JOBS

    # behind a gateway / security
    TRUSTED_PROXY_HOPS = as_int("TRUSTED_PROXY_HOPS", 0)  # X-Forwarded-* headers trusted from this many proxies
    API_KEYS = os.environ.get("API_KEYS", "")  # comma-separated; empty (and no file) = no authentication
    API_KEYS_FILE = os.environ.get("API_KEYS_FILE", "")  # one key per line, e.g. a mounted secret

    # grading references cached per worker by problem (service/engine/refcache.py); 0 entries turns it off
    REFERENCE_CACHE_ENTRIES = as_int("REFERENCE_CACHE_ENTRIES", 1024)
    REFERENCE_CACHE_BYTES = as_int("REFERENCE_CACHE_BYTES", 32 * 1024 * 1024)

    # process
    TORCH_THREADS = as_int("TORCH_THREADS", 1, minimum=1)  # torch.set_num_threads refuses 0: every worker died
    WARM_UP = as_bool("WARM_UP", True)
    LOG_LEVEL = as_log_level("LOG_LEVEL", "INFO")
    # a worker still over this RSS after a request (and after giving memory back) exits and gunicorn starts a
    # fresh one. 768 MiB suits a host without a memory limit; the image and the manifests set 512 so that 2 workers,
    # each with one request's budget on top, and the master fit 2 GiB (docs/operate.md, "Sizing a course")
    MAX_WORKER_RSS_MB = as_float("MAX_WORKER_RSS_MB", 768)
