"""Readiness: every path a request can take has run once in this process before /readyz says ready.

Service level, not engine: it loads requests through the schemas as a view would.

The first request of each kind used to pay for lazy work: torch's first autograd pass, the first
broadcasting op, the first double backward, marshmallow's first load of each schema.  Running one small
request of each kind here (gradients for a neuron, a catalog expression and a broadcasting formula with
every extra, a check in each format, answers to one problem graded together, a problem file graded in every
platform's format, a batch with a vectorized group) makes the first real request as fast as the hundredth and
imports every library up front (tests/test_warmup.py checks sys.modules).
"""

from __future__ import annotations

from schemas import GradientRequestSchema, GradientResponseSchema
from schemas.grading import BatchRequestSchema, CheckRequestSchema, CheckResponseSchema
from schemas.platforms import PLATFORM_RESPONSES
from schemas.problems import GradeRequestSchema

from .engine.batch import compute_many
from .engine.check import Problem, grade, grade_many
from .engine.compute import compute
from .engine.describe import models_document
from .engine.errors import EngineError
from .engine.limits import Limits
from .engine.runtime import autograd_works, set_threads
from .observability import lookups_uncounted
from .platforms import FORMATTERS, RENDERERS, render
from .problems import grade_file

_ready = False

EVERY_EXTRA = ["graph", "dot", "intermediates", "manual", "numeric", "hessian"]
NEURON = {"model": {"kind": "neuron", "loss": "bce"}, "inputs": {"x": 6.7, "y": 0.0, "w": 1.0, "b": 0.0}}
GRADIENTS = [
    {**NEURON, "include": EVERY_EXTRA},
    {
        "model": {"kind": "neuron", "reduction": "none"},
        "inputs": {"x": [[1.0, 2.0], [3.0, 4.0]], "y": [0.0, 1.0], "w": [0.5, -0.5], "b": 0.0},
    },
    {"model": {"kind": "expression", "name": "sin_square"}, "inputs": {"x": 0.5}, "include": EVERY_EXTRA},
    {
        "model": {
            "kind": "expression",
            "formula": "sum(sin(x * y) + maximum(x, y) / (1 + exp(-x)) - x ** 2 + sqrt(y))",
        },
        "inputs": {"x": [[1.0], [2.0]], "y": [[0.5, 1.5, 2.5]]},
        "include": EVERY_EXTRA,
        "dtype": "float64",
    },
    {
        "model": {"kind": "expression", "formula": "x * y"},
        "inputs": {"x": [1.0, 2.0], "y": [[1.0], [2.0]]},
        "mode": "inference",
        "include": ["intermediates"],
    },
]
# networks: a two-layer net with every extra, a layer check's `dout`, a Jacobian and a `jvp` (double backward)
NETWORK = {
    "kind": "network",
    "layout": "cs231n",
    "loss": {"type": "softmax_cross_entropy"},
    "layers": [
        {"type": "linear", "out_features": 3, "activation": "relu"},
        {"type": "batchnorm"},
        {"type": "dropout", "keep_prob": 0.5, "seed": 0},
        {"type": "linear", "out_features": 2},
    ],
    "l2": {"reg": 0.1, "form": "half_sum_sq"},
    "init": {"scheme": "numpy_legacy", "seed": 0, "std": 0.1},
    "generate": {"X": {"scheme": "numpy_legacy", "seed": 1, "shape": [3, 2]}},
}
LAYER = {
    "kind": "network",
    "layout": "mytorch",
    "layers": [{"type": "linear", "out_features": 2}],
    "loss": {"type": "none"},
}
LAYER_INPUTS = {"X": [[1.0, 2.0]], "W1": [[1.0, 0.0], [0.0, 1.0]], "b1": [[0.0], [1.0]]}
GRADIENTS += [
    {"model": NETWORK, "inputs": {"y": [0, 1, 1]}, "include": EVERY_EXTRA, "dtype": "float64"},
    {"model": LAYER, "inputs": LAYER_INPUTS, "dout": [[1.0, -1.0]], "include": ["intermediates"]},
    {"model": LAYER, "inputs": LAYER_INPUTS, "include": ["jacobian"], "tangents": {"X": [[1.0, 0.0]]}},
]
CHECKS = [
    {**NEURON, "submission": {"loss": 6.7, "gradients": {"w": 6.69, "b": 1.0}, "intermediates": {"z": 6.7}}},
    {
        "model": {"kind": "expression", "formula": "sum(x * y)"},
        "inputs": {"x": [1.0, 2.0], "y": 3.0},
        "domain": {"y": [-1.0, 1.0]},
        "n_points": 2,
        "submission": {"gradient_formulas": {"x": "y + 0 * x", "y": "sum(x) +"}},
    },
    {
        "model": NETWORK,
        "inputs": {"y": [0, 1, 1]},
        "tolerance": {"profile": "rel_error", "partial_credit": True},
        "submission": {
            "loss": 1.0,
            "gradients": {"W1": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], "W2": [[1.0, 2.0]]},
            "intermediates": {"Z1": [[0.0] * 3] * 3, "dA1": [[0.0] * 3] * 3},
        },
    },
    {
        "model": LAYER,
        "inputs": LAYER_INPUTS,
        "dout": [[1.0, -1.0]],
        "submission": {"gradients": {"W1": [[1.0, 2.0], [-1.0, -2.0]]}},
    },
]
GRADE = {  # a problem file of two problems; answers with a number typed as text and an unparsable formula
    "problem": {
        "problems": [
            {"key": "neuron", **NEURON, "checks": {"loss": {}, "gradients.w": {"visibility": "hidden"}}},
            {
                "key": "f",
                "model": {"kind": "expression", "formula": "sum(x * y)"},
                "inputs": {"x": [1.0, 2.0], "y": 3.0},
                "domain": {"y": [-1.0, 1.0]},
                "n_points": 2,
                "seed_from_variant": True,
                "checks": {"gradient_formulas.x": {"answer": "dx", "tags": ["formula"]}, "gradients.y": {}},
            },
        ]
    },
    "answers": {"neuron": {"loss": "6.7", "gradients": {"w": [1.0]}}, "dx": "y +", "f": {"gradients": {"y": 3.0}}},
    "variant_seed": 7,
}
FAILING = [  # the error paths: a shape mismatch and a formula error
    {"model": {"kind": "expression", "formula": "sum(x * y)"}, "inputs": {"x": [1.0, 2.0], "y": [1.0, 2.0, 3.0]}},
    {"model": {"kind": "expression", "formula": "sum(x"}, "inputs": {"x": 1.0}},
]


