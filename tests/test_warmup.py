"""Warm-up covers every path: after create_app(), no request imports a library (sys.modules stays the same).

Checked in a fresh interpreter (this pytest process has imported far more than a worker ever does), with
one request of every kind through the app's real WSGI stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT, require_binary

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
grade = {"problem": {"title": "t", "problems": [
             {"key": "n", **neuron, "checks": {"loss": {}, "gradients.b": {"visibility": "after_due_date"}}},
             {"key": "e", **{k: v for k, v in check.items() if k != "submission"},
              "checks": {"gradient_formulas.x": {"answer": "dx"}, "gradients.y": {"visibility": "hidden"}}}]},
         "answers": {"n": {"loss": 6.7012, "gradients": {"b": "0.99"}}, "dx": "sin(", "e": {"gradients": {"y": [3.0]}}}}
network = {"kind": "network", "layout": "cs231n", "loss": {"type": "softmax_cross_entropy"},
           "layers": [{"type": "linear", "out_features": 4, "activation": "relu"},
                      {"type": "linear", "out_features": 3}],
           "l2": {"reg": 0.05, "form": "sum_sq"}, "init": {"scheme": "numpy_legacy", "seed": 0, "std": 0.1},
           "generate": {"X": {"scheme": "numpy_legacy", "seed": 1, "std": 10.0, "shape": [5, 4]}}}
layer = {"kind": "network", "layout": "torch", "layers": [{"type": "linear", "out_features": 3}],
         "loss": {"type": "none"}}
layer_inputs = {"X": [[1.0, 2.0], [3.0, 4.0]], "W1": [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], "b1": [0.0, 1.0, 2.0]}
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
    *[("post", f"/v1/grade?format={fmt}", grade)
      for fmt in ("json", "gradescope", "prairielearn", "autolab", "coderunner")],
    ("post", "/v1/gradients", {"model": network, "inputs": {"y": [0, 1, 2, 2, 1]},
                               "include": ["graph", "intermediates"]}),
    ("post", "/v1/gradients", {"model": layer, "inputs": layer_inputs, "dout": [[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]]}),
    ("post", "/v1/gradients", {"model": layer, "inputs": layer_inputs, "include": ["jacobian"],
                               "tangents": {"W1": [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]}}),
    ("post", "/v1/check?format=gradescope", {"model": network, "inputs": {"y": [0, 1, 2, 2, 1]},
                                              "tolerance": {"profile": "norm_ratio"},
                                              "submission": {"loss": 1.3, "gradients": {"b2": [0.1, 0.2, 0.3]}}}),
    ("post", "/v1/gradients", {"model": {"kind": "expression", "formula": "sum(x * y)"},
                               "inputs": {"x": [1.0, 2.0], "y": [1.0, 2.0, 3.0]}}),
    ("post", "/v1/gradients", {"model": {"kind": "expression", "name": "squared_error"}, "include": ["manual"],
                               "inputs": {"w": 0.5, "b": -1.0, "x": [1.0, 2.0, 3.0], "y": [0.0, 1.0, 1.0]}}),
    ("post", "/v1/gradients", {"model": {"kind": "expression", "formula": "sum(x"}, "inputs": {"x": 1.0}}),
]
requests += [  # the picture (needs Graphviz: skipped without it) and the playground page with its assets
    ("post", "/v1/gradients", neuron, {"Accept": "image/svg+xml"}),
    ("get", "/?formula=sin(x**2)&x=3", None),
    ("get", "/playground/playground.js", None),
    ("get", "/playground/playground.css", None),
]
before = set(sys.modules)
statuses = []
for method, path, body, *headers in requests:
    kwargs = {"json": body} if body is not None else {}
    response = getattr(client, method)(path, headers=headers[0] if headers else None, **kwargs)
    statuses.append(response.status_code)
print(json.dumps({"statuses": statuses, "new": sorted(set(sys.modules) - before), "sympy": "sympy" in sys.modules}))
"""


def test_no_request_imports_a_module_after_warm_up():
    require_binary("dot", package="graphviz")
    # WARM_UP=1 explicitly: a test that loads deploy/gunicorn.conf.py sets WARM_UP=0 in this process's environment
    env = {**os.environ, "WARM_UP": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # 422, 400: the shape and formula error paths; then the picture, the page, its script and stylesheet
    assert result["statuses"] == [200] * 18 + [422, 200, 400] + [200] * 4
    assert result["new"] == [], f"imported lazily on a request: {result['new']}"
    # torch imports sympy (~32 MiB a process) only for a backward given a gradient tensor, which no path does
    assert result["sympy"] is False
