"""What a user would write instead of the service: parse, build tensors, forward, backward, jsonify (neuron only)."""

import torch
from flask import Flask, jsonify, request

torch.set_num_threads(1)  # as the service does: two sync workers on two cores must not oversubscribe
app = Flask(__name__)


@app.post("/v1/gradients")
def gradients():
    inputs = request.get_json()["inputs"]
    x = torch.tensor(inputs["x"], dtype=torch.float32)
    y = torch.tensor(inputs["y"], dtype=torch.float32)
    w = torch.tensor(inputs["w"], dtype=torch.float32, requires_grad=True)
    b = torch.tensor(inputs["b"], dtype=torch.float32, requires_grad=True)
    z = w * x + b
    y_pred = torch.sigmoid(z)
    p = torch.clamp(y_pred, 1e-8, 1 - 1e-8)
    loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    loss.backward()
    return jsonify(loss=loss.item(), gradients={"w": w.grad.tolist(), "b": b.grad.tolist()})


@app.get("/readyz")
def readyz():
    return {"status": "ready"}
