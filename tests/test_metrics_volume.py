"""The metrics directory failing under a real gunicorn: too small, full, deleted, read-only (docs/operate.md,
"Metrics volume").

prometheus_client maps each process's metric files into memory as sparse files: on a full tmpfs the first write to
a page the filesystem could not back killed the worker with SIGBUS, and gunicorn forked the next one, without end
(an audit). A small tmpfs needs no root here: the server runs in its own user and mount namespace (`unshare`), which
mounts one; the test reads and fills it through /proc/<master>/root.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import REQUIRE_ALL, ROOT, TUTORIAL_NEURON, GunicornServer, json_log_lines, require_binary
from service import metrics_files

pytestmark = [pytest.mark.live]

# Every route with every method: ~90 requests, a few dozen (route, status) combinations, whose latency histogram
# children outgrow a worker's first 64 KiB histogram file (measured: ~100 KiB), so the file must grow.
PATHS = ["/v1/gradients", "/v1/check", "/v1/grade", "/v1/batch", "/v1/models", "/healthz", "/readyz"]
PATHS += ["/openapi.json", "/playground/x.js", "/", "/nope"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO"]
LOST = "a metric update was lost"


def gunicorn_conf() -> dict:
    """deploy/gunicorn.conf.py's names, as gunicorn would load it, without emptying any dir: METRIC_FILES, and
    `needed`, the free bytes its start-up check requires of the metrics directory by number of workers (1 to 4)."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    code = (
        "import json, runpy; ns = runpy.run_path('deploy/gunicorn.conf.py'); "
        "print(json.dumps([ns['METRIC_FILES'], {w: ns['metrics_space_needed'](w) for w in range(1, 5)}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    files, needed = json.loads(out.stdout.splitlines()[-1])
    return {"METRIC_FILES": files, "needed": {int(w): n for w, n in needed.items()}}


def in_own_tmpfs(mountpoint: Path, options: str) -> list[str]:
    """A command prefix: the command runs in its own user and mount namespaces, with a tmpfs (`options`, e.g.
    size=48k) mounted on `mountpoint` there only (util-linux's unshare; the kernel must allow unprivileged user
    namespaces, as Debian's does)."""
    unshare = require_binary("unshare", package="util-linux")
    namespaces = [unshare, "--user", "--map-root-user", "--mount"]
    if subprocess.run([*namespaces, "true"], capture_output=True, timeout=30).returncode != 0:
        reason = "unprivileged user namespaces are off here (sysctl kernel.unprivileged_userns_clone=1 turns them on)"
        if REQUIRE_ALL:
            pytest.fail(f"{reason} (GRADSVC_REQUIRE_ALL=1: CI runs every test)", pytrace=False)
        pytest.skip(reason)
    mount = f'mount -t tmpfs -o {options} gradsvc-test "$0" && exec "$@"'
    return [*namespaces, "sh", "-c", mount, str(mountpoint)]


def server_in_tmpfs(tmp_path: Path, options: str, **env) -> tuple[GunicornServer, Path]:
    """One worker whose metrics directory is on its own tmpfs; (the server, the directory as seen from here once
    the master runs: through /proc/<master>/root, the master's view of the mounts)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    prom = volume / "prom"
    server = GunicornServer(workers=1, env={"PROMETHEUS_MULTIPROC_DIR": str(prom), **env}, log_path=tmp_path / "log")
    server.command_prefix = in_own_tmpfs(volume, options)
    return server, prom


def seen_by(server: GunicornServer, path: Path) -> Path:
    return Path(f"/proc/{server.proc.pid}/root{path}")


def fill(volume: Path) -> None:
    """Take every free byte of the filesystem of `volume`."""
    fd = os.open(volume / "filler", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        st = os.statvfs(volume)
        os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize)
    finally:
        os.close(fd)
    assert os.statvfs(volume).f_bavail == 0


def sweep(url: str) -> list[int]:
    """Every route with every method: status codes (a connection that broke raises)."""
    with requests.Session() as s:
        return [s.request(m, url + p, json={}, timeout=30).status_code for p in PATHS for m in METHODS]


def stop_worker_and_wait_for_the_master(server: GunicornServer, timeout: float = 60) -> int:
    """SIGTERM the one worker: gunicorn forks a new one; the master's exit status once it has stopped."""
    (worker,) = server.worker_pids()
    os.kill(worker, signal.SIGTERM)
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the master still runs {timeout} s after its worker was replaced")


def log_lines(server: GunicornServer) -> tuple[str, list[dict]]:
    text = server.log_path.read_text()
    return text, json_log_lines(text)


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def requests_counted(text: str) -> float:
    lines = text.splitlines()
    return sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith("gradsvc_http_requests_total{"))


