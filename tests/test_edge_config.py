"""Configuration that fails closed (real gunicorn refusing to start), bounded metric labels, strict bodies,
and the JSON log format shared by the app and gunicorn."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import REQUIRE_ALL, ROOT, TUTORIAL_NEURON, GunicornServer, TestConfig, free_port, require_binary
from service import create_app
from service.engine.limits import MAX_AST_DEPTH_CEILING, MAX_WALL_SECONDS_CEILING, Limits
from service.logformat import JSON_FORMATTER

JSON_HEADERS = {"Content-Type": "application/json"}


def start_gunicorn(env: dict, tmp_path, preload: str = "1") -> subprocess.CompletedProcess:
    """Run the real server with `env`; it must exit on its own within 60 s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("API_KEYS", "MAX_", "TRUSTED_", "LOG_LEVEL"))}
    full = {
        **clean,
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "WEB_CONCURRENCY": "1",
        "GUNICORN_PRELOAD": preload,
        **env,
    }
    command = [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "service.wsgi:app"]
    return run_to_exit(command, full, f"gunicorn kept running with {env}")


def run_to_exit(command: list[str], env: dict, why: str) -> subprocess.CompletedProcess:
    """Run `command` in its own process group from the repo; one still running after 60 s is killed and fails."""
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        pytest.fail(why)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def key_file(tmp_path, text: str) -> str:
    path = tmp_path / "keys"
    path.write_text(text)
    return str(path)


