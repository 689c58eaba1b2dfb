"""Warm-up covers every path: after create_app(), no request imports a library (sys.modules stays the same).

Checked in a fresh interpreter (this pytest process has imported far more than a worker ever does), with
one request of every kind through the app's real WSGI stack.
"""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

SCRIPT = r"""
import encodings.idna  # werkzeug's test client (not the app) encodes the host name with IDNA
import json, sys
from service import create_app
from service.config import Config

class Quiet(Config):
    LOG_LEVEL = "WARNING"

client = create_app(Quiet).test_client()
neuron = {"model": {"kind": "neuron", "loss": "bce"}, "inputs": {"x": 6.7, "y": 0.0, "w": 1.0, "b": 0.0}}
broadcast = {"model": {"kind": "expression", "formula": "sum(x * y + maximum(x, y) / (1 + exp(-x)))"},
             "inputs": {"x": [[1.0], [2.0]], "y": [[0.5, 1.5, 2.5]]}, "include": ["graph", "dot", "numeric", "hessian"]}
check = {"model": {"kind": "expression", "formula": "sum(x * y)"}, "inputs": {"x": [1.0, 2.0], "y": 3.0},
         "domain": {"y": [-1.0, 1.0]}, "n_points": 3,
         "submission": {"gradient_formulas": {"x": "y"}, "gradients": {"y": 3.0}}}
requests = [
    ("get", "/v1/models", None),
    ("post", "/v1/gradients", neuron),
    ("post", "/v1/gradients", {**neuron, "include": ["graph", "dot", "intermediates", "manual", "numeric", "hessian"]}),
    ("post", "/v1/gradients", broadcast),
    ("post", "/v1/gradients", {"model": {"kind": "expression", "name": "mean_square"}, "inputs": {"x": [1.0, 2.0]},
                               "include": ["manual"]}),
    ("post", "/v1/check", {**neuron, "submission": {"loss": 6.7, "gradients": {"w": 6.69}}}),
    ("post", "/v1/check?format=gradescope", check),
    ("post", "/v1/check?format=prairielearn", check),
    ("post", "/v1/batch", {"jobs": [neuron, neuron, broadcast, {"check": check},
                                    {"check": {**check, "submission": {"gradients": {"y": [2.0, 3.0, 4.0]}}}}]}),
    ("post", "/v1/gradients", {"model": {"kind": "expression", "formula": "sum(x * y)"},
                               "inputs": {"x": [1.0, 2.0], "y": [1.0, 2.0, 3.0]}}),
    ("post", "/v1/gradients", {"model": {"kind": "expression", "formula": "sum(x"}, "inputs": {"x": 1.0}}),
]
before = set(sys.modules)
statuses = []
for method, path, body in requests:
    response = getattr(client, method)(path, json=body) if body is not None else getattr(client, method)(path)
    statuses.append(response.status_code)
print(json.dumps({"statuses": statuses, "new": sorted(set(sys.modules) - before)}))
"""


def test_no_request_imports_a_module_after_warm_up():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["statuses"] == [200] * 9 + [422, 400]  # the last two: the shape and formula error paths
    assert result["new"] == [], f"imported lazily on a request: {result['new']}"
