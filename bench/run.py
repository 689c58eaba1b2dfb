"""The benchmark: the service against a bare Flask endpoint and a naive Flask+torch handler, side by side.

Every server is gunicorn with deploy/gunicorn.conf.py (2 sync workers, WEB_CONCURRENCY=2) on 127.0.0.1.
Load comes from wrk (a Lua script POSTs the bodies); every load loop is bounded in time and count.
The machine is shared and noisy, so each measurement is repeated over interleaved rounds (the order of
the servers rotates every round) and the tables report medians and ratios taken within the same run.

    python -m bench                 # everything, ~8 minutes; tables on stdout, raw data in bench/results.json
    python -m bench --quick         # CI smoke: one short round of each section, ~1 minute
    python -m bench --plots         # also draw docs/throughput.png and docs/cost_per_sample.png
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import orjson
import requests

from . import bounded, course, image, realworkload, workloads, wrk
from .servers import ROOT, Server

TARGETS = ("service", "naive", "bare")
SAMPLE_VARIANTS = (  # (label, server, reduction)
    ("service, per-sample (reduction none)", "service", "none"),
    ("service, mean", "service", "mean"),
    ("naive, mean", "naive", "mean"),
)


def median(values):
    return statistics.median(values) if values else float("nan")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- sections ---------------------------------------------------------------------------------------


def throughput(servers: dict, concurrencies: list[int], rounds: int, seconds: float) -> dict:
    """Single neuron requests (graph included, the default) at each concurrency, servers interleaved."""
    body = workloads.neuron_body()
    runs: dict = {t: {c: [] for c in concurrencies} for t in TARGETS}
    for r in range(rounds):
        for c in concurrencies:
            order = TARGETS[r % 3 :] + TARGETS[: r % 3]
            for t in order:
                res = wrk.run(servers[t].url, "/v1/gradients", [body], c, seconds)
                runs[t][c].append(res)
                log(
                    f"  round {r + 1} c={c:<3} {t:<8} {res['rps']:8.1f} req/s  p99 {res['p99_ms']:7.1f} ms"
                    f"  errors {res['socket_errors']}/{res['non_2xx']}"
                )
    return runs


def summarize_throughput(runs: dict, concurrencies: list[int]) -> list[dict]:
    rows = []
    for c in concurrencies:
        row = {"c": c}
        for t in TARGETS:
            row[f"{t}_rps"] = median([x["rps"] for x in runs[t][c]])
            row[f"{t}_p50"] = median([x["p50_ms"] for x in runs[t][c]])
            row[f"{t}_p99"] = median([x["p99_ms"] for x in runs[t][c]])
            row[f"{t}_errors"] = sum(x["socket_errors"] + x["non_2xx"] for x in runs[t][c])
        # ratios per round (same round = same background load), then the median of those
        n = min(len(runs[t][c]) for t in TARGETS)
        row["service/naive"] = median([runs["service"][c][i]["rps"] / runs["naive"][c][i]["rps"] for i in range(n)])
        row["service/bare"] = median([runs["service"][c][i]["rps"] / runs["bare"][c][i]["rps"] for i in range(n)])
        row["naive/bare"] = median([runs["naive"][c][i]["rps"] / runs["bare"][c][i]["rps"] for i in range(n)])
        rows.append(row)
    return rows


def timed_post(session: requests.Session, url: str, body: bytes) -> float:
    """End to end: send the encoded body, receive and parse the response; seconds."""
    start = time.perf_counter()
    r = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    orjson.loads(r.content)
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")
    return elapsed


def samples(servers: dict, sizes: list[int], rounds: int) -> dict:
    """Seconds per request against the number of samples in it, one request at a time (concurrency 1)."""
    bodies = {(n, red): workloads.per_sample_body(n, red) for n in sizes for red in ("none", "mean")}
    out: dict = {label: {n: [] for n in sizes} for label, _, _ in SAMPLE_VARIANTS}
    session = requests.Session()
    for r in range(rounds):
        for n in sizes:
            variants = SAMPLE_VARIANTS[r % 3 :] + SAMPLE_VARIANTS[: r % 3]
            for label, server, red in variants:
                url = servers[server].url + "/v1/gradients"
                reps = max(1, min(50, 20_000 // n))  # small bodies: a median over several requests
                times = [timed_post(session, url, bodies[(n, red)]) for _ in range(reps)]
                out[label][n].append(median(times))
            log(
                f"  round {r + 1} n={n:<8} "
                + "  ".join(f"{srv}/{rd:<5} {out[lbl][n][-1] * 1000:8.1f} ms" for lbl, srv, rd in SAMPLE_VARIANTS)
            )
    return out


def summarize_samples(raw: dict, sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        row = {"n": n}
        for label, _, _ in SAMPLE_VARIANTS:
            s = median(raw[label][n])
            row[label] = {"seconds": s, "samples_per_s": n / s, "us_per_sample": s / n * 1e6}
        rows.append(row)
    return rows


def batch(server: Server, n_jobs: int, rounds: int, seconds: float) -> dict:
    """/v1/batch of n mixed jobs (2 connections: one per worker) against the same jobs as single requests."""
    jobs = workloads.mixed_jobs(n_jobs)
    singles = [orjson.dumps(j) for j in jobs]
    mixed = workloads.batch_body(jobs)
    homogeneous = workloads.batch_body(
        [
            j
            for j in workloads.mixed_jobs(n_jobs * 10 // 7 + 10)
            if j["model"]["kind"] == "neuron" and not isinstance(j["inputs"]["x"], list)
        ][:n_jobs]
    )
    out = {"single": [], "batch_mixed": [], "batch_neuron": []}
    for r in range(rounds):
        steps = [
            ("single", singles, 8, 1),
            ("batch_mixed", [mixed], 2, n_jobs),
            ("batch_neuron", [homogeneous], 2, n_jobs),
        ]
        for name, bodies, conns, per_request in steps[r % 3 :] + steps[: r % 3]:
            path = "/v1/gradients" if name == "single" else "/v1/batch"
            res = wrk.run(server.url, path, bodies, conns, seconds, timeout=30)
            res["jobs_per_s"] = res["rps"] * per_request
            out[name].append(res)
            log(
                f"  round {r + 1} {name:<13} {res['jobs_per_s']:9.1f} jobs/s  ({res['requests']} requests, "
                f"p50 {res['p50_ms']:.1f} ms, errors {res['socket_errors']}/{res['non_2xx']})"
            )
    n = min(len(v) for v in out.values())
    return {
        "n_jobs": n_jobs,
        "runs": out,
        "single_jobs_per_s": median([x["jobs_per_s"] for x in out["single"]]),
        "batch_mixed_jobs_per_s": median([x["jobs_per_s"] for x in out["batch_mixed"]]),
        "batch_neuron_jobs_per_s": median([x["jobs_per_s"] for x in out["batch_neuron"]]),
        "mixed/single": median(
            [out["batch_mixed"][i]["jobs_per_s"] / out["single"][i]["jobs_per_s"] for i in range(n)]
        ),
        "neuron/single": median(
            [out["batch_neuron"][i]["jobs_per_s"] / out["single"][i]["jobs_per_s"] for i in range(n)]
        ),
        "batch_p50_ms": median([x["p50_ms"] for x in out["batch_mixed"]]),
    }


OLD_RECYCLING = {
    "GUNICORN_MAX_REQUESTS": "1000",
    "GUNICORN_MAX_REQUESTS_JITTER": "100",
}  # the deploy config before 20000
RECYCLING_MODES = {
    "default": {},
    "max_requests 1000": OLD_RECYCLING,
    # a leaving worker finalizing Python, as before deploy/gunicorn.conf.py's worker_exit
    "max_requests 1000, full exit": {**OLD_RECYCLING, "GUNICORN_FAST_EXIT": "0"},
}


def replacement_gaps_ms(log_path: Path | None) -> list[float]:
    """Per worker that left: ms from its "Worker exiting" line to the next "Booting worker" line (its
    replacement, forked once the master has reaped it)."""
    if log_path is None or not log_path.exists():
        return []
    gaps, exiting = [], []
    for line in log_path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        message = entry.get("message", "")
        if message.startswith("Worker exiting"):
            exiting.append(datetime.fromisoformat(entry["time"]))
        elif message.startswith("Booting worker") and exiting:
            gaps.append((datetime.fromisoformat(entry["time"]) - exiting.pop(0)).total_seconds() * 1000)
    return gaps


def recycling(rounds: int, seconds: float, log_dir: Path) -> dict:
    """Worker recycling: the deploy default (20000 +- 2000 requests) against the old 1000 +- 100, and that old
    setting with a leaving worker's full Python exit (GUNICORN_FAST_EXIT=0)."""
    body = workloads.neuron_body()
    servers = {}
    try:
        for app in ("service", "naive"):
            for mode, env in RECYCLING_MODES.items():
                servers[app, mode] = Server(app, env=env, log_dir=log_dir).start()
        for s in servers.values():
            s.wait_workers(2)
            wrk.run(s.url, "/v1/gradients", [body], 4, 1)
        runs: dict = {f"{a} / {m}": [] for a, m in servers}
        keys = list(servers)
        for r in range(rounds):
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                res = wrk.run(servers[key].url, "/v1/gradients", [body], 8, seconds)
                runs[f"{key[0]} / {key[1]}"].append(res)
                log(f"  round {r + 1} {key[0]:<8} {key[1]:<29} {res['rps']:8.1f} req/s  p99 {res['p99_ms']:7.1f} ms")
    finally:
        for s in servers.values():
            s.stop()
    gaps = {f"{a} / {m}": replacement_gaps_ms(s.log_path) for (a, m), s in servers.items()}
    out = {
        k: {
            "rps": median([x["rps"] for x in v]),
            "p99_ms": median([x["p99_ms"] for x in v]),
            "replacement_gap_ms": median(gaps[k]) if gaps[k] else None,
            "replacements": len(gaps[k]),
        }
        for k, v in runs.items()
    }
    n = len(runs["service / default"])
    for app in ("service", "naive"):
        a, b, c = (runs[f"{app} / {mode}"] for mode in RECYCLING_MODES)
        out[f"{app}: default / max_requests 1000"] = median([x["rps"] / y["rps"] for x, y in zip(a, b, strict=True)])
        out[f"{app}: fast exit / full exit, max_requests 1000"] = median(
            [x["rps"] / y["rps"] for x, y in zip(b, c, strict=True)]
        )
    for mode in RECYCLING_MODES:
        out[f"service/naive, {mode}"] = median(
            [runs[f"service / {mode}"][i]["rps"] / runs[f"naive / {mode}"][i]["rps"] for i in range(n)]
        )
    return {"rounds": rounds, "seconds": seconds, "runs": runs, "gaps_ms": gaps, "summary": out}