MISCONFIGURATIONS = [
    ({"API_KEYS": " , "}, "API_KEYS=' , ' contains no key"),
    ({"API_KEYS": "abc def"}, "API_KEYS: a key contains characters"),
    ({"API_KEYS": "abc#def"}, "API_KEYS: a key contains characters"),
    ({"API_KEYS_FILE": "EMPTY"}, "contains no key"),
    ({"API_KEYS_FILE": "HASH"}, "API_KEYS_FILE: a key contains characters"),
    ({"API_KEYS_FILE": "/nonexistent/keys"}, "cannot be read: FileNotFoundError"),
    ({"MAX_BODY_BYTES": "10MB"}, "MAX_BODY_BYTES='10MB' is not an integer"),
    ({"TRUSTED_PROXY_HOPS": "one"}, "TRUSTED_PROXY_HOPS='one' is not an integer"),
    ({"MAX_WALL_SECONDS": "nan"}, "MAX_WALL_SECONDS='nan' must be a finite"),
    # at 0.0001 s the deadline fired inside Flask's context push: 500s, and /readyz never answered 200
    ({"MAX_WALL_SECONDS": "0.0001"}, "MAX_WALL_SECONDS='0.0001' must be at least 0.1 (seconds)"),
    # Python's parser stops at 200 nested parentheses: the 413s quoted a limit of 100000 levels
    # from ~6e9 s setitimer overflowed: every request a 500, and the workers crashed in a loop
    ({"MAX_WALL_SECONDS": "1e10"}, "MAX_WALL_SECONDS='1e10' must be at most 3600 (seconds)"),
    ({"MAX_WALL_SECONDS": "3601"}, "MAX_WALL_SECONDS='3601' must be at most 3600 (seconds)"),
    ({"GUNICORN_TIMEOUT": "20000000000"}, "GUNICORN_TIMEOUT=20000000000 must be at most 86400 (seconds"),
    ({"GUNICORN_GRACEFUL_TIMEOUT": "86401"}, "GUNICORN_GRACEFUL_TIMEOUT=86401 must be at most 86400 (seconds"),
    ({"MAX_AST_DEPTH": "201"}, "MAX_AST_DEPTH='201' must be at most 200: Python's parser refuses"),
    ({"MAX_TENSOR_ELEMENTS": "-5"}, "must not be negative"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL='LOUD' is not one of"),
    ({"MAX_REQUEST_BYTES": "256MiB"}, "MAX_REQUEST_BYTES='256MiB' is not an integer"),
    ({"MAX_INPUTS": "0"}, "MAX_INPUTS=0 must be positive"),
    ({"MAX_WORKER_RSS_MB": "0"}, "MAX_WORKER_RSS_MB=0 must be positive"),
    ({"MAX_WORKER_RSS_MB": "inf"}, "MAX_WORKER_RSS_MB='inf' must be a finite"),
    # torch.set_num_threads(0) raised in every worker's warm-up: gunicorn halted with tracebacks
    ({"TORCH_THREADS": "0"}, "TORCH_THREADS='0' must be at least 1"),
    ({"WARM_UP": "maybe"}, "WARM_UP='maybe' is not a boolean"),
    # gunicorn logged at INFO without a word; refused by deploy/gunicorn.conf.py, with the same line and exit code
    ({"GUNICORN_LOG_LEVEL": "nope"}, "GUNICORN_LOG_LEVEL='nope' is not one of critical, error, warning, info, debug"),
    ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY=0 must be at least 1"),
    # gunicorn bound port 99999 to an OverflowError traceback, 0 to a random port, an empty HOST to 0.0.0.0
    ({"PORT": "99999"}, "PORT=99999 must be between 1 and 65535"),
    ({"PORT": "-1"}, "PORT=-1 must be between 1 and 65535"),
    ({"PORT": "0"}, "PORT=0 must be between 1 and 65535 (a TCP port; 0 would bind a random one)"),
    ({"HOST": ""}, "HOST is set but empty: unset it for the default 127.0.0.1"),
    ({"HOST": "bogus.invalid"}, "HOST='bogus.invalid' is not an address to bind"),
    # gunicorn's own "Value must be positive" and exit 1
    ({"GUNICORN_MAX_REQUESTS": "-1"}, "GUNICORN_MAX_REQUESTS=-1 must be at least 0"),
    ({"GUNICORN_MAX_REQUESTS_JITTER": "-1"}, "GUNICORN_MAX_REQUESTS_JITTER=-1 must be at least 0"),
    ({"GUNICORN_KEEPALIVE": "-1"}, "GUNICORN_KEEPALIVE=-1 must be at least 0"),
    ({"GUNICORN_GRACEFUL_TIMEOUT": "-5"}, "GUNICORN_GRACEFUL_TIMEOUT=-5 must be at least MAX_WALL_SECONDS + 10 s"),
    # accepted, and a SIGTERM then cut off a request under way
    ({"GUNICORN_GRACEFUL_TIMEOUT": "0"}, "GUNICORN_GRACEFUL_TIMEOUT=0 must be at least MAX_WALL_SECONDS + 10 s"),
    (
        {"GUNICORN_GRACEFUL_TIMEOUT": "30", "MAX_WALL_SECONDS": "25"},
        "GUNICORN_GRACEFUL_TIMEOUT=30 must be at least MAX_WALL_SECONDS + 10 s (25 + 10)",
    ),
    ({"GUNICORN_PRELOAD": "maybe"}, "GUNICORN_PRELOAD='maybe' is not a boolean"),
]


@pytest.mark.live
@pytest.mark.slow
@pytest.mark.parametrize(("env", "message"), MISCONFIGURATIONS, ids=[m for _, m in MISCONFIGURATIONS])
def test_misconfiguration_refuses_to_start_with_one_line(env, message, tmp_path):
    files = {"EMPTY": "# only a comment\n\n", "HASH": "abc#def\n"}
    env = {k: key_file(tmp_path, files[v]) if v in files else v for k, v in env.items()}
    proc = start_gunicorn(env, tmp_path)
    assert proc.returncode == 3, proc.stderr  # docs/edge.md: one line on stderr, exit code 3
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "configuration error" in line]
    assert len(errors) == 1 and message in errors[0], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "abc" not in errors[0] or "API_KEYS=" in errors[0] or "API_KEYS_FILE=" in errors[0]  # keys never echoed


