"""Compaction of dead workers' multiprocess metric files (service/metrics_compact.py, deploy/gunicorn.conf.py).

Unit level: files written by real prometheus_client metrics in separate processes (so each has its own pid and is
dead once it returns) are merged, and a scrape of the directory reads the same values before and after. Live: a real
gunicorn recycling its workers every 20 requests while a second thread scrapes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from test_observability import metric

from conftest import TUTORIAL_NEURON, GunicornServer
from service import metrics_compact

# One process's metrics: every kind the compaction merges, and a live gauge it must leave alone. The values are
# multiples of 1/8, so sums are exact in any order and "the same values" can mean equal.
WRITER = """
import os, sys
from prometheus_client import Counter, Gauge, Histogram, Summary
print(os.getpid())
n = int(sys.argv[1])
c = Counter("t_requests_total", "requests", ["route"])
h = Histogram("t_seconds", "time", ["route"], buckets=(0.25, 1, 4))
s = Summary("t_summary_seconds", "summary")
for i in range(n):
    c.labels("a").inc()
    c.labels(f"r{i % 3}").inc(0.5)
    h.labels("a" if i % 2 else "b").observe(0.125 * (i % 40))
    s.observe(0.5 * i)
Gauge("t_build_info", "max", ["v"], multiprocess_mode="max").labels(sys.argv[2]).set(n)
Gauge("t_low", "min", multiprocess_mode="min").set(n)
Gauge("t_total", "sum", multiprocess_mode="sum").set(n)
Gauge("t_live", "livesum", multiprocess_mode="livesum").set(n)
"""


def write_metrics(path: Path, n: int, version: str = "1") -> int:
    """Run WRITER in a new process (dead on return); its pid."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(path)}
    proc = subprocess.run(
        [sys.executable, "-c", WRITER, str(n), version], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


def scrape(path: Path) -> dict:
    """What /metrics would report: (sample name, labels) -> value."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(path))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect() for s in m.samples}


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def log():
    logger = logging.getLogger("test.metrics_compact")
    handler = Lines()
    logger.addHandler(handler)
    logger.messages = handler.messages
    yield logger
    logger.removeHandler(handler)


def test_merge_keeps_every_value_of_real_metric_files(tmp_path, log):
    """Counters, summaries, histogram buckets/sums/counts and min/max/sum gauges read the same after compaction,
    also when an archive is merged again with more dead files; only archives and live gauges stay."""
    for n, version in ((5, "1"), (17, "2"), (40, "1")):
        write_metrics(tmp_path, n, version)
    before = scrape(tmp_path)
    assert before[("t_requests_total", (("route", "a"),))] == 62
    assert before[("t_seconds_count", (("route", "a"),))] == 30  # histograms, not only counters
    assert before[("t_build_info", (("v", "1"),))] == 40  # a max, not a sum
    assert metrics_compact.compact(str(tmp_path), keep=(), log=log) == 3 * 6
    assert scrape(tmp_path) == before
    first = {p.name for p in tmp_path.iterdir()}
    assert {n for n in first if "archive" in n} == {
        f"{kind}_archive.db" for kind in ("counter", "summary", "histogram", "gauge_max", "gauge_min", "gauge_sum")
    }
    assert len([n for n in first if n.startswith("gauge_livesum_")]) == 3  # mark_process_dead's job, not ours

    for n in (3, 64):  # a second round merges the archives with new dead files
        write_metrics(tmp_path, n, "3")
    expected = scrape(tmp_path)
    assert metrics_compact.compact(str(tmp_path), keep=(), log=log) == 2 * 6
    assert scrape(tmp_path) == expected
    assert expected[("t_seconds_bucket", (("le", "0.25"), ("route", "b")))] > 0
    assert expected[("t_low", ())] == 3 and expected[("t_build_info", (("v", "3"),))] == 64
    assert {n for n in os.listdir(tmp_path) if not n.startswith("gauge_livesum_")} == first - {
        n for n in first if n.startswith("gauge_livesum_")
    }
    assert log.messages == []


COMPACT_IN_TMPFS = """
import logging, os, shutil, sys
from service import metrics_compact
source, volume = sys.argv[1:3]
for name in os.listdir(source):  # copied: every byte written, so each file takes its whole size on the tmpfs
    shutil.copy(os.path.join(source, name), volume)
print(os.statvfs(volume).f_bavail * os.statvfs(volume).f_frsize, flush=True)
print(metrics_compact.compact(volume, keep=(), log=logging.getLogger()))
"""


def test_the_merged_files_take_the_bytes_in_use_not_their_sources_size(tmp_path, log):
    """Each source is an allocated 64 KiB file holding a few KiB; the compaction allocated the merged file at the sum
    of its sources' sizes before writing it, and failed on a volume with room for the few KiB (an audit: the next
    worker then found no room and the server stopped). On a real tmpfs with 64 KiB free beside two dead processes'
    files, it now merges them, and the archives hold their entries and nothing more."""
    from test_metrics_volume import in_own_tmpfs

    dead = tmp_path / "dead"
    dead.mkdir()
    for n in (5, 17):
        write_metrics(dead, n)
    expected = scrape(dead)
    files = list(dead.iterdir())
    sizes = sum(p.stat().st_size for p in files)
    assert sizes == len(files) * 64 * 1024  # the library's files, 64 KiB each
    volume = tmp_path / "volume"
    volume.mkdir()
    prefix = in_own_tmpfs(volume, f"size={sizes // 1024 + 64}k")
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", COMPACT_IN_TMPFS, str(dead), str(volume)],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    free, removed = proc.stdout.split()
    assert int(free) == 64 * 1024 and removed == "12", proc.stderr  # all but the two live gauges' files
    assert "No space left" not in proc.stderr

    # the same merge here: its archives are their entries' size, and read back the same
    for name in os.listdir(dead):
        shutil.copy(dead / name, tmp_path / name)
    assert metrics_compact.compact(str(tmp_path), keep=(), log=log) == 12
    for archive in tmp_path.glob("*_archive.db"):
        used = int.from_bytes(archive.read_bytes()[:4], "little")
        assert archive.stat().st_size == used < 16 * 1024, archive.name
    assert scrape(tmp_path) == expected


def test_kept_and_running_pids_and_a_held_lock_leave_the_files(tmp_path, log):
    """The master and the live workers (kept), a pid some process runs, and a scrape holding the lock: nothing is
    merged, no temporary file stays, and the skip is logged; the next compaction catches up."""
    kept = write_metrics(tmp_path, 4)
    running = os.getpid()  # this test's process: alive, and never a writer here
    shutil.copy(tmp_path / f"counter_{kept}.db", tmp_path / f"counter_{running}.db")
    everything = sorted(os.listdir(tmp_path))
    assert metrics_compact.compact(str(tmp_path), keep={kept}, log=log) == 0
    assert sorted(os.listdir(tmp_path)) == everything

    dead = write_metrics(tmp_path, 7)
    before = scrape(tmp_path)
    everything = sorted(os.listdir(tmp_path))
    fd = os.open(tmp_path / metrics_compact.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # a scrape in progress
        assert metrics_compact.compact(str(tmp_path), keep={kept}, log=log, attempts=3, pause=0) is None
        assert sorted(os.listdir(tmp_path)) == sorted([*everything, metrics_compact.LOCK_NAME])
        assert log.messages == ["metrics compaction skipped: a scrape held the lock; the next worker exit catches up"]
    finally:
        os.close(fd)
    assert metrics_compact.compact(str(tmp_path), keep={kept}, log=log) == 6
    assert [p.name for p in tmp_path.glob(f"*_{dead}.db")] == [f"gauge_livesum_{dead}.db"]
    assert (tmp_path / f"counter_{kept}.db").exists() and (tmp_path / f"counter_{running}.db").exists()
    assert scrape(tmp_path) == before


def test_a_scrape_skips_a_file_another_process_is_creating(tmp_path, monkeypatch, client):
    """MmapedDict creates a file empty and sizes it next; a scrape in between answered 500 (struct.error)."""
    write_metrics(tmp_path, 4)
    (tmp_path / "counter_4194303.db").touch()  # a new worker's file, not sized yet
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert metric(response.text, "t_requests_total", route="a") == 4


# --- live ---------------------------------------------------------------------------------------------------

MAX_REQUESTS = 20
SENT = 600  # ~30 recycles of the two workers (scrapes count towards max_requests too)
SCRAPES = 400  # at most; the scraper stops when the requests are done


def files_by_pid(path: Path) -> dict[str, list[str]]:
    """pid part ('archive' for archives) -> *.db files."""
    found: dict[str, list[str]] = {}
    for name in os.listdir(path):
        if name.endswith(".db"):
            found.setdefault(name[:-3].rsplit("_", 1)[1], []).append(name)
    return found


@pytest.mark.live
def test_recycled_workers_files_are_compacted_and_scrapes_stay_whole(tmp_path):
    """Workers recycled every 20 requests while another thread scrapes: every scrape answers 200 and no count ever
    goes down; in the end the counters and the histogram's count add up to the requests sent, and the directory
    holds only the master's, the live workers' and the archive files."""
    prom = tmp_path / "prom"
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
        "GUNICORN_MAX_REQUESTS": str(MAX_REQUESTS),
        "GUNICORN_MAX_REQUESTS_JITTER": "0",
        "GUNICORN_LOG_LEVEL": "info",
    }
    log = tmp_path / "server.log"
    with GunicornServer(workers=2, env=env, log_path=log) as server:
        done = threading.Event()
        seen: list[tuple[int, float, float]] = []  # (status, requests counted, histogram count)

        def scraper() -> None:
            with requests.Session() as s:
                deadline = time.monotonic() + 300
                while not done.is_set() and len(seen) < SCRAPES and time.monotonic() < deadline:
                    r = s.get(server.url + "/metrics", timeout=30)
                    text = r.text if r.status_code == 200 else ""
                    seen.append(
                        (
                            r.status_code,
                            metric(text, "gradsvc_http_requests_total", route="/v1/gradients", status="200"),
                            metric(text, "gradsvc_http_request_duration_seconds_count", route="/v1/gradients"),
                        )
                    )

        thread = threading.Thread(target=scraper)
        thread.start()
        try:
            with requests.Session() as s:
                statuses = [
                    s.post(server.url + "/v1/gradients", json=TUTORIAL_NEURON, timeout=30).status_code
                    for _ in range(SENT)
                ]
        finally:
            done.set()
            thread.join(60)
        assert statuses == [200] * SENT
        assert seen and {status for status, _, _ in seen} == {200}
        counts = [count for _, count, _ in seen]
        assert counts == sorted(counts), "a counter went down during a compaction"
        histogram = [count for _, _, count in seen]
        assert histogram == sorted(histogram), "a histogram's count went down during a compaction"

        recycles = log.read_text().count("Autorestarting worker")
        assert recycles >= SENT // MAX_REQUESTS // 2, recycles
        # Any exit still being handled is compacted before the master forks again: poll (bounded) for the files
        # to belong to the master, the two workers it runs now and the archives only.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            server.wait_workers(2)
            owners = set(files_by_pid(prom))
            allowed = {str(server.proc.pid), "archive", *map(str, server.worker_pids())}
            if owners <= allowed:
                break
            time.sleep(0.2)
        assert owners <= allowed, (owners, allowed)
        # the workers write counters and histograms; the max gauge (build info) only the preloaded master
        assert {"counter_archive.db", "histogram_archive.db"} <= set(files_by_pid(prom)["archive"])
        text = requests.get(server.url + "/metrics", timeout=30).text
        assert metric(text, "gradsvc_http_requests_total", route="/v1/gradients", status="200") == SENT
        assert metric(text, "gradsvc_http_request_duration_seconds_count", route="/v1/gradients") == SENT
        assert metric(text, "gradsvc_compute_seconds_count", kind="neuron") == SENT
        assert metric(text, "gradsvc_build_info") == 1  # the max gauge merged, not summed
