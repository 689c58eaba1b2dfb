"""Configuration: environment variables read once at start-up and converted explicitly."""
from __future__ import annotations

import os
from dataclasses import fields

from .engine.limits import Limits


def as_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def as_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def limits_from_env() -> Limits:
    """Every Limits field can be overridden by its upper-case name, e.g. MAX_TENSOR_ELEMENTS=10000."""
    cast = {int: as_int, float: as_float, "int": as_int, "float": as_float}
    values = {f.name: cast[f.type](f.name.upper(), f.default) for f in fields(Limits)}
    return Limits(**values)


class Config:
    """Production defaults; tests subclass it."""

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
    TORCH_THREADS = as_int("TORCH_THREADS", 1)
    WARM_UP = os.environ.get("WARM_UP", "1") != "0"
    LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
    # a worker still over this RSS after a request (and after giving memory back) exits and gunicorn starts a
    # fresh one; 768 MiB fits the deploy's 2 GiB pod: two workers plus the master, with headroom for one request
    MAX_WORKER_RSS_MB = as_float("MAX_WORKER_RSS_MB", 768)