def test_the_longest_deadline_accepted_gets_timeouts_gunicorn_accepts_too():
    """MAX_WALL_SECONDS at its ceiling (service/engine/limits.py, kept in deploy/gunicorn.conf.py too) is accepted
    with the derived timeouts, which stay under their own ceiling; one second more falls back there, for the app to
    refuse with its own line."""
    code = (
        "import json, runpy; ns = runpy.run_path('deploy/gunicorn.conf.py'); "
        "print(json.dumps([ns[k] for k in ('MAX_WALL_SECONDS_CEILING', 'MAX_TIMEOUT', 'timeout', 'graceful_timeout')]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "PROMETHEUS_", "MAX_"))}

    def load(wall):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**env, "MAX_WALL_SECONDS": wall},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.splitlines()[-1])

    ceiling, most, timeout, graceful = load(str(MAX_WALL_SECONDS_CEILING))
    assert ceiling == MAX_WALL_SECONDS_CEILING
    assert (timeout, graceful) == (3 * ceiling, ceiling + 10) and timeout <= most
    assert load(str(MAX_WALL_SECONDS_CEILING + 1))[2:] == [60, 30]  # the defaults: the app refuses it


@pytest.mark.live
@pytest.mark.slow
def test_misconfiguration_stops_gunicorn_without_preload_too(tmp_path):
    """Workers import the app: exit code 3 makes gunicorn halt instead of respawning them forever."""
    proc = start_gunicorn({"API_KEYS": " , "}, tmp_path, preload="0")
    assert proc.returncode == 3
    assert sum("configuration error" in line for line in proc.stderr.splitlines()) == 1


def test_every_formula_shape_reaches_the_deepest_ast_depth_accepted():
    """MAX_AST_DEPTH's ceiling (engine/limits.py) is reachable: a formula nested that deep answers, whatever its shape
    (nested calls need 199 parentheses, Python's parser takes 200), and one level more is refused under that limit."""
    depth = MAX_AST_DEPTH_CEILING

    class Deepest(TestConfig):
        LIMITS = Limits(max_ast_depth=depth, max_ast_nodes=10_000, max_formula_length=10_000)

    shapes = {
        "calls": lambda n: "sin(" * (n - 1) + "x" + ")" * (n - 1),
        "unary minus": lambda n: "-" * (n - 1) + "x",
        "powers": lambda n: "**".join(["x"] * n),
        "sums": lambda n: "+".join(["x"] * n),
        "parenthesised products": lambda n: "x*(" * (n - 1) + "x" + ")" * (n - 1),
    }
    client = create_app(Deepest).test_client()
    for name, shape in shapes.items():
        for n, expected in ((depth, 200), (depth + 1, 413)):
            body = {"model": {"kind": "expression", "formula": shape(n)}, "inputs": {"x": 0.5}}
            response = client.post("/v1/gradients", json={**body, "include": ["graph", "intermediates", "hessian"]})
            assert response.status_code == expected, (name, n, response.json)
            if expected == 413:
                assert response.json["limit"] == {"name": "max_ast_depth", "value": depth}, (name, response.json)


@pytest.mark.live
def test_a_negative_web_concurrency_is_refused_by_gunicorn_itself(tmp_path):
    """gunicorn reads WEB_CONCURRENCY before deploy/gunicorn.conf.py, so its own message and exit code stand for a
    negative value (docs/operate.md says so); the config file's one line covers 0."""
    proc = start_gunicorn({"WEB_CONCURRENCY": "-1"}, tmp_path)
    assert proc.returncode == 1 and "Value must be positive: -1" in proc.stderr