def memory_and_startup(rounds: int, seconds: float, log_dir: Path, preload_modes: tuple[str, ...]) -> dict:
    """PSS (master + 2 workers) after load, cold start, and a worker's restart-to-ready, for each preload mode."""
    result: dict = {}
    neuron = workloads.neuron_body()
    big = workloads.per_sample_body(1_000_000)
    for mode in preload_modes:
        env = {"GUNICORN_PRELOAD": mode}
        rows = {"cold_start_s": [], "worker_restart_s": [], "pss_idle": [], "pss_after_load": [], "pss_after_big": []}
        for r in range(rounds):
            srv = Server("service", env=env, log_dir=log_dir)
            srv.spawn()
            try:
                rows["cold_start_s"].append(srv.wait_ready())
                srv.wait_workers(2)
                rows["pss_idle"].append(srv.pss_mib())
                wrk.run(srv.url, "/v1/gradients", [neuron], 8, seconds)
                srv.wait_workers(2)  # quiescent: not while a recycled worker is finalizing (it un-shares pages)
                rows["pss_after_load"].append(srv.pss_mib())
                session = requests.Session()
                for _ in range(4):  # both workers see a 1,000,000-sample request
                    timed_post(session, srv.url + "/v1/gradients", big)
                srv.wait_workers(2)
                rows["pss_after_big"].append(srv.pss_mib())
            finally:
                srv.stop()
            # a worker's start-to-ready: the only worker of a 1-worker server is killed, time until /readyz is 200
            one = Server("service", workers=1, env=env, log_dir=log_dir).start()
            try:
                one.wait_workers(1)
                (old,) = one.worker_pids()
                start = time.monotonic()
                os.kill(old, signal.SIGKILL)  # our own child process
                while True:
                    try:
                        if requests.get(one.url + "/readyz", timeout=10).status_code == 200:
                            break
                    except requests.RequestException:
                        pass
                    if time.monotonic() - start > 30:
                        raise RuntimeError("worker did not come back within 30 s")
                    time.sleep(0.01)
                rows["worker_restart_s"].append(time.monotonic() - start)
            finally:
                one.stop()
            log(
                f"  preload={mode} round {r + 1}: cold start {rows['cold_start_s'][-1]:.2f} s, worker restart "
                f"{rows['worker_restart_s'][-1]:.2f} s, PSS idle {rows['pss_idle'][-1]['total']:.0f} / after load "
                f"{rows['pss_after_load'][-1]['total']:.0f} / after 1M-sample requests "
                f"{rows['pss_after_big'][-1]['total']:.0f} MiB"
            )
        result[mode] = {
            "raw": rows,
            "cold_start_s": median(rows["cold_start_s"]),
            "worker_restart_s": median(rows["worker_restart_s"]),
            **{
                k: {part: median([p[part] for p in rows[k]]) for part in rows[k][0]}
                for k in ("pss_idle", "pss_after_load", "pss_after_big")
            },
        }
    return result


