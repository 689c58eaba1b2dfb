"""The local two-command path of README and docs/edge.md: `make run TRUSTED_PROXY_HOPS=1` and `make gateway`,
run as written (the Makefile's recipes, the venv this suite runs in), then used through the gateway."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from test_observability import metric

from conftest import ROOT, STARTED_GROUPS, TUTORIAL_NEURON, free_port, require_binary

VENV = Path(sys.prefix)


def make(target: str, env: dict, log: Path, *variables: str) -> subprocess.Popen:
    """`make TARGET VARIABLES...` in its own process group, with this suite's venv (its install step skipped)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["make", "-s", "-o", f"{VENV}/.installed", target, f"VENV={VENV}", *variables],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    STARTED_GROUPS.add(proc.pid)
    return proc


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to make and what it started (gunicorn, nginx: one process group), SIGKILL after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)


def wait_for(url: str, proc: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[4]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} not answering within {seconds}s:\n{log.read_text()[-3000:]}")


@pytest.mark.live
@pytest.mark.slow
def test_make_run_and_make_gateway_serve_the_api_under_the_prefix(tmp_path):
    require_binary("make", package="make")
    require_binary("nginx", package="nginx")
    port, gateway_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR" and not k.startswith("GATEWAY_")}
    env.update(HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY="2", LOG_LEVEL="WARNING")
    prom = tmp_path / "prometheus"
    app = make("run", env, tmp_path / "run.log", "TRUSTED_PROXY_HOPS=1", f"PROMETHEUS_MULTIPROC_DIR={prom}")
    gateway = None
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", app, tmp_path / "run.log")
        gateway = make(
            "gateway",
            env,
            tmp_path / "gateway.log",
            f"GATEWAY_PORT={gateway_port}",
            f"GATEWAY_DIR={tmp_path / 'nginx'}",
        )
        base = f"http://127.0.0.1:{gateway_port}/grad"
        wait_for(base + "/healthz", gateway, tmp_path / "gateway.log")

        assert requests.get(base + "/openapi.json", timeout=10).json()["servers"] == [{"url": "/grad"}]
        n = 12
        for _ in range(n):
            r = requests.post(base + "/v1/gradients", json=TUTORIAL_NEURON, timeout=30)
            assert r.status_code == 200, r.text
        # the metrics directory under make run: every scrape (either worker) counts all n requests
        assert any(prom.glob("*.db"))
        for _ in range(4):
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert metric(text, "gradsvc_http_requests_total", route="/v1/gradients", status="200") == n
    finally:
        if gateway is not None:
            stop(gateway)
        stop(app)
    said = (tmp_path / "gateway.log").read_text()
    assert re.search(r"run the app with\s+'make run TRUSTED_PROXY_HOPS=1'", said), said