@pytest.mark.live
def test_no_writable_temporary_directory_refuses_to_start_with_one_line(tmp_path):
    """A read-only root filesystem without its tmpfs on /tmp (a Kubernetes pod without the emptyDir): gunicorn's
    master died at its first fork, "Unhandled exception in main loop" (No usable temporary directory), exit 255. Run
    here in a user and mount namespace where /tmp, /var/tmp and the working directory are read-only."""
    unshare = require_binary("unshare", package="util-linux")
    if subprocess.run([unshare, "-rm", "true"], capture_output=True, timeout=30).returncode != 0:
        reason = "user namespaces are not available here (unshare -rm failed)"
        if REQUIRE_ALL:
            pytest.fail(reason)
        pytest.skip(reason)
    # each made read-only where it is (a bind mount onto itself): a tmpfs over /tmp would hide a checkout under it
    script = (
        'for d in /tmp /var/tmp "$0"; do mount --bind "$d" "$d" && mount -o remount,bind,ro "$d" || exit 97; done; '
        'cd "$0" && exec "$1" -m gunicorn -c deploy/gunicorn.conf.py service.wsgi:app'
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP", "PROMETHEUS_MULTIPROC_DIR")}
    env = {**clean, "HOST": "127.0.0.1", "PORT": str(free_port()), "WEB_CONCURRENCY": "1", "PYTHONPATH": str(ROOT)}
    proc = run_to_exit(
        [unshare, "-rm", "sh", "-c", script, str(ROOT), sys.executable],
        env,
        "gunicorn kept running without a writable temporary directory",
    )
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 3, out + err
    errors = [line for line in err.splitlines() if "configuration error" in line]
    assert len(errors) == 1 and "no writable temporary directory" in errors[0] and "/tmp" in errors[0], err
    assert "Traceback" not in err


@pytest.mark.live
@pytest.mark.slow
def test_a_second_master_on_the_same_metrics_dir_is_refused_while_the_first_lives(tmp_path):
    """Two `make run`s on one PROMETHEUS_MULTIPROC_DIR: the second master emptied the first one's files as it
    started, and both then wrote one set of counters. Now it stops with one line and exit 3, and the directory is
    free again as soon as the first master and its workers are gone, however they ended (SIGKILL here)."""
    prom = tmp_path / "prom"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(prom)}
    first = GunicornServer(workers=1, env=env).start()
    try:
        for _ in range(3):
            assert requests.post(first.url + "/v1/gradients", json=TUTORIAL_NEURON, timeout=30).status_code == 200
        before = {p.name: p.stat().st_size for p in prom.glob("*.db")}
        assert before
        second = start_gunicorn(env, tmp_path)
        assert second.returncode == 3, second.stderr
        errors = [line for line in second.stderr.splitlines() if "configuration error" in line]
        assert len(errors) == 1 and f"in use by another running gunicorn master (pid {first.proc.pid})" in errors[0]
        assert "Traceback" not in second.stderr
        assert {p.name: p.stat().st_size for p in prom.glob("*.db")} == before  # nothing of the first's deleted
        text = requests.get(first.url + "/metrics", timeout=10).text
        assert 'route="/v1/gradients",status="200"} 3.0' in text
        os.killpg(first.proc.pid, 9)
        first.proc.wait(10)
    finally:
        first.stop()
    third = GunicornServer(workers=1, env=env).start()  # the lock died with the first master's processes
    try:
        assert requests.get(third.url + "/readyz", timeout=10).status_code == 200
        assert set(before).isdisjoint(p.name for p in prom.glob("*.db"))  # emptied as it started, as usual
    finally:
        third.stop()


def lock_holders(pids: list[int], lock) -> list[int]:
    """The processes among `pids` with a descriptor open on the file `lock`."""
    holders = []
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        if any(os.readlink(fd) == str(lock) for fd in fds if fd.is_symlink()):
            holders.append(pid)
    return holders


