"""What the graph's values on every node cost the hot path: POST /v1/gradients with the tutorial neuron (default
include: graph), the Flask app called directly, with the trace off (the graph as before: only the nodes the model
names carry values) and on, in interleaved rounds in one process; µs per request, CPU time of this thread (other
processes on a shared machine do not count) and wall time, medians.

python -m bench.graph_values > /dev/null          # results on stderr; REPS (requests a round), ROUNDS
"""

import importlib
import logging
import os
import statistics
import sys
import time

from service.app import create_app

from . import workloads

compute = importlib.import_module("service.engine.compute")  # the module, not the function the package exports


def main() -> None:
    logging.getLogger("gradsvc.access").disabled = os.environ.get("ACCESS_LOG") != "1"
    client = create_app().test_client()
    headers = {"Content-Type": "application/json"}
    body = workloads.neuron_body()
    arms = {"trace off (before)": lambda max_elements: None, "trace on (after)": compute.Trace}
    reps, rounds = int(os.environ.get("REPS", 3000)), int(os.environ.get("ROUNDS", 6))
    cpu: dict[str, list[float]] = {arm: [] for arm in arms}
    wall: dict[str, list[float]] = {arm: [] for arm in arms}
    try:
        for r in range(rounds):
            for arm in list(arms) if r % 2 == 0 else list(arms)[::-1]:
                compute.Trace = arms[arm]
                assert client.post("/v1/gradients", data=body, headers=headers).status_code == 200
                for _ in range(100):
                    client.post("/v1/gradients", data=body, headers=headers)
                started, started_cpu = time.perf_counter(), time.thread_time()
                for _ in range(reps):
                    client.post("/v1/gradients", data=body, headers=headers)
                cpu[arm].append((time.thread_time() - started_cpu) / reps * 1e6)
                wall[arm].append((time.perf_counter() - started) / reps * 1e6)
    finally:
        compute.Trace = arms["trace on (after)"]
    before, after = (statistics.median(cpu[arm]) for arm in arms)
    for arm in arms:
        print(
            f"{arm:20} cpu {statistics.median(cpu[arm]):6.0f} us (min {min(cpu[arm]):5.0f})"
            f"   wall {statistics.median(wall[arm]):6.0f} us",
            file=sys.__stderr__,
        )
    print(f"after / before (cpu medians) {after / before:.3f}", file=sys.__stderr__)


if __name__ == "__main__":
    main()
