"""Sizing a course: 2,000 students' answers to a week's problem set, against one 2-worker server.

The problem set is what a deep-learning course assigns (PROBLEM_SET): the tutorial neuron, a neuron with a
feature vector, a derivative formula on a domain, the tutorial's mean(x**2) and a two-layer network. Every
student answers every problem: most answers right to 5-8 significant digits, ~20 % of the students off in one answer,
~5 % missing one, derivative formulas in equivalent and wrong forms; every body is different.

Measured, on the deploy config with 2 workers and the default caches:
- each problem alone, one /v1/check per answer (wrk, 8 connections), and the whole set mixed in random order;
- the whole set through /v1/batch, 100 answers to one problem per batch (2 connections, one per worker);
- the mixed set and the batches again through the repo's nginx gateway (deploy/nginx/render.py) with its
  per-client rate limit out of the way, and the mixed set at the default limit (20 r/s per client address: an
  autograder behind one address), counting the 429s;
- PSS of master and workers after start and after every round, and the reference cache's hits and misses from /metrics.
docs/operate.md ("Sizing a course") turns these rates into workers for a course's deadline night.
"""

from __future__ import annotations

import copy
import random
import re
import shutil
import tempfile
from pathlib import Path

import orjson
import requests

from . import realworkload
from .gateway import Gateway
from .realworkload import log
from .servers import Server

CHECKS_PER_BATCH = 100
CONNECTIONS = 8
UNLIMITED_RATE = "100000r/s"  # the gateway's per-client rate limit out of the way
DEFAULT_LIMIT_LABEL = "gateway, default 20 r/s per client: mixed"

NEURON = {"model": {"kind": "neuron"}, "inputs": {"x": 6.7, "y": 0, "w": 1, "b": 0}}
# name -> (problem fields, submission template; numbers in it are replaced by each student's answers,
# strings are derivative formulas picked from FORMULA_ANSWERS)
PROBLEM_SET: dict[str, tuple[dict, dict]] = {
    "tutorial neuron": (NEURON, {"loss": 0.0, "gradients": {"w": 0.0, "b": 0.0}}),
    "neuron, 3 features": (
        {
            "model": {"kind": "neuron"},
            "inputs": {"x": [0.5, -1.0, 2.0], "y": 1, "w": [0.1, -0.2, 0.3], "b": 0.05},
        },
        {"loss": 0.0, "gradients": {"w": [0.0, 0.0, 0.0], "b": 0.0}},
    ),
    "sin(x**2), formula on a domain": (
        {"model": {"kind": "expression", "name": "sin_square"}, "domain": {"x": [-2, 2]}, "n_points": 4, "seed": 7},
        {"gradient_formulas": {"x": "2*x*cos(x**2)"}},
    ),
    "mean(x**2)": (
        {"model": {"kind": "expression", "formula": "mean(x**2)"}, "inputs": {"x": [1.0, 2.0, 3.0]}},
        {"loss": 0.0, "gradients": {"x": [0.0, 0.0, 0.0]}},
    ),
    "two-layer network": (
        {
            "model": {
                "kind": "network",
                "layout": "cs231n",
                "loss": {"type": "softmax_cross_entropy"},
                "layers": [
                    {"type": "linear", "out_features": 4, "activation": "relu"},
                    {"type": "linear", "out_features": 3},
                ],
                "init": {"scheme": "numpy_legacy", "seed": 0, "std": 0.1},
                "generate": {"X": {"scheme": "numpy_legacy", "seed": 1, "shape": [5, 3]}},
            },
            "inputs": {"y": [0, 1, 2, 1, 0]},
        },
        {"loss": 0.0, "gradients": {"b2": [0.0, 0.0, 0.0], "b1": [0.0, 0.0, 0.0, 0.0]}},
    ),
}
FORMULA_ANSWERS = ["2*x*cos(x**2)", "cos(x**2)*2*x", "2*x*cos(x*x)", "2*x*sin(x**2)", "cos(x**2)", "2*cos(x**2)*x"]


def _numbers(template, path=()):
    """(path, value) of every number or list of numbers in a submission template."""
    if isinstance(template, dict):
        for k, v in template.items():
            yield from _numbers(v, (*path, k))
    elif isinstance(template, (int, float, list)):
        yield path, template


def _parent(d: dict, path: tuple) -> dict:
    """The dict that holds the submission value at `path` (under the key path[-1])."""
    for k in path[:-1]:
        d = d[k]
    return d


def expected_answers(url: str) -> dict[str, dict[tuple, object]]:
    """Each problem's right numbers, as the service grades them (from a check of the template's zeros)."""
    out = {}
    for name, (problem, template) in PROBLEM_SET.items():
        res = requests.post(url + "/v1/check", json={**problem, "submission": template}, timeout=30)
        res.raise_for_status()
        by_name = {c["name"]: c["expected"] for c in res.json()["checks"]}
        out[name] = {path: by_name[".".join(path)] for path, _ in _numbers(template)}
    return out


def _answer(rng: random.Random, right, off: bool, tag: float):
    """A student's version of a right number (or list): 5-8 significant digits (within the default rtol of 1e-4),
    off by up to 50 % if `off`."""
    if isinstance(right, list):
        return [_answer(rng, r, off and i == 0, tag if i == 0 else 0.0) for i, r in enumerate(right)]
    value = float(f"{right:.{rng.randint(5, 8)}g}")
    if off:
        value = round(value * rng.uniform(0.5, 1.5), 4)
    return value + tag