def test_a_metrics_volume_too_small_is_refused_at_start_with_one_line(tmp_path):
    """48 KiB (the audit's tmpfs): the workers died of SIGBUS 0.14 s after boot, again and again, and the log grew by
    ~14,000 lines a minute. Now the master refuses at start, as for any other bad setting: one line, exit 3."""
    server, prom = server_in_tmpfs(tmp_path, "size=48k")
    try:
        server.spawn()
        status = server.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("the server neither served nor stopped within 60 s")
    finally:
        server.stop()
    text = server.log_path.read_text()
    assert status == 3, text
    assert text.count("\n") == 1 and "Traceback" not in text and "SIGBUS" not in text, text
    assert f"gradsvc: configuration error: PROMETHEUS_MULTIPROC_DIR={str(prom)!r} has no room" in text
    assert f"{gunicorn_conf()['needed'][1] // 1024} KiB needed" in text


def test_a_full_metrics_volume_costs_metrics_never_an_answer(tmp_path):
    """The volume fills while the server runs (in compose it was the /tmp every temporary file shares): requests
    that need a metric file to grow are answered all the same, the lost updates are counted and logged once; the
    next worker to start finds no room and stops the server with one line (exit 3), where workers died of SIGBUS."""
    server, prom = server_in_tmpfs(tmp_path, "size=4m")
    with server:
        (worker,) = server.worker_pids()
        files = seen_by(server, prom)
        fill(files.parent)
        statuses = sweep(server.url)
        assert all(status < 500 for status in statuses), statuses
        assert server.worker_pids() == [worker]  # the same worker: not killed by SIGBUS
        scrape = requests.get(server.url + "/metrics", timeout=10)
        assert scrape.status_code == 200
        assert metric(scrape.text, "gradsvc_metrics_write_errors_total") >= 1
        # the worker's files are the ones it allocated as it started (a kind the config does not know of would be
        # allocated only when first written), and nothing is sparse: every page has its space (tmpfs: memory)
        mine = sorted(p.name for p in files.iterdir() if p.name.endswith(f"_{worker}.db"))
        assert mine == sorted(f"{kind}_{worker}.db" for kind in gunicorn_conf()["METRIC_FILES"])
        for path in files.iterdir():
            assert path.stat().st_blocks * 512 >= path.stat().st_size, path.name
        status = stop_worker_and_wait_for_the_master(server)
    text, lines = log_lines(server)
    assert status == 3, text
    assert [line["pid"] for line in lines if line["message"].startswith(LOST)] == [worker]  # once a minute at most
    (refused,) = [line for line in lines if line["message"].startswith("worker failed to boot")]
    needed = f"PROMETHEUS_MULTIPROC_DIR={str(prom)!r} has no room for the metric files: 320 KiB needed"
    assert needed in refused["message"]
    assert "Traceback" not in text and "SIGBUS" not in text
    assert sum("exited with code" in line["message"] for line in lines) == 1  # one failed boot, no loop


def test_the_smallest_metrics_volume_admitted_at_start_keeps_serving_across_recycles(tmp_path):
    """The start-up check admitted (workers + 1) x 320 KiB: on such a volume a worker whose histogram had grown was
    recycled, the compaction found no room for the merged files (sized by their sources' allocated bytes), the next
    worker could not allocate its files, and the master stopped (an audit). Now a tmpfs just large enough to pass
    the check serves every route with every method, and its worker is recycled again and again, each time after
    its metric files have grown; no compaction fails, and every request is counted."""
    needed = gunicorn_conf()["needed"][1] // 1024
    server, prom = server_in_tmpfs(tmp_path, f"size={needed}k")
    try:  # refused: the master's lock file takes a page first, so needed + 4 KiB is the smallest volume admitted
        server.spawn()
        assert server.proc.wait(60) == 3
    except subprocess.TimeoutExpired:
        pytest.fail("the server neither served nor stopped within 60 s")
    finally:
        server.stop()
    assert "has no room for the metric files" in server.log_path.read_text()

    (tmp_path / "admitted").mkdir()
    recycle = {"GUNICORN_MAX_REQUESTS": "120", "GUNICORN_MAX_REQUESTS_JITTER": "0", "GUNICORN_LOG_LEVEL": "info"}
    server, prom = server_in_tmpfs(tmp_path / "admitted", f"size={needed + 4}k", **recycle)
    sent, grown = 0, set()
    with server, requests.Session() as s:
        files = seen_by(server, prom)
        before = requests_counted(s.get(server.url + "/metrics", timeout=10).text)  # the start's probes
        for _ in range(4):  # each worker sees every route with every method before it is recycled
            for body in ({"json": {}}, {"data": b"{", "headers": {"Content-Type": "application/json"}}):
                for method in METHODS:
                    statuses = [s.request(method, server.url + p, timeout=30, **body).status_code for p in PATHS]
                    assert all(status < 500 for status in statuses), statuses
                    sent += len(statuses)
                grown |= {p.name for p in files.glob("histogram_[0-9]*.db") if p.stat().st_size > 64 * 1024}
        assert server.proc.poll() is None
        text = server.log_path.read_text()
        scrape = s.get(server.url + "/metrics", timeout=10)
        assert scrape.status_code == 200
        assert metric(scrape.text, "gradsvc_metrics_write_errors_total") == 0
        # every request counted (the first scrape's too), each recycled worker's in the archives
        assert requests_counted(scrape.text) == before + 1 + sent
    assert text.count("Autorestarting worker") >= 3, text
    assert len(grown) >= 2  # recycled with grown files, more than once
    assert "compaction failed" not in text and "failed to boot" not in text and "Traceback" not in text, text


