"""The catalog document behind GET /v1/models, built from the engine's own tables."""

from __future__ import annotations

from dataclasses import asdict

from . import network
from .catalog import CATALOG
from .fixtures import FIXTURES
from .formula import CONSTANTS, FUNCTIONS
from .limits import Limits
from .neuron import DEFAULT_EPSILON, LOSSES, REDUCTIONS, Neuron

MODEL_KINDS = {
    "neuron": {
        "description": "z = w·x + b, y_pred = sigmoid(z), L = BCE(y_pred, y)",
        "inputs": list(Neuron.inputs),
        "default_wrt": list(Neuron.default_wrt),
        "loss": list(LOSSES),
        "reduction": list(REDUCTIONS),
        "epsilon": DEFAULT_EPSILON,
    },
    "expression": {
        "description": "a catalog `name` or a free-form `formula` in the formula language",
        "default_wrt": "every input",
    },
    "network": {
        "description": "layers on X, a loss against y and L2, in a course's layout (docs/networks.md)",
        "inputs": ["X", "y", "W<l>", "b<l>", "gamma<l>", "beta<l>", "gamma<l>_<k>", "beta<l>_<k>"],
        "default_wrt": "every parameter, then X",
        "layouts": {name: layout.description for name, layout in network.LAYOUTS.items()},
        "layers": list(network.LAYER_TYPES),
        "loss": list(network.LOSSES),
        "reduction": list(network.REDUCTIONS),
        "l2_forms": {name: text for name, (text, _) in network.L2_FORMS.items()},
        "init": list(network.INIT_SCHEMES),
    },
}


def models_document(limits: Limits, extra_limits: dict) -> dict:
    """Everything a client needs to build a valid request, in the shape of ModelsResponseSchema."""
    expressions = [{**asdict(entry), "variables": list(entry.variables)} for entry in CATALOG.values()]
    functions = [{"name": f.name, "arity": f.arity, "description": f.description} for f in FUNCTIONS.values()]
    return {
        "kinds": MODEL_KINDS,
        "expressions": expressions,
        "functions": functions,
        "constants": dict(CONSTANTS),
        "limits": {**limits.as_dict(), **extra_limits},
        "networks": [dict(fixture) for fixture in FIXTURES],
    }
