"""The real workload: a class's answers graded against one problem, single neuron requests, the image.

- 1000 different students' answers to the tutorial neuron problem, one POST each: /v1/check against a naive
  Flask+torch grading handler (bench/baselines/naive_grading.py) run as its author would (`gunicorn -w 2`),
  and the same 1000 answers through /v1/batch, 100 checks per batch. The service also runs with its
  reference cache off (REFERENCE_CACHE_ENTRIES=0), to show what the cache buys.
- A single /v1/gradients neuron request with the default graph against the naive handler run both ways:
  `gunicorn -w 2` (no config) and under the deploy config.
- The service's floor (bench/baselines/floor.py: the service's app with an endpoint answering a constant):
  floor / naive is the ceiling of every ratio above, the most a request that does no work at all could reach.
All servers have 2 workers; rounds are interleaved (the order rotates) and ratios are taken within a round.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import orjson

from . import workloads, wrk
from .servers import Server

CHECKS_PER_BATCH = 100
CONNECTIONS = 8


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(values):
    return statistics.median(values) if values else float("nan")


def _servers(log_dir: Path) -> dict[str, Server]:
    return {
        "service": Server("service", log_dir=log_dir),
        "service, cache off": Server("service", env={"REFERENCE_CACHE_ENTRIES": "0"}, log_dir=log_dir),
        "naive, gunicorn -w 2": Server("naive", deploy_config=False, log_dir=log_dir),
        "naive, deploy config": Server("naive", log_dir=log_dir),
        "naive grading, gunicorn -w 2": Server("naive_grading", deploy_config=False, log_dir=log_dir),
        "service floor": Server("floor", log_dir=log_dir),
    }


def run(rounds: int, seconds: float, log_dir: Path, n_students: int = 1000) -> dict:
    checks = workloads.student_checks(n_students)
    check_bodies = [orjson.dumps(c) for c in checks]
    batch_bodies = [
        orjson.dumps({"jobs": [{"check": c} for c in checks[i : i + CHECKS_PER_BATCH]]})
        for i in range(0, len(checks), CHECKS_PER_BATCH)
    ]
    neuron = [workloads.neuron_body()]
    # (label, server, path, bodies, connections, checks or jobs per request)
    steps = [
        ("check: service /v1/check", "service", "/v1/check", check_bodies, CONNECTIONS, 1),
        ("check: service /v1/check, cache off", "service, cache off", "/v1/check", check_bodies, CONNECTIONS, 1),
        ("check: service /v1/batch x100", "service", "/v1/batch", batch_bodies, 2, CHECKS_PER_BATCH),
        (
            "check: service /v1/batch x100, cache off",
            "service, cache off",
            "/v1/batch",
            batch_bodies,
            2,
            CHECKS_PER_BATCH,
        ),
        ("check: naive grading handler", "naive grading, gunicorn -w 2", "/v1/check", check_bodies, CONNECTIONS, 1),
        ("gradients: service", "service", "/v1/gradients", neuron, CONNECTIONS, 1),
        ("gradients: naive, gunicorn -w 2", "naive, gunicorn -w 2", "/v1/gradients", neuron, CONNECTIONS, 1),
        ("gradients: naive, deploy config", "naive, deploy config", "/v1/gradients", neuron, CONNECTIONS, 1),
        ("floor: service, constant answer", "service floor", "/v1/floor", neuron, CONNECTIONS, 1),
    ]
    servers = _servers(log_dir)
    try:
        for s in servers.values():
            s.spawn()
        for s in servers.values():
            s.wait_ready()
            s.wait_workers(2)
        urls = {label: servers[name].url for label, name, *_ in steps}
        runs = interleaved([(label, urls[label], *rest) for label, _name, *rest in steps], rounds, seconds)
    finally:
        for s in servers.values():
            s.stop()
    return {"rounds": rounds, "seconds": seconds, "n_students": n_students, "runs": runs, "summary": summarize(runs)}


def interleaved(steps, rounds: int, seconds: float, after_round=None) -> dict[str, list[dict]]:
    """Each step (label, url, path, bodies, connections, checks or jobs per request) once to warm the workers up
    (discarded), then `rounds` rounds of bounded wrk runs, the order rotating every round; after_round() after
    each. Returns every run by label, with `per_s` (checks or jobs per second answered 2xx)."""
    for _label, url, path, bodies, conns, _ in steps:
        wrk.run(url, path, bodies, conns, 1, timeout=30)
    runs: dict[str, list[dict]] = {label: [] for label, *_ in steps}
    for r in range(rounds):
        k = r % len(steps)
        for label, url, path, bodies, conns, per_request in steps[k:] + steps[:k]:
            res = wrk.run(url, path, bodies, conns, seconds, timeout=30)
            answered = (res["requests"] - res["non_2xx"]) / res["requests"] if res["requests"] else 0.0
            res["per_s"] = res["rps"] * answered * per_request  # a refused request (a 429) is no throughput
            runs[label].append(res)
            log(
                f"  round {r + 1} {label:<42} {res['per_s']:8.1f}/s  p99 {res['p99_ms']:7.1f} ms"
                f"  errors {res['socket_errors']}/{res['non_2xx']}"
            )
        if after_round is not None:
            after_round()
    return runs


def medians(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per label: the median rate and latencies over the rounds, and all errors."""
    return {
        label: {
            "per_s": median([x["per_s"] for x in v]),
            "p50_ms": median([x["p50_ms"] for x in v]),
            "p99_ms": median([x["p99_ms"] for x in v]),
            "errors": sum(x["socket_errors"] + x["non_2xx"] for x in v),
        }
        for label, v in runs.items()
    }


