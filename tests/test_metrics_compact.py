"""Multiprocess metric files of dead workers, written by real prometheus_client metrics in separate processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from test_observability import metric

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


def test_a_scrape_skips_a_file_another_process_is_creating(tmp_path, monkeypatch, client):
    """MmapedDict creates a file empty and sizes it next; a scrape in between answered 500 (struct.error)."""
    write_metrics(tmp_path, 4)
    (tmp_path / "counter_4194303.db").touch()  # a new worker's file, not sized yet
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert metric(response.text, "t_requests_total", route="a") == 4
