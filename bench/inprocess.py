"""In-process time per request (Flask test client): bare, naive, service variants; interleaved rounds, medians.

python -m bench.inprocess > /dev/null          # results on stderr (stdout gets the JSON access log); REPS, ROUNDS
"""

import logging
import os
import statistics
import sys
import time

import orjson

from service.app import create_app

from . import workloads
from .baselines import bare, naive
from .servers import ROOT

os.chdir(ROOT)
svc = create_app().test_client()
B = bare.app.test_client()
N = naive.app.test_client()
H = {"Content-Type": "application/json"}
body = workloads.neuron_body()
NB = dict(workloads.NEURON)
noinc = orjson.dumps({**NB, "include": []})
inf = orjson.dumps({**NB, "include": [], "mode": "inference"})
acc = logging.getLogger("gradsvc.access")
V = {
    "bare": (B, body, False),
    "naive": (N, body, False),
    "service": (svc, body, False),
    "service include []": (svc, noinc, False),
    "service inference": (svc, inf, False),
    "service, access log off": (svc, body, True),
}
for k, (c, b, _) in V.items():
    assert c.post("/v1/gradients", data=b, headers=H).status_code == 200, k
reps, rounds = int(os.environ.get("REPS", 1000)), int(os.environ.get("ROUNDS", 5))
res = {k: [] for k in V}
names = list(V)
for r in range(rounds):
    for k in names[r % len(names) :] + names[: r % len(names)]:
        c, b, off = V[k]
        acc.disabled = off
        for _ in range(50):
            c.post("/v1/gradients", data=b, headers=H)
        t = time.perf_counter()
        for _ in range(reps):
            c.post("/v1/gradients", data=b, headers=H)
        res[k].append((time.perf_counter() - t) / reps * 1e6)
    acc.disabled = False
for k in names:
    ratio = statistics.median(a / b for a, b in zip(res[k], res["service"], strict=True))
    print(f"{k:26} {statistics.median(res[k]):7.0f} us   /service {ratio:.2f}", file=sys.__stderr__)