# --- report -----------------------------------------------------------------------------------------


def fmt_table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join(
        [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]]
    )


def report(results: dict) -> str:
    out = []
    if "throughput" in results:
        rows = results["throughput"]["summary"]
        out.append(
            f"### Single neuron request, graph included ({results['throughput']['rounds']} rounds x "
            f"{results['throughput']['seconds']} s per point; medians)\n"
        )
        out.append(
            fmt_table(
                [
                    "conns",
                    "service req/s",
                    "naive req/s",
                    "bare req/s",
                    "service/naive",
                    "service/bare",
                    "naive/bare",
                    "p99 service ms",
                    "p99 naive ms",
                    "p99 bare ms",
                    "errors s/n/b",
                ],
                [
                    [
                        r["c"],
                        f"{r['service_rps']:.0f}",
                        f"{r['naive_rps']:.0f}",
                        f"{r['bare_rps']:.0f}",
                        f"{r['service/naive']:.2f}x",
                        f"{r['service/bare']:.2f}x",
                        f"{r['naive/bare']:.2f}x",
                        f"{r['service_p99']:.1f}",
                        f"{r['naive_p99']:.1f}",
                        f"{r['bare_p99']:.1f}",
                        f"{r['service_errors']}/{r['naive_errors']}/{r['bare_errors']}",
                    ]
                    for r in rows
                ],
            )
        )
    if "samples" in results:
        rows = results["samples"]["summary"]
        out.append(
            f"\n### Samples per request, one request at a time ({results['samples']['rounds']} rounds; "
            "medians, end to end)\n"
        )
        headers = ["samples"]
        for label, _, _ in SAMPLE_VARIANTS:
            headers += [f"{label}: s", "samples/s", "us/sample"]
        out.append(
            fmt_table(
                headers,
                [
                    [f"{r['n']:,}"]
                    + sum(
                        (
                            [
                                f"{r[label]['seconds']:.4f}",
                                f"{r[label]['samples_per_s']:,.0f}",
                                f"{r[label]['us_per_sample']:.2f}",
                            ]
                            for label, _, _ in SAMPLE_VARIANTS
                        ),
                        [],
                    )
                    for r in rows
                ],
            )
        )
    if "batch" in results:
        b = results["batch"]
        out.append(
            f"\n### /v1/batch of {b['n_jobs']} jobs vs the same jobs as single requests "
            f"({b['rounds']} rounds; medians)\n"
        )
        out.append(
            fmt_table(
                ["workload", "jobs/s", "vs single"],
                [
                    ["single requests (8 connections)", f"{b['single_jobs_per_s']:.0f}", "1.00x"],
                    [
                        f"/v1/batch, {b['n_jobs']} mixed jobs (2 connections)",
                        f"{b['batch_mixed_jobs_per_s']:.0f}",
                        f"{b['mixed/single']:.2f}x",
                    ],
                    [
                        f"/v1/batch, {b['n_jobs']} neuron jobs (2 connections)",
                        f"{b['batch_neuron_jobs_per_s']:.0f}",
                        f"{b['neuron/single']:.2f}x",
                    ],
                ],
            )
        )
    if "recycling" in results:
        rc = results["recycling"]["summary"]
        out.append(
            "\n### Worker recycling: default (20000 +- 2000) vs max_requests 1000 +- 100 at 8 connections "
            f"({results['recycling']['rounds']} rounds; medians)\n"
        )
        out.append(
            fmt_table(
                ["server", "req/s", "p99 ms", "replacement gap ms (median)", "replacements"],
                [
                    [
                        k,
                        f"{v['rps']:.0f}",
                        f"{v['p99_ms']:.1f}",
                        "-" if v["replacement_gap_ms"] is None else f"{v['replacement_gap_ms']:.0f}",
                        str(v["replacements"]),
                    ]
                    for k, v in rc.items()
                    if isinstance(v, dict)
                ],
            )
        )
        out.append("\n" + ", ".join(f"{k}: {v:.2f}x" for k, v in rc.items() if not isinstance(v, dict)))
    if "memory" in results and "modes" in results["memory"]:
        m = results["memory"]
        out.append(f"\n### Memory (PSS, MiB, master + 2 workers) and start-up ({m['rounds']} rounds; medians)\n")
        rows = []
        for mode, v in m["modes"].items():
            rows.append(
                [
                    f"preload={mode}",
                    f"{v['pss_idle']['total']:.0f}",
                    f"{v['pss_after_load']['total']:.0f}",
                    f"{v['pss_after_load']['master']:.0f} + {v['pss_after_load'].get('worker1', 0):.0f} + "
                    f"{v['pss_after_load'].get('worker2', 0):.0f}",
                    f"{v['pss_after_big']['total']:.0f}",
                    f"{v['cold_start_s']:.2f}",
                    f"{v['worker_restart_s']:.2f}",
                ]
            )
        out.append(
            fmt_table(
                [
                    "gunicorn",
                    "idle",
                    "after load",
                    "master + workers",
                    "after 1M-sample requests",
                    "cold start s",
                    "worker restart->ready s",
                ],
                rows,
            )
        )
    if "real" in results:
        out.append("\n" + realworkload.report(results["real"], fmt_table))
    if "course" in results:
        out.append("\n" + course.report(results["course"], fmt_table))
    if "image" in results:
        out.append(image.report(results["image"]))
    if "bounded" in results:
        out.append(bounded.report(results["bounded"]))
    if "baselines" in results.get("memory", {}):
        out.append(
            "\nPSS of the throughput servers after their load (MiB, master + 2 workers): "
            + ", ".join(f"{t} {v['total']:.0f}" for t, v in results["memory"]["baselines"].items())
        )
    return "\n".join(out)


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        # not `import torch`: this process would then share torch's library pages with the servers it measures,
        # and their PSS (shared pages split between sharers) would come out ~30 MiB lower than in production
        "torch": importlib.metadata.version("torch"),
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round of each section (CI smoke)")
    p.add_argument("--rounds", type=int, help="interleaved rounds per measurement (default 5, quick 1)")
    p.add_argument("--seconds", type=float, help="seconds per wrk run (default 3, quick 1)")
    p.add_argument("--concurrency", help="comma-separated wrk connections (default 1,2,4,8,16,32; quick 8)")
    p.add_argument(
        "--sections",
        default="throughput,samples,batch,recycle,memory,bounded,real,course,image",
        help="any of throughput,samples,batch,recycle,memory,bounded,real,course,image (default: all)",
    )
    p.add_argument("--jobs", type=int, default=1000, help="jobs in one /v1/batch (default 1000)")
    p.add_argument("--json", help="where to write the raw results (default bench/results.json; --quick: nowhere)")
    p.add_argument("--plots", action="store_true", help="draw docs/throughput.png and docs/cost_per_sample.png")
    args = p.parse_args(argv)
    # SIGTERM (kill, pkill, a CI timeout) as an exception, so the finally blocks stop every server started here:
    # they lead their own process groups and would otherwise outlive the benchmark
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    rounds = args.rounds or (1 if args.quick else 5)
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    concurrencies = [int(c) for c in (args.concurrency or ("8" if args.quick else "1,2,4,8,16,32")).split(",")]
    sizes = [1, 100, 10_000, 1_000_000] if args.quick else [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000]
    sections = set(args.sections.split(","))
    results: dict = {"machine": machine(), "quick": args.quick}
    log_dir = Path(tempfile.mkdtemp(prefix="gradsvc-bench-"))
    started = time.monotonic()

    servers: dict[str, Server] = {}
    try:
        if sections & {"throughput", "samples", "batch"}:
            for t in TARGETS:
                servers[t] = Server(t, log_dir=log_dir).start()
            for s in servers.values():
                s.wait_workers(2)
            for s in servers.values():  # warm every worker up (first requests, allocator) and discard
                wrk.run(s.url, "/v1/gradients", [workloads.neuron_body()], 4, 1)
        if "throughput" in sections:
            log(f"throughput: {rounds} rounds x {concurrencies} connections x {seconds} s")
            runs = throughput(servers, concurrencies, rounds, seconds)
            results["throughput"] = {
                "rounds": rounds,
                "seconds": seconds,
                "runs": runs,
                "summary": summarize_throughput(runs, concurrencies),
            }
            results.setdefault("memory", {})["baselines"] = {t: s.pss_mib() for t, s in servers.items()}
        if "samples" in sections:
            r = max(1, min(rounds, 3))
            log(f"samples: {r} rounds x sizes {sizes}")
            raw = samples(servers, sizes, r)
            results["samples"] = {"rounds": r, "raw": raw, "summary": summarize_samples(raw, sizes)}
        if "batch" in sections:
            r = max(1, min(rounds, 3))
            n_jobs = min(args.jobs, 200) if args.quick else args.jobs
            log(f"batch: {r} rounds, {n_jobs} jobs")
            results["batch"] = {
                "rounds": r,
                **batch(servers["service"], n_jobs, r, max(seconds, 2.0 if args.quick else 5.0)),
            }
            results.setdefault("memory", {})["service_after_all"] = servers["service"].pss_mib()
    finally:
        for s in servers.values():
            s.stop()
    if "recycle" in sections:
        r = max(1, min(rounds, 3))
        log(f"worker recycling: {r} rounds")
        results["recycling"] = recycling(r, seconds, log_dir)
    if "real" in sections:
        log(f"real workload: {rounds} rounds")
        results["real"] = realworkload.run(rounds, seconds, log_dir)
    if "course" in sections:
        r = 1 if args.quick else 3
        n = 200 if args.quick else 2000
        log(f"course: {r} rounds, {n} students")
        results["course"] = course.run(r, seconds, log_dir, n)
    if "image" in sections:
        log("image: size and cold start")
        results["image"] = image.measure(1 if args.quick else 5)
    if "memory" in sections:
        r = 1 if args.quick else 3
        log(f"memory and start-up: {r} rounds")
        results.setdefault("memory", {}).update(rounds=r, modes=memory_and_startup(r, seconds, log_dir, ("1", "0")))
    if "bounded" in sections:
        r = 1 if args.quick else 3
        log(f"bounded cost: {r} rounds")
        results["bounded"] = bounded.measure(r, seconds, log_dir)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["wall_seconds"] = time.monotonic() - started
    text = report(results)
    print(text)
    print(
        f"\n(machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
        f"python {results['machine']['python']}, "
        f"torch {results['machine']['torch']}; load average {results['machine']['loadavg_start'][0]:.1f} at start, "
        f"{results['machine']['loadavg_end'][0]:.1f} at end; {results['wall_seconds']:.0f} s)"
    )
    if args.json is None and not args.quick:
        args.json = str(ROOT / "bench" / "results.json")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if args.plots:
        from .plots import draw  # noqa: PLC0415 - matplotlib only when asked

        print("\n".join(draw(results, ROOT / "docs")))
    return 0