@pytest.mark.live
@pytest.mark.slow
def test_a_master_killed_alone_frees_the_metrics_dir_at_once(tmp_path):
    """Workers kept the master's lock descriptor: after a SIGKILL of the master alone, its orphans held the lock
    until they noticed, up to 30 s, and a restart on the directory was refused naming the dead master. Only the
    master holds it now, and a new master starts at once (the orphans are then killed by their pids)."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    first = GunicornServer(workers=2, env=env).start()
    second = None
    orphans: list[int] = []
    try:
        orphans = first.worker_pids()
        lock = tmp_path / "prom" / "master.lock"
        assert len(orphans) == 2 and lock_holders([first.proc.pid, *orphans], lock) == [first.proc.pid]
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        second = GunicornServer(workers=1, env=env).start()
        assert requests.get(second.url + "/readyz", timeout=10).status_code == 200
        assert f"{second.proc.pid}" == lock.read_text().strip()
    finally:
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.live
def test_gunicorn_takes_no_forwarding_header_from_a_client():
    """gunicorn took a `SCRIPT_NAME:` header from 127.0.0.1 (forwarded_allow_ips' default) as the WSGI SCRIPT_NAME:
    `/evil` made any request a 500 with `instance: null`, `/v1` made /v1/gradients a 404; and a scheme header beside
    a disagreeing one was its 400. They are ignored: the prefix comes from X-Forwarded-Prefix, through the app's
    TRUSTED_PROXY_HOPS (as behind the gateway) alone."""
    server = GunicornServer(workers=1, env={"TRUSTED_PROXY_HOPS": "1"}).start()
    try:
        url = server.url + "/v1/gradients"
        for value in ("/evil", "/v1", "/v1/gradients"):
            right = requests.post(url, json=TUTORIAL_NEURON, headers={"SCRIPT_NAME": value}, timeout=30)
            assert right.status_code == 200 and round(right.json()["gradients"]["w"], 4) == 6.6918, right.text[:300]
            wrong = requests.post(url, json={}, headers={"SCRIPT_NAME": value}, timeout=30)
            assert wrong.status_code == 400 and wrong.json()["instance"] == "/v1/gradients", wrong.text[:300]
        both = {"SCRIPT_NAME": "/evil", "X-Forwarded-Prefix": "/grad"}
        assert requests.post(url, json={}, headers=both, timeout=30).json()["instance"] == "/grad/v1/gradients"
        schemes = {"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "off"}
        assert requests.post(url, json=TUTORIAL_NEURON, headers=schemes, timeout=30).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(("value", "on"), [("0", False), ("false", False), ("Off", False), ("1", True), ("yes", True)])
def test_warm_up_reads_a_boolean_like_gunicorn_preload(value, on):
    """WARM_UP=false kept the warm-up on: anything but "0" was on."""
    code = "from service.config import Config, ENV_ERRORS; print(Config.WARM_UP, ENV_ERRORS)"
    env = {**os.environ, "WARM_UP": value}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [str(on), "[]"], out.stderr


def test_trusted_proxy_hops_warns_at_start_up(capsys):
    class BehindGateway(TestConfig):
        TRUSTED_PROXY_HOPS = 1

    create_app(BehindGateway)  # the app's logging writes JSON lines to stdout
    warnings = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "TRUSTED_PROXY_HOPS" in line]
    assert warnings and warnings[0]["level"] == "WARNING" and "only through the gateway" in warnings[0]["message"]


@pytest.mark.parametrize(
    "prefix",
    [
        "https://evil.example",
        "//evil.example",
        "/grad, https://evil.example",
        "/grad/../x",
        "/grad?x=1",
        "javascript:alert(1)",
    ],
)
def test_forwarded_prefix_must_be_a_path(prefix):
    class BehindGateway(TestConfig):
        TRUSTED_PROXY_HOPS = 1

    client = create_app(BehindGateway).test_client()
    assert client.get("/openapi.json", headers={"X-Forwarded-Prefix": prefix}).json["servers"] == [{"url": "/"}]
    assert client.get("/openapi.json", headers={"X-Forwarded-Prefix": "/grad"}).json["servers"] == [{"url": "/grad"}]
    assert client.get("/nowhere", headers={"X-Forwarded-Prefix": prefix}).json["instance"] == "/nowhere"


def test_problem_instance_carries_the_forwarded_prefix_only_when_trusted():
    """The gateway's own problems name /grad/...: the app's say the same behind it, and ignore the header otherwise."""

    class BehindGateway(TestConfig):
        TRUSTED_PROXY_HOPS = 1

    prefix = {"X-Forwarded-Prefix": "/grad"}
    trusting = create_app(BehindGateway).test_client()
    assert trusting.get("/v1/gradients", headers=prefix).json["instance"] == "/grad/v1/gradients"
    assert trusting.post("/v1/gradients", json={}, headers=prefix).json["instance"] == "/grad/v1/gradients"
    assert trusting.get("/v1/gradients").json["instance"] == "/v1/gradients"
    direct = create_app(TestConfig).test_client()
    assert direct.get("/v1/gradients", headers=prefix).json["instance"] == "/v1/gradients"


# --- bodies ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({"Content-Encoding": "gzip"}, "Content-Encoding 'gzip'"),
        ({"Content-Encoding": "br"}, "Content-Encoding 'br'"),
        ({"Content-Type": "application/json; charset=utf-16"}, "charset 'utf-16'"),
        ({"Content-Type": "application/json; charset=latin-1"}, "charset 'latin-1'"),
    ],
)
def test_encodings_other_than_identity_utf8_are_415(client, headers, detail):
    r = client.post("/v1/gradients", json=TUTORIAL_NEURON, headers=headers)
    assert r.status_code == 415 and r.mimetype == "application/problem+json"
    assert detail in r.json["detail"] and r.json["type"] == "/problems/unsupported-media-type"


@pytest.mark.parametrize(
    "headers", [{"Content-Encoding": "identity"}, {"Content-Type": "application/json; charset=UTF-8"}]
)
def test_identity_and_utf8_are_accepted(client, headers):
    assert client.post("/v1/gradients", json=TUTORIAL_NEURON, headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"model": {"kind": "neuron", "loss": "bce", "loss": "bce_with_logits"}, "inputs": {}}', "loss"),
        (b'{"model": {"kind": "neuron"}, "inputs": {"x": 1, "y": 0, "w": 1, "b": 0}, "inputs" : {}}', "inputs"),
        (b'{"jobs": [{"model": {"kind": "neuron"}, "inputs": {"x": [[1, {"a": 1, "a": 2}]]}}]}', "a"),
    ],
)
def test_duplicate_keys_are_400_naming_the_key(client, body, key):
    path = "/v1/batch" if b"jobs" in body else "/v1/gradients"
    r = client.post(path, data=body, headers=JSON_HEADERS)
    assert r.status_code == 400 and r.json["type"] == "/problems/malformed-json"
    assert f"The key '{key}' appears more than once" in r.json["detail"]


def test_strings_that_look_like_keys_are_not_duplicates(client):
    body = b'{"model": {"kind": "expression", "formula": "x"}, "inputs": {"x": 2}, "wrt": ["x"]}'
    assert client.post("/v1/gradients", data=body, headers=JSON_HEADERS).status_code == 200
    from service.jsonio import KEY_END, kept_keys

    tricky = b'{"a": "\\":", "b": {"c": 1}}'  # an escaped quote before a colon, inside a string
    assert len(KEY_END.findall(tricky)) > kept_keys(json.loads(tricky))  # takes the exact path ...
    r = client.post("/v1/gradients", data=tricky, headers=JSON_HEADERS)
    assert r.status_code == 400 and "appears more than once" not in r.json["detail"]  # ... and finds none


def count_full_parses(monkeypatch, body: bytes) -> list:
    """Every call of orjson's or the stdlib's parser on the whole body (a key name decoded alone is not one)."""
    import orjson

    calls = []
    for module in (orjson, json):
        original = module.loads

        def counting(data, *args, _original=original, _name=module.__name__, **kwargs):
            if data == body:
                calls.append(_name)
            return _original(data, *args, **kwargs)

        monkeypatch.setattr(module, "loads", counting)
    return calls


COLON_IN_STRINGS = [
    # formula comments holding `":` (the audit's big_accepted_1.json, small)
    {"model": {"kind": "expression", "formula": 'sum(x) # ":'}, "inputs": {"x": [0.5] * 1000}},
    {"model": {"kind": "expression", "formula": 'sum(x) # " : {"x": 1}'}, "inputs": {"x": [[0.5, 1.0]] * 500}},
]


@pytest.mark.parametrize("request_body", COLON_IN_STRINGS)
def test_a_string_holding_a_key_end_does_not_parse_the_body_twice(client, monkeypatch, request_body):
    from service.jsonio import KEY_END, kept_keys

    body = json.dumps(request_body).encode()
    assert len(KEY_END.findall(body)) > kept_keys(request_body)  # the cheap count cannot settle it ...
    calls = count_full_parses(monkeypatch, body)
    r = client.post("/v1/gradients", data=body, headers=JSON_HEADERS)
    assert r.status_code == 200, r.json
    assert calls == ["orjson"]  # ... and the exact check does not parse the body again (it used json.loads)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"model": {"kind": "expression", "formula": "x # \\":"}, "inputs": {"x": 1, "x" : [2, 3]}}', "x"),
        (b'{"model": {"kind": "neuron"}, "inputs": {"x": {"a": {"b": 1}, "\\u0061": 2}}, "wrt": ["x"]}', "a"),
        (b'{"inputs": [1, 2, {"k\\\\": "\\":", "k\\\\" : 0}], "model": {"kind": "neuron"}}', "k\\"),
    ],
)
def test_duplicates_beside_key_like_strings_are_400_after_one_parse(client, monkeypatch, body, key):
    calls = count_full_parses(monkeypatch, body)
    r = client.post("/v1/gradients", data=body, headers=JSON_HEADERS)
    assert r.status_code == 400 and r.json["type"] == "/problems/malformed-json"
    assert f"The key {key!r} appears more than once" in r.json["detail"]
    assert calls == ["orjson"]


def test_raw_key_checks_agree_with_the_stdlib_parser():
    """Random bodies made of the characters that matter (quotes, backslashes, colons, braces in keys and
    strings; escaped and \\u forms of one key): the raw-bytes count and search find exactly the duplicates the
    stdlib parser's object_pairs_hook sees."""
    import orjson

    from service.jsonio import duplicate_key, kept_keys, raw_key_count

    rng = random.Random(8)
    alphabet = ["a", "b", '"', "\\", ":", "{", "}", " ", "é", "\n", ","]

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4)))

    def value(depth: int = 0, kind: float | None = None) -> str:
        r = rng.random() if kind is None else kind
        if depth > 3 or r < 0.3:
            return json.dumps(rng.choice([1, 2.5, text(), None, True]))
        if r < 0.6:
            if depth >= 1 and rng.random() < 0.3:  # long enough for kept_keys to walk a level at a time: its items
                kind = rng.choice([None, 0.5, 0.9])  # mixed, all lists or all objects (each a branch of the walk)
                return "[" + ",".join(value(depth + 1, kind) for _ in range(rng.randint(16, 20))) + "]"
            return "[" + ",".join(value(depth + 1) for _ in range(rng.randint(0, 3))) + "]"
        keys = [text() if rng.random() < 0.5 else rng.choice(["a", "b"]) for _ in range(rng.randint(0, 3))]
        keys = [rng.choice([json.dumps(k), json.dumps(k, ensure_ascii=False)]) for k in keys]
        return "{" + ",".join(k + rng.choice([":", " : ", "\n:"]) + value(depth + 1) for k in keys) + "}"

    def stdlib_duplicates(raw: bytes) -> set:
        found = set()

        def hook(pairs):
            names = [name for name, _ in pairs]
            found.update(name for name in names if names.count(name) > 1)
            return dict(pairs)

        json.loads(raw, object_pairs_hook=hook)
        return found

    with_duplicates = 0
    for _ in range(3000):
        raw = value().encode()
        expected = stdlib_duplicates(raw)
        body = orjson.loads(raw)
        assert (raw_key_count(raw) > kept_keys(body, exact=True)) == bool(expected), raw
        assert kept_keys(body) <= kept_keys(body, exact=True)  # the cheap count only undercounts
        found = duplicate_key(raw)
        assert (found in expected) if expected else found is None, raw
        with_duplicates += bool(expected)
    assert 300 < with_duplicates < 2700  # both kinds were tried


