"""Render deploy/nginx/nginx.conf.template: nginx has no environment substitution of its own.

    python deploy/nginx/render.py --prefix-dir .run/nginx/          # writes .run/nginx/nginx.conf (+ logs/)
    nginx -p "$PWD/.run/nginx/" -c "$PWD/.run/nginx/nginx.conf" -g 'daemon off;'

Settings, each overriding the one before: render()'s defaults, or the preset of `--compose` / `--k8s`
(`--k8s` takes MAX_WALL_SECONDS and MAX_BODY_BYTES from deploy/k8s/configmap.yaml); then the app's own
MAX_WALL_SECONDS and MAX_BODY_BYTES from the environment, from which the read timeout (max(30 s,
MAX_WALL_SECONDS + 10 s)) and the body limit (= MAX_BODY_BYTES) follow; then the gateway's environment
(GATEWAY_HOST, GATEWAY_PORT, GATEWAY_UPSTREAMS, GATEWAY_RATE, GATEWAY_BURST, GATEWAY_MAX_BODY_BYTES,
GATEWAY_PREFIX, GATEWAY_READ_TIMEOUT, GATEWAY_WORKER_CONNECTIONS, GATEWAY_CONN_PER_CLIENT,
GATEWAY_LARGE_BODIES, GATEWAY_REAL_IP_FROM); then the options.  A read timeout below MAX_WALL_SECONDS (the
app's default 10 s when unset) is refused: nginx would answer 504 while the work goes on.  `--compose` and
`--k8s` rewrite the committed copies for deploy/compose.yaml and deploy/k8s/ (tests check both equal a fresh
render with no GATEWAY_* set); with `-o FILE` (or `-o -`) they write there instead.
Tests import render() directly.  Standard library only.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import sys
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
# The config committed for deploy/compose.yaml (listen on all interfaces inside the gateway container,
# two replicas by compose service name, logs to the container's stdout/stderr).
COMPOSE_CONF = Path(__file__).with_name("nginx.compose.conf")
COMPOSE_SETTINGS = {
    "listen": "0.0.0.0:8080",
    "upstreams": ["app1:8000", "app2:8000"],
    "error_log": "stderr",
    "access_log": "/dev/stdout",
}

# The config for Kubernetes (deploy/k8s/kustomization.yaml turns it into the gateway's ConfigMap): the app's
# Service by name, logs to the container's stdout/stderr, and the client address taken from X-Forwarded-For
# when the connection comes from the Ingress controller (pod network; narrow it to your controller's CIDR).
K8S_CONF = Path(__file__).resolve().parents[1] / "k8s" / "gateway" / "nginx.conf"
K8S_SETTINGS = {
    "listen": "0.0.0.0:8080",
    "upstreams": ["gradsvc:80"],
    "error_log": "stderr",
    "access_log": "/dev/stdout",
    "real_ip_from": ["10.0.0.0/8"],
}

K8S_APP_CONFIG = K8S_CONF.parents[1] / "configmap.yaml"  # the app's settings in Kubernetes
K8S_APP_DEPLOYMENT = K8S_CONF.parents[1] / "deployment.yaml"
K8S_EDGE_DEPLOYMENT = K8S_CONF.parents[1] / "gateway.yaml"
# gunicorn's timeouts must leave a request MAX_WALL_SECONDS and 10 s to answer (deploy/gunicorn.conf.py refuses
# less, and a pod then crash-loops); graceful_timeout's default, max(30 s, MAX_WALL_SECONDS + 10 s), follows it.
GUNICORN_MARGIN_SECONDS = 10
MIN_GRACEFUL_TIMEOUT_SECONDS = 30

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # the app's MAX_BODY_BYTES default
DEFAULT_MAX_WALL_SECONDS = 10.0  # the app's MAX_WALL_SECONDS default
# nginx's proxy_read_timeout must outlast the app's deadline (after which the app answers 503 itself) plus the
# time a request waits in gunicorn's backlog and the answer takes to start; never below the historical 30 s.
READ_TIMEOUT_MARGIN_SECONDS = 10
MIN_READ_TIMEOUT_SECONDS = 30

_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.-]+):\d{1,5}$")
_RATE = re.compile(r"^([1-9]\d*)r/[sm]$")  # nginx -t refuses 0r/s
MOST_RATE = 1_000_000  # requests a second (or minute) per client: past any gateway's use; nginx -t took 10^20
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
_TIMEOUT = re.compile(r"^\d+(ms|s|m)?$")
_LOG = re.compile(r"^(stderr|/dev/stdout|/dev/stderr|[A-Za-z0-9._/-]+)$")


def _check(value: str, pattern: re.Pattern, what: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"invalid {what}: {value!r}")
    return value


# The whole-number settings and their least and greatest values, each refused naming its variable and option:
# nginx -t failed later (burst=0; a limit_conn over 65535; a client_max_body_size past its 64-bit off_t), or int()
# said nothing more, or nginx took a value no gateway means (a client_max_body_size of 0 is no limit at all). The
# file-descriptor limit is twice worker_connections: at most the Linux default fs.nr_open (1,048,576), which
# nginx -t does not check (setrlimit fails as the workers start). A burst of a million queued requests a client is
# past any use (nginx -t took 10^20).
COUNTS = {
    "burst": (1, 1_000_000),
    "max_body_bytes": (1, 2**63 - 1),
    "worker_connections": (64, 524_288),
    "conn_per_client": (1, 65_535),
    "large_bodies": (1, 65_535),
}


def _count(key: str, value) -> int:
    """The setting `key` (an int from an option, or a string from the environment) as a whole number."""
    least, most = COUNTS[key]
    try:
        number = int(str(value).strip())
    except ValueError:
        number = None
    if number is None or not least <= number <= most:
        raise ValueError(
            f"GATEWAY_{key.upper()} / --{key.replace('_', '-')}: {value!r} is not a whole number from {least} to {most}"
        )
    return number


def _rate(value: str) -> str:
    """A limit_req rate (`20r/s`, `600r/m`) of 1 to MOST_RATE requests."""
    match = _RATE.match(value)
    if not match or int(match.group(1)) > MOST_RATE:
        raise ValueError(
            f"GATEWAY_RATE / --rate: {value!r} is not a rate of 1 to {MOST_RATE} requests a second or minute "
            "(e.g. 20r/s)"
        )
    return value


def timeout_seconds(value: str) -> float:
    """An nginx time (`30`, `30s`, `500ms`, `2m`) in seconds."""
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", _check(value, _TIMEOUT, "timeout (e.g. 30s)")).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[unit]


def default_read_timeout(max_wall_seconds: float | None) -> str:
    """max(30 s, MAX_WALL_SECONDS + 10 s), in whole seconds."""
    wall = DEFAULT_MAX_WALL_SECONDS if max_wall_seconds is None else float(max_wall_seconds)
    return f"{max(MIN_READ_TIMEOUT_SECONDS, math.ceil(wall) + READ_TIMEOUT_MARGIN_SECONDS)}s"


def render(
    listen: str = "127.0.0.1:8080",
    upstreams: list[str] | tuple[str, ...] = ("127.0.0.1:8000",),
    rate: str = "20r/s",
    burst: int = 40,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    prefix: str = "/grad",
    read_timeout: str | None = None,
    max_wall_seconds: float | None = None,
    error_log: str = "logs/error.log",
    access_log: str = "logs/access.log",
    upstream_params: str = "max_fails=3 fail_timeout=10s",
    worker_connections: int = 4096,
    conn_per_client: int = 32,
    large_bodies: int = 8,
    real_ip_from: list[str] | tuple[str, ...] = (),
) -> str:
    """Return the nginx.conf text; every value is validated so nothing can inject nginx syntax.  read_timeout
    defaults to default_read_timeout(max_wall_seconds); given with max_wall_seconds, it must not be shorter."""
    if read_timeout is None:
        read_timeout = default_read_timeout(max_wall_seconds)
    elif max_wall_seconds is not None and timeout_seconds(read_timeout) < float(max_wall_seconds):
        raise ValueError(
            f"read timeout {read_timeout} (GATEWAY_READ_TIMEOUT / --read-timeout) is below MAX_WALL_SECONDS="
            f"{max_wall_seconds:g}: nginx would answer 504 while the app still computes; raise it, or leave it "
            f"unset for max(30s, MAX_WALL_SECONDS + 10s) = {default_read_timeout(max_wall_seconds)}"
        )
    if not upstreams:
        raise ValueError("at least one upstream is needed (GATEWAY_UPSTREAMS / --upstream)")
    burst, max_body_bytes, worker_connections, conn_per_client, large_bodies = (
        _count(key, value)
        for key, value in [
            ("burst", burst),
            ("max_body_bytes", max_body_bytes),
            ("worker_connections", worker_connections),
            ("conn_per_client", conn_per_client),
            ("large_bodies", large_bodies),
        ]
    )
    real_ip = "".join(f"    set_real_ip_from {ipaddress.ip_network(cidr.strip())};\n" for cidr in real_ip_from)
    if real_ip:  # behind a trusted proxy (the Ingress controller): limits apply to the real client address
        real_ip += "    real_ip_header X-Forwarded-For;\n    real_ip_recursive on;\n"
    servers = "\n".join(
        f"        server {_check(u, _HOSTPORT, 'upstream host:port')} {upstream_params};" for u in upstreams
    )
    values = {
        "LISTEN": _check(listen, _HOSTPORT, "listen host:port"),
        "UPSTREAMS": servers,
        "RATE": _rate(rate),
        "BURST": str(burst),
        "MAX_BODY_BYTES": str(max_body_bytes),
        "PREFIX": _check(prefix, _PREFIX, "path prefix (e.g. /grad)"),
        "READ_TIMEOUT": _check(read_timeout, _TIMEOUT, "timeout (e.g. 30s)"),
        "ERROR_LOG": _check(error_log, _LOG, "error log"),
        "ACCESS_LOG": _check(access_log, _LOG, "access log"),
        "WORKER_CONNECTIONS": str(worker_connections),
        "RLIMIT_NOFILE": str(2 * worker_connections),
        "CONN_PER_CLIENT": str(conn_per_client),
        "LARGE_BODIES": str(large_bodies),
        "REAL_IP": real_ip,
    }
    text = TEMPLATE.read_text().replace(
        "-- TEMPLATE, rendered by deploy/nginx/render.py.",
        "-- GENERATED by deploy/nginx/render.py from nginx.conf.template; do not edit.",
    )
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise ValueError(f"unrendered placeholders: {sorted(set(left))}")
    return text


def write_prefix(prefix_dir: str | os.PathLike, text: str) -> Path:
    """Write DIR/nginx.conf and create DIR/logs, so `nginx -p DIR/ -c DIR/nginx.conf` can start."""
    root = Path(prefix_dir)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(text)
    return conf


def _app_settings(source: dict, where: str) -> dict:
    """The app's MAX_WALL_SECONDS and MAX_BODY_BYTES, where set: the gateway's defaults follow them."""
    settings = {}
    raw = str(source.get("MAX_WALL_SECONDS", "")).strip()
    if raw:
        try:
            wall = float(raw)
        except ValueError:
            raise ValueError(f"{where}MAX_WALL_SECONDS={raw!r} is not a number") from None
        if not math.isfinite(wall) or wall <= 0:
            raise ValueError(f"{where}MAX_WALL_SECONDS={raw!r} must be a finite, positive number")
        settings["max_wall_seconds"] = wall
    raw = str(source.get("MAX_BODY_BYTES", "")).strip()
    if raw:
        if not raw.isdigit() or int(raw) == 0:
            raise ValueError(f"{where}MAX_BODY_BYTES={raw!r} must be a positive integer")
        settings["max_body_bytes"] = int(raw)
    return settings


def k8s_app_settings(configmap: Path = K8S_APP_CONFIG) -> dict:
    """MAX_WALL_SECONDS / MAX_BODY_BYTES from the app's ConfigMap (flat `KEY: "value"` lines; no YAML parser)."""
    found = dict(re.findall(r'^\s+(MAX_WALL_SECONDS|MAX_BODY_BYTES):\s*"?([^"\s#]*)"?', configmap.read_text(), re.M))
    return _app_settings(found, f"{configmap.name}: ")


