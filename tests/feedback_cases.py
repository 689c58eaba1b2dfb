"""Requests whose responses in the default feedback mode ("expected") are pinned byte for byte in
tests/data/feedback_expected.json, recorded before the `feedback` option existed (tests/test_feedback.py).

Regenerate only on purpose: `.venv/bin/python tests/feedback_cases.py` (from the repository root).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "data" / "feedback_expected.json"
NEURON = {"model": {"kind": "neuron", "loss": "bce"}, "inputs": {"x": 6.7, "y": 0.0, "w": 1.0, "b": 0.0}}
# autograd's dL/dw at NEURON, negated: the "sign is flipped" diagnosis
FLIPPED_W = -6.691763029237442
CHECKS = {
    # the neuron, every answer wrong: loss, chain rule, and a diagnosed sign flip
    "neuron": {**NEURON, "submission": {"loss": 0, "gradients": {"w": FLIPPED_W, "b": 0.5}}},
    # a tensor gradient off at one element, a missing answer and a wrong shape
    "tensor": {
        "model": {"kind": "expression", "formula": "mean(x**2)"},
        "inputs": {"x": [1.0, 2.0, 3.0]},
        "submission": {"gradients": {"x": [0.6667, 1.3333, 2.5]}, "loss": [1, 2]},
        "checks": {"gradients.x": {"points": 2}, "loss": {"points": 1}, "intermediates.nothing": {"points": 1}},
    },
    # a formula wrong at some of 6 points, and a tolerance profile
    "formula": {
        "model": {"kind": "expression", "formula": "sin(x**2)"},
        "domain": {"x": [-3, 3]},
        "seed": 2026,
        "n_points": 6,
        "submission": {"gradient_formulas": {"x": "cos(x**2)*x"}, "loss": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]},
        "checks": {
            "gradient_formulas.x": {"points": 3},
            "loss": {"points": 1, "tolerance": {"profile": "rel_error", "partial_credit": True}},
        },
    },
}
PROBLEM_FILE = {
    "title": "Autograd by hand",
    "problems": [
        {**NEURON, "key": "neuron", "checks": {"loss": {"points": 1}, "gradients.w": {"points": 2, "title": "dL/dw"}}},
        {
            "key": "mean_square",
            "model": {"kind": "expression", "formula": "mean(x**2)"},
            "inputs": {"x": [1.0, 2.0, 3.0]},
            "checks": {"gradients.x": {"points": 2, "visibility": "after_due_date"}},
        },
    ],
}
ANSWERS = {"neuron": {"loss": 6.7, "gradients": {"w": FLIPPED_W}}, "mean_square": {"gradients": {"x": [0, 0, 0]}}}


def responses(client) -> dict[str, str]:
    """Every case in every format, as the response text (/v1/grade's without its execution time)."""
    out = {}
    for name, body in CHECKS.items():
        for fmt in ("json", "gradescope", "prairielearn"):
            out[f"check {name} {fmt}"] = client.post(f"/v1/check?format={fmt}", json=body).get_data(as_text=True)
    jobs = {"jobs": [{"check": body} for body in CHECKS.values()]}
    out["batch"] = client.post("/v1/batch", json=jobs).get_data(as_text=True)
    for fmt in ("json", "gradescope", "prairielearn", "autolab", "coderunner"):
        doc = client.post(f"/v1/grade?format={fmt}", json={"problem": PROBLEM_FILE, "answers": ANSWERS}).json
        doc.pop("execution_time", None)
        out[f"grade {fmt}"] = json.dumps(doc, sort_keys=True)
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent.parent))
    from service import create_app
    from tests.conftest import TestConfig

    GOLDEN.write_text(json.dumps(responses(create_app(TestConfig).test_client()), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