def summarize(runs: dict[str, list[dict]]) -> dict:
    def ratio(a: str, b: str, key: str = "per_s") -> float:
        n = min(len(runs[a]), len(runs[b]))
        return median([runs[a][i][key] / runs[b][i][key] for i in range(n)])

    naive_check = "check: naive grading handler"
    out = medians(runs)
    naive_w2, naive_deploy = "gradients: naive, gunicorn -w 2", "gradients: naive, deploy config"
    ratios = {
        "/v1/check vs naive grading": ratio("check: service /v1/check", naive_check),
        "/v1/check cache off vs naive grading": ratio("check: service /v1/check, cache off", naive_check),
        "/v1/batch x100 vs naive grading": ratio("check: service /v1/batch x100", naive_check),
        "/v1/batch x100 cache off vs naive grading": ratio("check: service /v1/batch x100, cache off", naive_check),
        "gradients vs naive -w 2": ratio("gradients: service", naive_w2),
        "gradients vs naive deploy config": ratio("gradients: service", naive_deploy),
        "naive deploy config vs naive -w 2": ratio(naive_deploy, naive_w2),
        "gradients p99 vs naive -w 2 p99": ratio("gradients: service", naive_w2, "p99_ms"),
        "gradients p99 vs naive deploy config p99": ratio("gradients: service", naive_deploy, "p99_ms"),
        # ceilings: what any endpoint of the service could reach if its own work took no time at all
        "ceiling: service floor vs naive grading": ratio("floor: service, constant answer", naive_check),
        "ceiling: service floor vs naive -w 2": ratio("floor: service, constant answer", naive_w2),
        "ceiling: service floor p99 vs naive -w 2 p99": ratio("floor: service, constant answer", naive_w2, "p99_ms"),
    }
    return {"servers": out, "ratios": ratios}


def report(result: dict, fmt_table) -> str:
    s = result["summary"]
    lines = [
        f"### Real workload: {result['n_students']} students' answers to one problem, single neuron requests "
        f"({result['rounds']} interleaved rounds x {result['seconds']} s; medians)\n"
    ]
    rows = [
        [label, f"{v['per_s']:.0f}", f"{v['p50_ms']:.1f}", f"{v['p99_ms']:.1f}", v["errors"]]
        for label, v in s["servers"].items()
    ]
    lines.append(fmt_table(["workload", "checks or requests /s", "p50 ms", "p99 ms", "errors"], rows))
    lines.append("")
    lines.append(
        fmt_table(["ratio (median of per-round ratios)", "value"], [[k, f"{v:.2f}x"] for k, v in s["ratios"].items()])
    )
    return "\n".join(lines)
