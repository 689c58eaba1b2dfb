"""Server-side cost of the SVG picture for the tutorial neuron, against the JSON answer measured in the same run.

    python -m bench.svg                  # ROUNDS (5) interleaved rounds of REPS (30) requests each; results on stderr

Both answers come from one in-process app (Flask test client, so no network time is counted): the JSON request
(graph included, the default) is the baseline, the SVG request does the same work plus `dot -Tsvg` in a subprocess.
render_svg() alone is timed too.  Target (issue 12): the SVG for the tutorial neuron under 100 ms server-side.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time

from service.app import create_app
from service.render_svg import render_svg

from . import workloads


def per_request_ms(client, body: bytes, headers: dict, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        assert client.post("/v1/gradients", data=body, headers=headers).status_code == 200
    return (time.perf_counter() - start) / reps * 1e3


def main() -> int:
    reps, rounds = int(os.environ.get("REPS", 30)), int(os.environ.get("ROUNDS", 5))
    app = create_app()
    logging.getLogger("gradsvc.access").disabled = True
    client = app.test_client()
    body = workloads.neuron_body()
    json_h = {"Content-Type": "application/json", "Accept": "application/json"}
    svg_h = {"Content-Type": "application/json", "Accept": "image/svg+xml"}
    graph = client.post("/v1/gradients", data=body, headers=json_h).json["graph"]
    limits = app.config["LIMITS"]
    for _ in range(5):  # warm-up: torch kernels, page cache for the dot binary
        client.post("/v1/gradients", data=body, headers=svg_h)
    res = {"json": [], "svg": [], "render_svg": []}
    for r in range(rounds):
        order = ["json", "svg", "render_svg"][r % 3 :] + ["json", "svg", "render_svg"][: r % 3]
        for name in order:
            if name == "render_svg":
                start = time.perf_counter()
                for _ in range(reps):
                    render_svg(graph, limits)
                res[name].append((time.perf_counter() - start) / reps * 1e3)
            else:
                res[name].append(per_request_ms(client, body, svg_h if name == "svg" else json_h, reps))
    med = {k: statistics.median(v) for k, v in res.items()}
    for name in res:
        ratio = med[name] / med["json"]
        print(f"{name:12} {med[name]:7.2f} ms  (median of {rounds} x {reps})  /json {ratio:.1f}x", file=sys.stderr)
    print(
        f"SVG request - JSON request: {med['svg'] - med['json']:.2f} ms; target: SVG request < 100 ms "
        f"-> {'met' if med['svg'] < 100 else 'MISSED'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
