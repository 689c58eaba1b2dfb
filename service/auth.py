"""Optional bearer-token authentication for /v1/*: on when API keys are configured.

Keys from API_KEYS_FILE follow the file while the server runs: Kubernetes updates a mounted Secret in place
(a new file behind the same path), and a preloaded app read once would keep the old keys until a restart.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
from pathlib import Path

from flask import Flask, request

from .config import ConfigError
from .errors import Unauthorized

# RFC 6750 b64token: what a client can send after "Bearer " without quoting. Rules out whitespace and "#",
# which a key file would otherwise turn silently into a different (shorter) key.
KEY_SYNTAX = re.compile(r"^[A-Za-z0-9._~+/-]+=*$")
# How often a worker looks at API_KEYS_FILE (one stat(); docs/edge.md has the measured per-request cost).
RELOAD_INTERVAL_SECONDS = 1.0

log = logging.getLogger("gradsvc.auth")


def _checked(found: list[tuple[str, str]]) -> tuple[str, ...]:
    for source, key in found:
        if not KEY_SYNTAX.match(key):
            raise ConfigError(
                f"{source}: a key contains characters other than A-Z a-z 0-9 . _ ~ + / - "
                f"(whitespace and '#' are not allowed; the key is not shown)"
            )
    return tuple(key for _, key in found)


def keys_from_env(keys: str) -> tuple[str, ...]:
    """API_KEYS, comma-separated; set but yielding no key is a ConfigError."""
    found = [("API_KEYS", k.strip()) for k in keys.split(",") if k.strip()]
    if keys.strip() and not found:
        raise ConfigError(f"API_KEYS={keys!r} contains no key")
    return _checked(found)


def keys_from_file(keys_file: str) -> tuple[str, ...]:
    """API_KEYS_FILE, one key per line (blank and whole-line `#` comment lines skipped); an unreadable file or
    one with no key is a ConfigError."""
    try:
        lines = Path(keys_file).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"API_KEYS_FILE={keys_file!r} cannot be read: {err.__class__.__name__}") from None
    from_file = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not from_file:
        raise ConfigError(f"API_KEYS_FILE={keys_file!r} contains no key")
    return _checked([("API_KEYS_FILE", k) for k in from_file])


def file_signature(path: str) -> tuple[int, int, int, int] | None:
    """What changes when the file is rewritten or replaced (stat follows Kubernetes' ..data symlink)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ApiKeys:
    """The configured keys; those from API_KEYS_FILE are read again when the file changes, looked at most once a
    RELOAD_INTERVAL_SECONDS per process.  A changed file that is unreadable, empty or holds a malformed key
    keeps the last good keys (an error is logged once per change), so a bad update cannot lock everyone out."""

    def __init__(self, keys: str, keys_file: str) -> None:
        self.env_keys = keys_from_env(keys)
        self.path = keys_file
        self.signature = file_signature(keys_file) if keys_file else None
        self.keys = self.env_keys + (keys_from_file(keys_file) if keys_file else ())
        self.checked_at = time.monotonic()

    def current(self) -> tuple[str, ...]:
        if self.path:
            now = time.monotonic()
            if now - self.checked_at >= RELOAD_INTERVAL_SECONDS:
                self.checked_at = now
                self.reload_if_changed()
        return self.keys

    def reload_if_changed(self) -> None:
        signature = file_signature(self.path)
        if signature == self.signature:
            return
        self.signature = signature
        try:
            from_file = keys_from_file(self.path)
        except ConfigError as err:
            log.error("%s; keeping the %d keys loaded before", err, len(self.keys))
            return
        self.keys = self.env_keys + from_file
        log.info("API_KEYS_FILE changed: %d keys loaded", len(self.keys))


def key_matches(candidate: str, keys: tuple[str, ...]) -> bool:
    """Compare against every key in constant time, so timing says nothing about which or how much matched."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate.encode(), key.encode())
    return matched


def init_auth(app: Flask) -> None:
    api_keys = ApiKeys(app.config["API_KEYS"], app.config["API_KEYS_FILE"])
    app.extensions["api_keys_required"] = bool(api_keys.keys)  # the OpenAPI document then declares the scheme
    if not api_keys.keys:
        return

    @app.before_request
    def require_key():
        if not request.path.startswith("/v1/"):
            return  # health, readiness, metrics and the OpenAPI document stay open
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key_matches(token.strip(), api_keys.current()):
            raise Unauthorized(
                "Send `Authorization: Bearer <key>` with a configured API key.",
                headers={"WWW-Authenticate": 'Bearer realm="gradsvc"'},
            )