def _seconds(text: str, pattern: str, where: Path) -> int:
    found = re.search(pattern, text)
    if not found:
        raise ValueError(f"{where.name}: no {pattern.split(':')[0].strip('^')} found")
    return int(found.group(1))


def check_k8s_timeouts(wall: float, read_timeout: str, configmap: Path = K8S_APP_CONFIG) -> None:
    """What raising MAX_WALL_SECONDS in the ConfigMap asks of the other Kubernetes timeouts: a GUNICORN_TIMEOUT or
    GUNICORN_GRACEFUL_TIMEOUT pinned there below MAX_WALL_SECONDS + 10 s is refused by gunicorn (every pod
    crash-loops); the app's terminationGracePeriodSeconds must outlast its preStop sleep and graceful_timeout, and
    the gateway's its preStop sleep and read timeout, or a stop kills the requests it should let finish."""
    text = configmap.read_text()
    pinned = dict(re.findall(r'^\s+(GUNICORN_TIMEOUT|GUNICORN_GRACEFUL_TIMEOUT):\s*"?([^"\s#]*)"?', text, re.M))
    for name, raw in sorted(pinned.items()):
        if not raw.isdigit() or int(raw) < wall + GUNICORN_MARGIN_SECONDS:
            raise ValueError(
                f"{configmap.name}: {name}={raw!r} must be at least MAX_WALL_SECONDS + 10 s ({wall:g} + 10), or "
                "gunicorn refuses to start; remove it for its default, which follows MAX_WALL_SECONDS"
            )
    graceful = int(pinned.get("GUNICORN_GRACEFUL_TIMEOUT") or max(MIN_GRACEFUL_TIMEOUT_SECONDS, math.ceil(wall) + 10))
    app = K8S_APP_DEPLOYMENT.read_text()
    grace = _seconds(app, r"terminationGracePeriodSeconds:\s*(\d+)", K8S_APP_DEPLOYMENT)
    pre_stop = _seconds(app, r'command:\s*\["sleep",\s*"(\d+)"\]', K8S_APP_DEPLOYMENT)
    if grace <= pre_stop + graceful:
        raise ValueError(
            f"{K8S_APP_DEPLOYMENT.name}: terminationGracePeriodSeconds {grace} must exceed the preStop sleep "
            f"({pre_stop} s) + gunicorn's graceful_timeout ({graceful} s, from MAX_WALL_SECONDS={wall:g}): raise it"
        )
    gateway = K8S_EDGE_DEPLOYMENT.read_text()
    grace = _seconds(gateway, r"terminationGracePeriodSeconds:\s*(\d+)", K8S_EDGE_DEPLOYMENT)
    pre_stop = _seconds(gateway, r'command:\s*\["sleep",\s*"(\d+)"\]', K8S_EDGE_DEPLOYMENT)
    if grace <= pre_stop + timeout_seconds(read_timeout):  # a request taken during the sleep may wait the timeout
        raise ValueError(
            f"{K8S_EDGE_DEPLOYMENT.name}: terminationGracePeriodSeconds {grace} must exceed the preStop sleep "
            f"({pre_stop} s) + the read timeout ({read_timeout}): raise it"
        )