def warm_up(threads: int = 1) -> None:
    """Set torch's intra-op threads and run one request of every kind, so the first real one is not the slow one."""
    global _ready
    with lookups_uncounted():  # the warm-up's grading is not the service's: not in the reference cache's hits
        _run_every_kind(threads)
    _ready = autograd_works()


def _run_every_kind(threads: int) -> None:
    set_threads(threads)
    limits = Limits()
    gradient_request, gradient_response = GradientRequestSchema(), GradientResponseSchema()
    for body in GRADIENTS:
        gradient_response.dump(compute(gradient_request.load(body), limits))
    for body in FAILING:
        try:
            compute(gradient_request.load(body), limits)
        except EngineError:
            pass
    check_request, check_response = CheckRequestSchema(), CheckResponseSchema()
    for body in CHECKS:
        result = grade(check_request.load(body), limits)
        check_response.dump(result)
        for fmt, formatter in FORMATTERS.items():
            (check_response if fmt == "json" else PLATFORM_RESPONSES[fmt]).dump(formatter(result))
        # a batch's answers to one problem, graded together (engine.check.grade_many's vectorized comparison)
        specs = [check_request.load(body), check_request.load({**body, "rtol": 0.5})]
        grade_many(specs, limits, Problem(specs[0], limits))
    graded = grade_file(GradeRequestSchema().load(GRADE), limits)
    for platform in RENDERERS:
        PLATFORM_RESPONSES[platform].dump(render(platform, graded))
    jobs = BatchRequestSchema().load({"jobs": [NEURON, NEURON, GRADIENTS[3]]})["jobs"]
    compute_many([gradient_request.load(job) for job in jobs], limits)
    models_document(limits, {})


def is_ready() -> bool:
    return _ready