def test_kept_keys_counts_every_key_of_every_object_however_its_lists_are_walked():
    """kept_keys(exact=True) is every object's keys: long lists (walked a level at a time, joined) and short ones
    (pushed item by item) of objects, of lists, of both and of numbers, nested; the cheap count never exceeds it."""
    from service.jsonio import JOINED_FROM, kept_keys

    rng = random.Random(11)

    def every_key(node) -> int:
        if isinstance(node, dict):
            return len(node) + sum(every_key(v) for v in node.values())
        return sum(every_key(v) for v in node) if isinstance(node, list) else 0

    def make(depth: int, kind: str | None = None):
        kind = kind or rng.choice(["number", "list", "object", "long"] if depth < 4 else ["number"])
        if kind == "number":
            return rng.random()
        if kind == "object":
            return {f"k{i}": make(depth + 1) for i in range(rng.randint(0, 3))}
        if kind == "list":
            return [make(depth + 1) for _ in range(rng.randint(0, 3))]
        inner = rng.choice([None, "object", "list", "number"])  # mixed, or all of one kind
        return [make(depth + 1, inner) for _ in range(rng.randint(JOINED_FROM, JOINED_FROM + 4))]

    for _ in range(800):
        body = make(0, "long")
        assert kept_keys(body, exact=True) == every_key(body)
        assert kept_keys(body) <= every_key(body)