def test_a_deleted_metrics_directory_costs_metrics_never_an_answer(tmp_path):
    """`make clean` (or a /tmp cleaner) while the server runs: computed answers turned into 500s (the after-request
    hook failed to open a metric file), /metrics too, and the next recycled worker stopped the server with a
    traceback. Now every request is answered, /metrics says what happened (503 problem), and the next worker to
    start stops the server with one line (exit 3)."""
    prom = tmp_path / "prom"
    server = GunicornServer(workers=1, env={"PROMETHEUS_MULTIPROC_DIR": str(prom)}, log_path=tmp_path / "log")
    with server, requests.Session() as s:
        shutil.rmtree(prom)

        def post(path, body):
            return s.post(server.url + path, json=body, timeout=30).status_code

        statuses = [post("/v1/gradients", TUTORIAL_NEURON) for _ in range(3)]
        statuses += [post("/v1/check", {**TUTORIAL_NEURON, "submission": {"loss": 6.7}})]  # its compute kind
        statuses += [s.patch(server.url + "/v1/batch", timeout=30).status_code]  # a new label combination
        assert statuses == [200, 200, 200, 200, 405]
        scrape = s.get(server.url + "/metrics", timeout=10)
        assert scrape.status_code == 503 and scrape.headers["Content-Type"] == "application/problem+json"
        problem = scrape.json()
        assert problem["type"] == "/problems/metrics-unavailable" and "is gone" in problem["detail"]
        status = stop_worker_and_wait_for_the_master(server)
    text, lines = log_lines(server)
    assert status == 3, text
    (refused,) = [line for line in lines if line["message"].startswith("worker failed to boot")]
    assert f"PROMETHEUS_MULTIPROC_DIR={str(prom)!r} is gone" in refused["message"]
    assert "Traceback" not in text


def load_config(env: dict, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    """deploy/gunicorn.conf.py loaded as gunicorn loads it (the metrics directory is prepared then)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "WEB_CONCURRENCY"))}, **env}
    code = 'import runpy; runpy.run_path("deploy/gunicorn.conf.py")'
    return subprocess.run(
        [*prefix, sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("where", ["read-only", "under a file"])
def test_an_unwritable_metrics_directory_is_refused_with_one_line(tmp_path, where):
    """A read-only root filesystem without a volume for the metrics ended in an OSError traceback, exit 1."""
    if where == "read-only":
        (tmp_path / "volume").mkdir()
        prefix, prom = in_own_tmpfs(tmp_path / "volume", "ro,size=64k"), tmp_path / "volume" / "prom"
    else:
        (tmp_path / "file").write_text("")
        prefix, prom = [], tmp_path / "file" / "prom"
    proc = load_config({"PROMETHEUS_MULTIPROC_DIR": str(prom)}, prefix)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith(f"gradsvc: configuration error: PROMETHEUS_MULTIPROC_DIR={str(prom)!r} is not a ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_metric_files_are_allocated_before_they_are_mapped_or_grown(tmp_path, monkeypatch):
    """The library sized its files with truncate (sparse); an AllocatedMmapedDict's every byte is backed, and a new
    key that needs the file to grow on a full volume is an OSError naming the directory, the dict still usable."""

    def key(i: int) -> str:  # ~180 bytes, as the app's keys: 400 of them pass the first 64 KiB
        return f'["gradsvc_x_total", "gradsvc_x_total", {{"route": "/r{i:04d}"}}, "{"h" * 100}"]'

    def full(fd, offset, length):
        raise OSError(28, os.strerror(28))

    path = tmp_path / "counter_1.db"
    d = metrics_files.AllocatedMmapedDict(str(path))
    try:
        assert path.stat().st_size == metrics_files.FILE_BYTES
        assert path.stat().st_blocks * 512 >= metrics_files.FILE_BYTES
        for i in range(400):
            d.write_value(key(i), i, 0)
        grown = path.stat().st_size
        assert grown > metrics_files.FILE_BYTES and path.stat().st_blocks * 512 >= grown
        monkeypatch.setattr(os, "posix_fallocate", full)
        with pytest.raises(metrics_files.MetricFileError, match=f"PROMETHEUS_MULTIPROC_DIR={str(tmp_path)!r}"):
            for i in range(400, 1000):
                d.write_value(key(i), i, 0)
        assert path.stat().st_size == grown  # not grown unbacked
        d.write_value(key(0), 7, 0)  # the keys it has are written in place
    finally:
        d.close()
    values = {k: v for k, v, _, _ in metrics_files.AllocatedMmapedDict.read_all_values_from_file(str(path))}
    assert values[key(0)] == 7 and values[key(399)] == 399 and key(999) not in values
