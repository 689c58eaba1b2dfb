"""Files and bytes in PROMETHEUS_MULTIPROC_DIR, and the /metrics scrape time, after N worker recycles.

Real gunicorn (deploy/gunicorn.conf.py, 2 workers) recycling every GUNICORN_MAX_REQUESTS=20 requests, so N
recycles take N x 20 small requests. Run from the repository: ``python -m bench.metrics_dir --recycles 200``.
The numbers in docs/operate.md (metrics) come from here, once on main and once with the compaction.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import requests

from bench.servers import Server

NEURON = {"model": {"kind": "neuron", "loss": "bce"}, "inputs": {"x": 6.7, "y": 0.0, "w": 1.0, "b": 0.0}}


def dir_usage(path: Path) -> dict:
    """Files, apparent bytes (st_size; the library pre-sizes sparse files) and allocated bytes (what tmpfs holds)."""
    entries = [e for e in os.scandir(path) if e.is_file()]
    stats = [e.stat() for e in entries]
    return {
        "files": len(entries),
        "db_files": sum(e.name.endswith(".db") for e in entries),
        "apparent_bytes": sum(s.st_size for s in stats),
        "allocated_bytes": sum(s.st_blocks * 512 for s in stats),
    }


def scrape_ms(session: requests.Session, url: str, n: int) -> dict:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        response = session.get(url + "/metrics", timeout=60)
        times.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2), "n": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recycles", type=int, default=200)
    parser.add_argument("--max-requests", type=int, default=20)
    parser.add_argument("--scrapes", type=int, default=15)
    parser.add_argument("--time-limit", type=float, default=1800, help="seconds for the whole run at most")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prom = Path(tmp) / "prom"
        env = {
            "PROMETHEUS_MULTIPROC_DIR": str(prom),
            "GUNICORN_MAX_REQUESTS": str(args.max_requests),
            "GUNICORN_MAX_REQUESTS_JITTER": "0",
            "GUNICORN_LOG_LEVEL": "info",
        }
        server = Server("service", workers=2, env=env, log_dir=Path(tmp))
        with server, requests.Session() as s:
            result = {"start": dir_usage(prom) | scrape_ms(s, server.url, args.scrapes)}
            deadline = time.monotonic() + args.time_limit
            sent, recycles = 0, 0
            limit = 2 * args.recycles * args.max_requests  # bound the loop in count as well
            while recycles < args.recycles and sent < limit and time.monotonic() < deadline:
                for _ in range(args.max_requests):
                    s.post(server.url + "/v1/gradients", json=NEURON, timeout=60).raise_for_status()
                sent += args.max_requests
                recycles = server.log_path.read_text().count("Autorestarting worker")
            time.sleep(2)  # the last exit reaped (the master handles SIGCHLD within its 1 s loop)
            result["after"] = {"recycles": recycles, "requests": sent} | dir_usage(prom)
            result["after"] |= scrape_ms(s, server.url, args.scrapes)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
