"""Bounded cost figures: the first formula request on a fresh worker, and PSS after mixed formula + neuron load.

Ratios against baselines from the same run: the first request against the median of the next 100 of the
same kind on the same worker; PSS after mixed load against the same server idle.  Numbers, not assertions.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import orjson
import requests

from . import workloads, wrk
from .servers import Server

FORMULA = orjson.dumps(
    {
        "model": {"kind": "expression", "formula": "sum(sin(x * y) + maximum(x, y) / (1 + exp(-x)) - x ** 2)"},
        "inputs": {"x": [[0.5], [1.5], [2.5]], "y": [[0.25, 0.75, 1.25, 1.75]]},
    }
)
FORMULAS = [
    orjson.dumps(
        {
            "model": {"kind": "expression", "formula": f},
            "inputs": {"x": [[1.0], [2.0]], "y": [0.5, 1.5, 2.5]},
            "include": ["graph", "intermediates"],
        }
    )
    for f in ("sum(x * y + sin(x))", "mean(exp(-x * y) * cos(y))", "sum(maximum(x, y) ** 2 / (1 + y))")
]


def _post_ms(session: requests.Session, url: str, body: bytes) -> float:
    start = time.perf_counter()
    response = session.post(url + "/v1/gradients", data=body, headers={"Content-Type": "application/json"}, timeout=60)
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code} {response.text[:300]}")
    return elapsed


def first_formula(rounds: int, log_dir: Path) -> dict:
    """A 1-worker server per round: its first request ever is a broadcasting formula."""
    first, steady = [], []
    for _ in range(rounds):
        server = Server("service", workers=1, log_dir=log_dir).start()
        try:
            server.wait_workers(1)
            with requests.Session() as session:
                session.get(server.url + "/healthz", timeout=10)  # connection machinery of the client, not the worker
                first.append(_post_ms(session, server.url, FORMULA))
                steady.append(statistics.median(_post_ms(session, server.url, FORMULA) for _ in range(100)))
        finally:
            server.stop()
    return {
        "first_ms": first,
        "steady_ms": steady,
        "first_ms_median": statistics.median(first),
        "steady_ms_median": statistics.median(steady),
        "first/steady": statistics.median(first) / statistics.median(steady),
    }


def pss_after_mixed_load(rounds: int, seconds: float, log_dir: Path) -> dict:
    """2 workers (the deploy config): PSS idle, then after wrk load of neurons and broadcasting formulas."""
    idle, loaded, big = [], [], []
    bodies = [workloads.neuron_body(), *FORMULAS, FORMULA]
    large = workloads.per_sample_body(1_000_000)
    for _ in range(rounds):
        server = Server("service", workers=2, log_dir=log_dir).start()
        try:
            server.wait_workers(2)
            idle.append(server.pss_mib())
            wrk.run(server.url, "/v1/gradients", bodies, 8, seconds)
            server.wait_workers(2)
            loaded.append(server.pss_mib())
            with requests.Session() as session:
                for _ in range(4):  # both workers answer 1,000,000-sample requests
                    _post_ms(session, server.url, large)
            time.sleep(0.5)
            server.wait_workers(2)
            big.append(server.pss_mib())
        finally:
            server.stop()

    def med(rows):
        return {part: statistics.median(r[part] for r in rows) for part in rows[0]}

    return {
        "idle": med(idle),
        "after_mixed_load": med(loaded),
        "after_1m_samples": med(big),
        "raw": {"idle": idle, "after_mixed_load": loaded, "after_1m_samples": big},
    }


def measure(rounds: int, seconds: float, log_dir: Path) -> dict:
    return {
        "rounds": rounds,
        "first_formula": first_formula(rounds, log_dir),
        "pss": pss_after_mixed_load(rounds, seconds, log_dir),
    }


def report(result: dict) -> str:
    f, p = result["first_formula"], result["pss"]

    def parts(v: dict) -> str:
        return f"{v['total']:.0f} ({v['master']:.0f} + {v.get('worker1', 0):.0f} + {v.get('worker2', 0):.0f})"

    return "\n".join(
        [
            f"\n### Bounded cost ({result['rounds']} rounds; medians)\n",
            "| measurement | value |",
            "|---|---|",
            f"| first formula request on a fresh worker | {f['first_ms_median']:.1f} ms (rounds: "
            f"{', '.join(f'{v:.1f}' for v in f['first_ms'])}) |",
            f"| the same request, median of the next 100 | {f['steady_ms_median']:.1f} ms "
            f"(first/steady {f['first/steady']:.2f}x) |",
            f"| PSS idle, MiB (master + workers) | {parts(p['idle'])} |",
            f"| PSS after mixed formula + neuron load | {parts(p['after_mixed_load'])} |",
            f"| PSS after 1,000,000-sample requests | {parts(p['after_1m_samples'])} |",
        ]
    )


if __name__ == "__main__":
    import sys
    import tempfile

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print(report(measure(rounds, 3.0, Path(tempfile.mkdtemp(prefix="gradsvc-bench-")))))