# --- metrics --------------------------------------------------------------------------------------------


def test_metrics_content_type_is_prometheus_text(client):
    r = client.get("/metrics")
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text") and om.text.endswith("# EOF\n")


def test_unknown_methods_and_routes_fold_into_bounded_labels(client):
    client.open("/v1/gradients", method="M123")
    client.open("/v1/gradients", method="DELETE")
    client.open("/random/path/42", method="GET")
    text = client.get("/metrics").text
    assert 'method="other",route="/v1/gradients",status="405"' in text
    assert 'method="DELETE",route="/v1/gradients",status="405"' in text  # 405 keeps the known route
    assert 'method="GET",route="unmatched",status="404"' in text
    assert "M123" not in text and "/random/path" not in text


def test_build_info_and_worker_memory_are_exported(client):
    client.get("/healthz")
    text = client.get("/metrics").text
    assert re.search(r'gradsvc_build_info\{python="3\.\d+\.\d+",torch="2\.13\.0[^"]*",version="[^"]+"\} 1\.0', text)
    rss = float(re.search(r"^gradsvc_process_resident_memory_bytes (\S+)$", text, re.M).group(1))
    assert rss > 10 * 2**20


def series(text: str) -> set[str]:
    """Distinct (metric, labels) of the service's own metrics; a histogram's buckets count once."""
    out = set()
    for line in text.splitlines():
        if line.startswith("gradsvc_"):
            name, _, rest = line.partition("{")
            labels = re.sub(r'le="[^"]*",?', "", rest.rsplit("}", 1)[0]) if rest else ""
            out.add(re.sub(r"_(bucket|count|sum|created)$", "", name.split(" ")[0]) + "{" + labels + "}")
    return out