ENV_NAMES = (  # besides GATEWAY_UPSTREAMS, refused below with its own words
    "HOST",
    "PORT",
    "RATE",
    "BURST",
    "MAX_BODY_BYTES",
    "PREFIX",
    "READ_TIMEOUT",
    "WORKER_CONNECTIONS",
    "CONN_PER_CLIENT",
    "LARGE_BODIES",
    "REAL_IP_FROM",
)


def _env_settings(listen: str = "127.0.0.1:8080") -> dict:
    """The GATEWAY_* variables that are set; GATEWAY_HOST or GATEWAY_PORT alone keeps the other half of `listen`.
    Set but empty is a mistake (an unset variable in a script), never the default: refused, as each names none."""
    env = os.environ
    for name in ENV_NAMES:
        value = env.get(f"GATEWAY_{name}")
        if value is not None and not value.replace(",", "").strip():
            raise ValueError(f"GATEWAY_{name}={value!r} is empty: unset it for the default")
    settings = {}
    if "GATEWAY_HOST" in env or "GATEWAY_PORT" in env:
        host, port = listen.rsplit(":", 1)
        settings["listen"] = f"{env.get('GATEWAY_HOST', host)}:{env.get('GATEWAY_PORT', port)}"
    if "GATEWAY_UPSTREAMS" in env:  # set but empty is a mistake (an unset variable in a script), not the default
        settings["upstreams"] = [u.strip() for u in env["GATEWAY_UPSTREAMS"].split(",") if u.strip()]
        if not settings["upstreams"]:
            raise ValueError(
                f"GATEWAY_UPSTREAMS={env['GATEWAY_UPSTREAMS']!r} names no host:port (unset it for 127.0.0.1:8000)"
            )
    for key in (
        "rate",
        "burst",
        "max_body_bytes",
        "prefix",
        "read_timeout",
        "worker_connections",
        "conn_per_client",
        "large_bodies",
    ):
        if f"GATEWAY_{key.upper()}" in env:
            settings[key] = env[f"GATEWAY_{key.upper()}"]
    if "GATEWAY_REAL_IP_FROM" in env:
        settings["real_ip_from"] = [c for c in env["GATEWAY_REAL_IP_FROM"].split(",") if c.strip()]
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--compose", action="store_true", help=f"(re)write {COMPOSE_CONF.name} for compose.yaml")
    preset.add_argument("--k8s", action="store_true", help="(re)write deploy/k8s/gateway/nginx.conf for kustomize")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--prefix-dir", help="write DIR/nginx.conf and create DIR/logs")
    out.add_argument("-o", "--output", help="write the config to this file ('-' for stdout)")
    parser.add_argument("--listen", help="host:port to listen on (default 127.0.0.1:$GATEWAY_PORT or :8080)")
    parser.add_argument("--upstream", action="append", help="host:port of a replica (repeatable)")
    parser.add_argument("--rate", help="limit_req rate per client IP, e.g. 20r/s")
    parser.add_argument("--burst", type=int)
    parser.add_argument("--max-body-bytes", type=int)
    parser.add_argument("--prefix")
    parser.add_argument("--read-timeout")
    parser.add_argument("--worker-connections", type=int)
    parser.add_argument("--conn-per-client", type=int, help="limit_conn per client IP")
    parser.add_argument("--large-bodies", type=int, help="requests with a body over 64 KiB at once (429 beyond)")
    parser.add_argument("--real-ip-from", action="append", help="CIDR of a trusted proxy in front (repeatable)")
    args = parser.parse_args(argv)

    try:
        settings = dict(COMPOSE_SETTINGS) if args.compose else dict(K8S_SETTINGS) if args.k8s else {}
        settings.update(k8s_app_settings() if args.k8s else {})
        settings.update(_app_settings(os.environ, ""))
        settings.setdefault("max_wall_seconds", DEFAULT_MAX_WALL_SECONDS)  # the app's deadline bounds the timeout
        settings.update(_env_settings(settings.get("listen", "127.0.0.1:8080")))
    except ValueError as err:
        print(f"render.py: {err}", file=sys.stderr)
        return 2
    cli = {
        "listen": args.listen,
        "upstreams": args.upstream,
        "rate": args.rate,
        "burst": args.burst,
        "max_body_bytes": args.max_body_bytes,
        "prefix": args.prefix,
        "read_timeout": args.read_timeout,
        "worker_connections": args.worker_connections,
        "conn_per_client": args.conn_per_client,
        "large_bodies": args.large_bodies,
        "real_ip_from": args.real_ip_from,
    }
    settings.update({k: v for k, v in cli.items() if v is not None})
    try:
        if args.k8s:
            wall = settings["max_wall_seconds"]
            check_k8s_timeouts(wall, settings.get("read_timeout") or default_read_timeout(wall))
        text = render(**settings)
    except (ValueError, TypeError) as err:
        print(f"render.py: {err}", file=sys.stderr)
        return 2
    if (args.compose or args.k8s) and not (args.output or args.prefix_dir):
        target = COMPOSE_CONF if args.compose else K8S_CONF
        target.parent.mkdir(exist_ok=True)
        target.write_text(text)
        print(target)
    elif args.prefix_dir:
        print(write_prefix(args.prefix_dir, text))
    elif args.output and args.output != "-":
        Path(args.output).write_text(text)
        print(args.output)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
