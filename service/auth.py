"""Optional bearer-token authentication for /v1/*: on when API keys are configured."""

from __future__ import annotations

import hmac
import re
from pathlib import Path

from flask import Flask, request

from .config import ConfigError
from .errors import Unauthorized

# RFC 6750 b64token: what a client can send after "Bearer " without quoting. Rules out whitespace and "#",
# which a key file would otherwise turn silently into a different (shorter) key.
KEY_SYNTAX = re.compile(r"^[A-Za-z0-9._~+/-]+=*$")


def load_api_keys(keys: str, keys_file: str) -> tuple[str, ...]:
    """Keys from API_KEYS (comma-separated) and API_KEYS_FILE (one per line; blank and whole-line `#` comment
    lines skipped).  Fails closed: a variable that is set but yields no key, a malformed key or an unreadable
    file is a ConfigError, never "authentication off"."""
    found = [("API_KEYS", k.strip()) for k in keys.split(",") if k.strip()]
    if keys.strip() and not found:
        raise ConfigError(f"API_KEYS={keys!r} contains no key")
    if keys_file:
        try:
            lines = Path(keys_file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"API_KEYS_FILE={keys_file!r} cannot be read: {err.__class__.__name__}") from None
        from_file = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not from_file:
            raise ConfigError(f"API_KEYS_FILE={keys_file!r} contains no key")
        found += [("API_KEYS_FILE", k) for k in from_file]
    for source, key in found:
        if not KEY_SYNTAX.match(key):
            raise ConfigError(
                f"{source}: a key contains characters other than A-Z a-z 0-9 . _ ~ + / - "
                f"(whitespace and '#' are not allowed; the key is not shown)"
            )
    return tuple(key for _, key in found)


def key_matches(candidate: str, keys: tuple[str, ...]) -> bool:
    """Compare against every key in constant time, so timing says nothing about which or how much matched."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate.encode(), key.encode())
    return matched


def init_auth(app: Flask) -> None:
    keys = load_api_keys(app.config["API_KEYS"], app.config["API_KEYS_FILE"])
    app.extensions["api_keys_required"] = bool(keys)  # the OpenAPI document then declares the bearer scheme
    if not keys:
        return

    @app.before_request
    def require_key():
        if not request.path.startswith("/v1/"):
            return  # health, readiness, metrics and the OpenAPI document stay open
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key_matches(token.strip(), keys):
            raise Unauthorized(
                "Send `Authorization: Bearer <key>` with a configured API key.",
                headers={"WWW-Authenticate": 'Bearer realm="gradsvc"'},
            )