@pytest.mark.live
@pytest.mark.slow
def test_random_methods_and_paths_keep_metric_series_bounded(tmp_path):
    """5,000 requests with random methods and paths against 2 real workers in multiprocess mode."""
    server = GunicornServer(workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}).start()
    rng = random.Random(9)
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
    paths = ["/v1/gradients", "/v1/models", "/healthz", "/v1/check", "/openapi.json"]
    try:
        start, sent = time.monotonic(), 0
        with requests.Session() as s:
            while sent < 5000 and time.monotonic() - start < 240:
                method = rng.choice(methods) if rng.random() < 0.3 else f"M{sent}"
                path = rng.choice(paths) if rng.random() < 0.3 else f"/x{sent}/{rng.randrange(10**6)}"
                s.request(method, server.url + path, timeout=10)
                sent += 1
            text = s.get(server.url + "/metrics", timeout=10).text
    finally:
        server.stop()
    assert sent == 5000
    found = series(text)
    assert len(found) < 100, sorted(found)
    assert len(text) < 64 * 1024
    assert not re.search(r'method="M\d+"|route="/x\d+', text)


# --- logs -----------------------------------------------------------------------------------------------


def test_gunicorn_and_app_share_the_json_log_format():
    ns: dict = {}
    exec(compile((ROOT / "deploy" / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), ns)
    assert ns["_JSON_FORMATTER"] == {k: v for k, v in JSON_FORMATTER.items() if k != "()"}
    assert ns["logger_class"].__name__ == "JsonLogger"


@pytest.mark.live
def test_log_lines_are_json_with_iso_time_and_pid(tmp_path):
    server = GunicornServer(
        workers=1, env={"LOG_LEVEL": "INFO", "GUNICORN_LOG_LEVEL": "info"}, log_path=tmp_path / "server.log"
    ).start()
    try:
        requests.get(server.url + "/healthz", headers={"X-Request-ID": "log-1"}, timeout=10)
        workers = server.worker_pids()
    finally:
        server.stop()
    lines = (tmp_path / "server.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line, gunicorn's included, is JSON
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00$")
    assert all(iso.match(r["time"]) and isinstance(r["pid"], int) for r in records)
    assert any(r["logger"] == "gunicorn.error" and r["message"].startswith("Starting gunicorn") for r in records)
    access = [r for r in records if r.get("request_id") == "log-1"]
    assert access and access[0]["pid"] in workers and access[0]["logger"] == "gradsvc.access"
