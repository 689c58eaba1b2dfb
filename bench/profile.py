"""py-spy one service worker under wrk load (8 connections) for 10 s; shares of its samples by category.

python -m bench.profile [raw-output-file]      # needs ptrace rights on the worker (our own child)
"""

import collections
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import workloads, wrk
from .servers import ROOT, Server

os.chdir(ROOT)
out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/gradsvc-py-spy.txt"
srv = Server("service", log_dir=None).start()
try:
    srv.wait_workers(2)
    wrk.run(srv.url, "/v1/gradients", [workloads.neuron_body()], 4, 1)
    pid = srv.worker_pids()[0]
    res = {}
    t = threading.Thread(target=lambda: res.update(wrk.run(srv.url, "/v1/gradients", [workloads.neuron_body()], 8, 13)))
    t.start()
    time.sleep(1.5)
    py_spy = str(Path(sys.executable).parent / "py-spy")
    subprocess.run(
        [py_spy, "record", "-p", str(pid), "-d", "10", "-r", "200", "-f", "raw", "-o", out, "--nonblocking"],
        check=True,
        timeout=60,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t.join(60)
    print("wrk during profile:", round(res.get("rps", 0)), "req/s")
finally:
    srv.stop()
RULES = [  # first match wins, checked against the whole stack
    ("torch forward + backward (forward_backward)", r"forward_backward \("),
    ("graph: build_graph + to_dot", r"(build_graph|to_dot) \("),
    ("encode_tree (tensors -> numpy)", r"encode_tree \("),
    ("Neuron.diagnose", r"diagnose \("),
    ("rest of engine.compute (tensors, model, schema checks)", r"compute \(service/engine/compute.py"),
    ("marshmallow load of the request", r"marshmallow/"),
    ("JSON access log line (logging, pythonjsonlogger)", r"(logging/__init__|pythonjsonlogger|json_log|access_log)"),
    ("metrics, request id, compute_timer (observability)", r"(prometheus_client|service/observability.py)"),
    ("response JSON (jsonio: guard + orjson)", r"service/jsonio.py"),
    ("Flask dispatch, request/response objects, rest of the app", r"(flask/|service/)"),
    ("gunicorn + werkzeug outside Flask (accept, parse, headers, write, close)", r"(gunicorn/|werkzeug/)"),
]
counts = collections.Counter()
total = 0
for line in open(out):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n)
    total += n
    for name, rx in RULES:
        if re.search(rx, stack):
            counts[name] += n
            break
    else:
        counts["other"] += n
for name, n in counts.most_common():
    print(f"{n / total * 100:5.1f} %  {name}")
print("samples", total)
