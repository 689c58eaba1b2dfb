"""What a course would write instead of /v1/check: recompute the tutorial neuron's reference with torch, compare.

Takes the same body as /v1/check for the neuron (`inputs`, `submission` with `loss` and `gradients`) and
answers which answers are within rtol 1e-4 / atol 1e-6 of autograd (float64), and the score.
"""

import torch
from flask import Flask, jsonify, request

torch.set_num_threads(1)  # as the service does: two sync workers on two cores must not oversubscribe
app = Flask(__name__)


@app.post("/v1/check")
def check():
    body = request.get_json()
    inputs, submission = body["inputs"], body["submission"]
    x = torch.tensor(inputs["x"], dtype=torch.float64)
    y = torch.tensor(inputs["y"], dtype=torch.float64)
    w = torch.tensor(inputs["w"], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(inputs["b"], dtype=torch.float64, requires_grad=True)
    y_pred = torch.sigmoid(w * x + b)
    p = torch.clamp(y_pred, 1e-8, 1 - 1e-8)
    loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    loss.backward()
    expected = {"loss": loss.detach(), "gradients.w": w.grad, "gradients.b": b.grad}
    given = {"loss": submission.get("loss")}
    given.update((f"gradients.{k}", v) for k, v in submission.get("gradients", {}).items())
    checks = []
    for name, want in expected.items():
        if given.get(name) is None:
            continue
        got = torch.tensor(given[name], dtype=torch.float64)
        passed = bool(torch.isclose(got, want, rtol=1e-4, atol=1e-6).all())
        checks.append({"name": name, "expected": want.tolist(), "actual": got.tolist(), "passed": passed})
    score = sum(c["passed"] for c in checks)
    return jsonify(score=score, max_score=len(checks), passed=score == len(checks), checks=checks)


@app.get("/readyz")
def readyz():
    return {"status": "ready"}
