"""Published course fixtures as /v1/gradients requests, listed by GET /v1/models for instructors to start from.

Each entry's `request` reproduces a course's own test case (inputs, seeds, initialisation order, L2 form) and
`expected` holds the value the course prints; tests/test_network.py posts every request and compares.
"""

from __future__ import annotations

_CS231N_NEW_TOY = {
    "layout": "cs231n",
    "layers": [{"type": "linear", "out_features": 50, "activation": "relu"}, {"type": "linear", "out_features": 7}],
    "loss": {"type": "softmax_cross_entropy"},
    "generate": {
        "X": {"scheme": "linspace", "start": -5.5, "stop": 4.5, "shape": [3, 5], "transpose": True},
        "W1": {"scheme": "linspace", "start": -0.7, "stop": 0.3},
        "b1": {"scheme": "linspace", "start": -0.1, "stop": 0.9},
        "W2": {"scheme": "linspace", "start": -0.3, "stop": 0.4},
        "b2": {"scheme": "linspace", "start": -0.9, "stop": 0.1},
    },
}


def _cs231n_new_toy(reg: float) -> dict:
    model = {"kind": "network", **_CS231N_NEW_TOY, "l2": {"reg": reg, "form": "half_sum_sq"}}
    return {"model": model, "inputs": {"y": [0, 5, 1]}, "dtype": "float64", "include": []}


FIXTURES = (
    {
        "name": "cs231n_two_layer_toy",
        "course": "Stanford CS231n, assignment 1 (two_layer_net.ipynb, cs231n/classifiers/neural_net.py)",
        "description": "N=5, D=4, H=10, C=3: np.random.seed(0), W = 0.1*randn per weight in order, zero biases; "
        "np.random.seed(1), X = 10*randn(5, 4); affine-ReLU-affine-softmax, loss + reg*ΣW² at reg 0.05",
        "request": {
            "model": {
                "kind": "network",
                "layout": "cs231n",
                "layers": [
                    {"type": "linear", "out_features": 10, "activation": "relu"},
                    {"type": "linear", "out_features": 3},
                ],
                "loss": {"type": "softmax_cross_entropy"},
                "l2": {"reg": 0.05, "form": "sum_sq"},
                "init": {"scheme": "numpy_legacy", "seed": 0, "std": 0.1},
                "generate": {"X": {"scheme": "numpy_legacy", "seed": 1, "std": 10.0, "shape": [5, 4]}},
            },
            "inputs": {"y": [0, 1, 2, 2, 1]},
            "dtype": "float64",
            "include": [],
        },
        "expected": {"loss": 1.30378789133},
    },
    {
        "name": "cs231n_fc_net_toy",
        "course": "Stanford CS231n, assignment 2 (FullyConnectedNets.ipynb, cs231n/classifiers/fc_net.py)",
        "description": "N=3, D=5, H=50, C=7 with linspace weights and X = linspace(-5.5, 4.5, 15).reshape(5, 3).T; "
        "training loss without regularisation",
        "request": _cs231n_new_toy(0.0),
        "expected": {"loss": 3.4702243556},
    },
    {
        "name": "cs231n_fc_net_toy_reg",
        "course": "Stanford CS231n, assignment 2 (FullyConnectedNets.ipynb, cs231n/classifiers/fc_net.py)",
        "description": "the same toy net with model.reg = 1.0: loss + 0.5*reg*ΣW²",
        "request": _cs231n_new_toy(1.0),
        "expected": {"loss": 26.5948426952},
    },
    {
        "name": "mytorch_linear_toy",
        "course": "CMU 11-785 HW1P1 MyTorch (the Linear layer's toy test)",
        "description": "Z = A·Wᵀ + 1·bᵀ; backward from the given dLdZ gives dLdA, dLdW, dLdb (A is X here)",
        "request": {
            "model": {
                "kind": "network",
                "layout": "mytorch",
                "layers": [{"type": "linear", "out_features": 3}],
                "loss": {"type": "none"},
            },
            "inputs": {
                "X": [[-4, -3], [-2, -1], [0, 1], [2, 3]],
                "W1": [[-2, -1], [0, 1], [2, 3]],
                "b1": [[-1], [0], [1]],
            },
            "dout": [[-4, -3, -2], [-1, 0, 1], [2, 3, 4], [5, 6, 7]],
            "dtype": "float64",
            "include": ["intermediates"],
        },
        "expected": {
            "gradients": {
                "W1": [[28, 30], [24, 30], [20, 30]],
                "b1": [[2], [6], [10]],
                "X": [[4, -5], [4, 4], [4, 13], [4, 22]],
            },
            "intermediates": {"Z1": [[10, -3, -16], [4, -1, -6], [-2, 1, 4], [-8, 3, 14]]},
        },
    },
    {
        "name": "dlai_compute_cost",
        "course": "deeplearning.ai, Building your Deep Neural Network: Step by Step (compute_cost test)",
        "description": "cross-entropy cost -1/m Σ (Y log AL + (1-Y) log(1-AL)) for Y = [[1, 1, 0]], "
        "AL = [[.8, .9, .4]]; "
        "no layers, so X is AL and dX is dAL/m",
        "request": {
            "model": {"kind": "network", "layout": "dlai", "layers": [], "loss": {"type": "bce"}},
            "inputs": {"X": [[0.8, 0.9, 0.4]], "y": [[1, 1, 0]]},
            "dtype": "float64",
            "include": [],
        },
        "expected": {"loss": 0.27977656},
    },
)
