"""Optional bearer-token authentication for /v1/*: on when API keys are configured."""
from __future__ import annotations

import hmac
from pathlib import Path

from flask import Flask, request

from .errors import Unauthorized


def load_api_keys(keys: str, keys_file: str) -> tuple[str, ...]:
    """Keys from API_KEYS (comma-separated) and API_KEYS_FILE (one per line, # comments), blanks dropped."""
    found = [k.strip() for k in keys.split(",")]
    if keys_file:
        found += [line.split("#", 1)[0].strip() for line in Path(keys_file).read_text().splitlines()]
    return tuple(k for k in found if k)


def key_matches(candidate: str, keys: tuple[str, ...]) -> bool:
    """Compare against every key in constant time, so timing says nothing about which or how much matched."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate.encode(), key.encode())
    return matched


def init_auth(app: Flask) -> None:
    keys = load_api_keys(app.config["API_KEYS"], app.config["API_KEYS_FILE"])
    if not keys:
        return

    @app.before_request
    def require_key():
        if not request.path.startswith("/v1/"):
            return  # health, readiness, metrics and the OpenAPI document stay open
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key_matches(token.strip(), keys):
            raise Unauthorized("Send `Authorization: Bearer <key>` with a configured API key.",
                               headers={"WWW-Authenticate": 'Bearer realm="gradsvc"'})
