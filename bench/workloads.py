"""Request bodies for the benchmark: the tutorial's neuron, per-sample batches, and a mixed /v1/batch."""

from __future__ import annotations

import random

import orjson

NEURON = {"model": {"kind": "neuron"}, "inputs": {"x": 6.7, "y": 0, "w": 1, "b": 0}}  # default include: ["graph"]


def neuron_body() -> bytes:
    return orjson.dumps(NEURON)


def per_sample_body(n: int, reduction: str = "none", seed: int = 0) -> bytes:
    """n samples of the scalar-weight neuron (every element of x is one sample), include []."""
    rng = random.Random(seed)
    x = [round(rng.uniform(-4, 4), 4) for _ in range(n)]
    y = [rng.randrange(2) for _ in range(n)]
    return orjson.dumps(
        {
            "model": {"kind": "neuron", "reduction": reduction},
            "inputs": {"x": x, "y": y, "w": 0.5, "b": -0.25},
            "include": [],
        }
    )


def mixed_jobs(n: int, seed: int = 0) -> list[dict]:
    """What an autograder sends: 70 % tutorial neurons (random points, no graph: vectorizable in /v1/batch),
    10 % neurons with a feature vector, 10 % catalog expressions, 10 % free-form formulas (both with the graph)."""
    rng = random.Random(seed)
    names = ["square", "sin_square", "cubic", "tanh", "sigmoid", "softplus"]
    formulas = ["sin(x**2) + exp(-y)", "x*y + log(1 + x**2)", "tanh(x) * sigmoid(y)", "sqrt(x**2 + y**2)"]
    jobs = []
    for i in range(n):
        r = i % 10
        if r < 7:
            jobs.append(
                {
                    "model": {"kind": "neuron"},
                    "include": [],
                    "inputs": {
                        "x": round(rng.uniform(-5, 5), 3),
                        "y": rng.randrange(2),
                        "w": round(rng.uniform(-2, 2), 3),
                        "b": round(rng.uniform(-1, 1), 3),
                    },
                }
            )
        elif r == 7:
            jobs.append(
                {
                    "model": {"kind": "neuron"},
                    "include": [],
                    "inputs": {
                        "x": [round(rng.uniform(-1, 1), 3) for _ in range(3)],
                        "y": 1,
                        "w": [0.1, -0.2, 0.3],
                        "b": 0.0,
                    },
                }
            )
        elif r == 8:
            jobs.append(
                {
                    "model": {"kind": "expression", "name": names[i % len(names)]},
                    "inputs": {"x": round(rng.uniform(0.5, 2), 3)},
                }
            )
        else:
            jobs.append(
                {
                    "model": {"kind": "expression", "formula": formulas[i % len(formulas)]},
                    "inputs": {"x": round(rng.uniform(0.5, 2), 3), "y": round(rng.uniform(0.5, 2), 3)},
                }
            )
    return jobs


def batch_body(jobs: list[dict]) -> bytes:
    return orjson.dumps({"jobs": jobs})


def student_checks(n: int, seed: int = 0) -> list[dict]:
    """n students' answers to the tutorial neuron problem, one /v1/check body each: most right (rounded to
    3-6 decimals), some off in one answer, a few missing an answer; every body different."""
    rng = random.Random(seed)
    right = {"loss": 6.701176166534424, "w": 6.691762447357178, "b": 0.9987704753875732}
    bodies = []
    for i in range(n):
        answers = {k: round(v, rng.randint(3, 6)) for k, v in right.items()}
        r = rng.random()
        if r < 0.2:
            wrong = rng.choice(list(answers))
            answers[wrong] = round(answers[wrong] * rng.uniform(0.5, 1.5), 4)
        submission = {"loss": answers["loss"], "gradients": {"w": answers["w"], "b": answers["b"]}}
        if r > 0.95:
            del submission["gradients"]["b"]
        submission["gradients"]["w"] += i * 1e-9  # every student's body is different, even the rounded-alike ones
        bodies.append({"model": {"kind": "neuron"}, "inputs": dict(NEURON["inputs"]), "submission": submission})
    return bodies