def student_bodies(expected: dict, n_students: int, seed: int = 0) -> dict[str, list[dict]]:
    """For each problem, n_students different /v1/check bodies."""
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {name: [] for name in PROBLEM_SET}
    for i in range(n_students):
        for name, (problem, template) in PROBLEM_SET.items():
            submission = copy.deepcopy(template)
            paths = list(expected[name])
            r = rng.random()
            wrong = rng.choice(paths) if paths and r < 0.2 else None
            for j, path in enumerate(paths):
                # i * 1e-9 on the first number: no two students send the same body
                answer = _answer(rng, expected[name][path], path == wrong, i * 1e-9 if j == 0 else 0)
                _parent(submission, path)[path[-1]] = answer
            if "gradient_formulas" in submission:
                submission["gradient_formulas"]["x"] = rng.choice(FORMULA_ANSWERS) + " " * (i % 7)
            if paths and r > 0.95:  # this student left the last answer out
                del _parent(submission, paths[-1])[paths[-1][-1]]
            out[name].append({**problem, "submission": submission})
    return out


def cache_lookups(url: str) -> dict[str, float]:
    text = requests.get(url + "/metrics", timeout=10).text
    found = re.findall(r'^gradsvc_reference_cache_lookups_total\{result="(\w+)"\} ([0-9.e+]+)$', text, re.M)
    return {k: float(v) for k, v in found}


def run(rounds: int, seconds: float, log_dir: Path, n_students: int = 2000) -> dict:
    # metrics summed over both workers (prometheus_client's multiprocess mode, as the image runs it)
    metrics_dir = Path(tempfile.mkdtemp(prefix="gradsvc-course-metrics-"))
    server = Server("service", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, log_dir=log_dir)
    pss: list[dict] = []
    gateways: list[Gateway] = []
    try:
        server.start()
        server.wait_workers(2)
        expected = expected_answers(server.url)
        bodies = {name: [orjson.dumps(b) for b in bs] for name, bs in student_bodies(expected, n_students).items()}
        mixed = [b for bs in bodies.values() for b in bs]
        random.Random(1).shuffle(mixed)
        batches = [
            orjson.dumps({"jobs": [{"check": orjson.loads(b)} for b in bs[i : i + CHECKS_PER_BATCH]]})
            for bs in bodies.values()
            for i in range(0, len(bs), CHECKS_PER_BATCH)
        ]
        random.Random(2).shuffle(batches)
        steps = [(f"check: {name}", "/v1/check", bs, CONNECTIONS, 1) for name, bs in bodies.items()]
        steps += [
            ("check: the whole set, mixed", "/v1/check", mixed, CONNECTIONS, 1),
            ("batch x100: the whole set", "/v1/batch", batches, 2, CHECKS_PER_BATCH),
        ]
        steps = [(label, server.url, *rest) for label, *rest in steps]
        upstream = [server.url.removeprefix("http://")]
        try:  # as deployed: through the nginx gateway, its per-client limit raised and at its default
            gateways.append(Gateway(None, upstream, rate=UNLIMITED_RATE, burst=100_000))
            gateways.append(Gateway(None, upstream))
        except RuntimeError as err:
            log(f"  course: no gateway rows ({err})")
        if len(gateways) == 2:
            raised, default = gateways
            steps += [
                ("gateway: the whole set, mixed", raised.url, "/grad/v1/check", mixed, CONNECTIONS, 1),
                ("gateway: batch x100, the whole set", raised.url, "/grad/v1/batch", batches, 2, CHECKS_PER_BATCH),
                (DEFAULT_LIMIT_LABEL, default.url, "/grad/v1/check", mixed, CONNECTIONS, 1),
            ]
        pss.append(server.pss_mib())  # started, the five problems not yet asked
        runs = realworkload.interleaved(steps, rounds, seconds, lambda: pss.append(server.pss_mib()))
        lookups = cache_lookups(server.url)
    finally:
        for gateway in gateways:
            gateway.stop()
        server.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return {
        "rounds": rounds,
        "seconds": seconds,
        "n_students": n_students,
        "problems": list(PROBLEM_SET),
        "runs": runs,
        "summary": realworkload.medians(runs),
        "pss_mib": pss,
        "reference_cache_lookups": lookups,
    }


def report(result: dict, fmt_table) -> str:
    rows = [
        [label, f"{s['per_s']:,.0f}", f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}", str(s["errors"])]
        for label, s in result["summary"].items()
    ]
    peak = max(p["total"] for p in result["pss_mib"])
    limited = result["runs"].get(DEFAULT_LIMIT_LABEL)
    refused = (
        f"; at the gateway's default per-client limit {sum(r['non_2xx'] for r in limited)} of "
        f"{sum(r['requests'] for r in limited)} checks from one address were answered 429"
        if limited
        else ""
    )
    hits = result["reference_cache_lookups"]
    total = sum(hits.values()) or 1
    return (
        f"### Sizing a course: {result['n_students']} students x {len(result['problems'])} problems, one 2-worker "
        f"server ({result['rounds']} interleaved rounds x {result['seconds']} s; medians)\n\n"
        + fmt_table(["workload", "checks/s", "p50 ms", "p99 ms", "errors"], rows)
        + f"\n\nPSS master + 2 workers: {result['pss_mib'][0]['total']:.0f} MiB after start, at most "
        f"{peak:.0f} MiB after a round; reference cache: {hits.get('hit', 0):.0f} hits, {hits.get('miss', 0):.0f} "
        f"misses ({hits.get('hit', 0) / total:.1%} hits){refused}\n"
    )
