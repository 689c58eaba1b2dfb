"""Coursework networks: layers, losses, the courses' weight layouts and L2 forms, and numpy's legacy seeding.

A network is an ordered list of layers applied to `X`, a loss against `y`, and optional L2 on the weights.
Every tensor keeps the shape its course gives it (CS231n W is (D, H), torch and MyTorch (out, in),
deeplearning.ai (n_l, n_{l-1}) with X as (n_x, m)), so gradients come back named and shaped as the
student writes them. Layers compute on the samples-first view and hand back the course's orientation,
so every recorded intermediate lies on the path to the loss and autograd fills in its gradient.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ShapeError, UnknownVariable
from .graph import Trace
from .limits import Deadline, Limits

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    """Where a course puts samples and how it shapes W, b and batchnorm's gamma/beta."""

    name: str
    samples_axis: int  # axis of X (and of every activation) that holds the samples
    weight_out_in: bool  # W is (out, in); else (in, out)
    bias_column: bool  # b is (out, 1); else (out,)
    norm_param_shape: str  # gamma/beta: "vector" (F,), "row" (1, F) or "column" (F, 1)
    description: str

    def weight_shape(self, fan_in: int, fan_out: int) -> tuple[int, ...]:
        return (fan_out, fan_in) if self.weight_out_in else (fan_in, fan_out)

    def bias_shape(self, fan_out: int) -> tuple[int, ...]:
        return (fan_out, 1) if self.bias_column else (fan_out,)

    def norm_shape(self, features: int) -> tuple[int, ...]:
        return {"vector": (features,), "row": (1, features), "column": (features, 1)}[self.norm_param_shape]

    def samples_first(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.samples_axis == 0 else t.t()

    def own(self, t: torch.Tensor) -> torch.Tensor:
        """Back from samples-first to this layout's orientation (a view: gradients flow through it)."""
        return t if self.samples_axis == 0 else t.t()

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """The layer as the course writes it, on X in the course's orientation."""
        if self.samples_axis == 1:  # deeplearning.ai: Z = W·A + b, samples in columns
            z = w @ x
            return z if b is None else z + b
        z = x @ (w.t() if self.weight_out_in else w)
        return z if b is None else z + b.reshape(1, -1)


LAYOUTS = {
    layout.name: layout
    for layout in (
        Layout("cs231n", 0, False, False, "vector", "X (N, D), W (D, H), b (H,): X·W + b"),
        Layout("torch", 0, True, False, "vector", "X (N, D), W (H, D), b (H,): X·Wᵀ + b, as torch.nn.Linear"),
        Layout("mytorch", 0, True, True, "row", "MyTorch: A (N, C0), W (C1, C0), b (C1, 1): A·Wᵀ + 1·bᵀ"),
        Layout("dlai", 1, True, True, "column", "deeplearning.ai: X (n_x, m), W (n_l, n_l-1), b (n_l, 1): W·A + b"),
    )
}
ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "softmax")
LAYER_TYPES = ("linear", "batchnorm", "dropout", *ACTIVATIONS)
LABEL_LOSSES = ("softmax_cross_entropy", "hinge")  # y holds class indices (or, for cross-entropy, one-hot rows)
LOSSES = (*LABEL_LOSSES, "bce", "bce_with_logits", "mse", "none")
REDUCTIONS = ("mean", "sum", "mean_elements")
# form -> (description, factor times reg * sum of squares, given the number of samples m)
L2_FORMS = {
    "sum_sq": ("reg * sum(W**2) (CS231n assignment 1)", lambda m: 1.0),
    "half_sum_sq": ("0.5 * reg * sum(W**2) (CS231n fc_net)", lambda m: 0.5),
    "over_2m": ("lambda / (2m) * sum(W**2) (deeplearning.ai)", lambda m: 0.5 / m),
}
INIT_SCHEMES = ("numpy_legacy", "zeros", "ones", "constant", "linspace")
OUTPUT_NAMES = {"linear": "Z", "batchnorm": "BN", "dropout": "D"}  # activations are A


@dataclass(frozen=True)
class Variant:
    """A deliberately wrong network, for naming a student's mistake (diagnose_bugs.py)."""

    l2_scale: float = 1.0
    l2_biases: bool | None = None  # None: as the spec says
    data_reduction: str | None = None
    relu_mask: bool = True


@dataclass(frozen=True)
class Param:
    name: str
    shape: tuple[int, ...]
    role: str  # weight, bias, gamma, beta


def generate(spec: dict, shape: tuple[int, ...], rng: np.random.RandomState | None = None) -> np.ndarray:
    """One tensor from an init spec; `rng` continues a shared numpy_legacy stream (weights in layer order)."""
    scheme = spec["scheme"]
    if scheme == "numpy_legacy":
        gen = rng if rng is not None else np.random.RandomState(spec.get("seed", 0))
        values = spec.get("mean", 0.0) + spec.get("std", 1.0) * gen.randn(*shape)
    elif scheme == "linspace":
        flat = np.linspace(spec.get("start", 0.0), spec.get("stop", 1.0), num=math.prod(shape))
        values = flat.reshape(shape[::-1]).T if spec.get("transpose") else flat.reshape(shape)
    else:
        fill = {"zeros": 0.0, "ones": 1.0}.get(scheme, spec.get("value", 0.0))
        values = np.full(shape, fill, dtype=np.float64)
    return np.asarray(values, dtype=np.float64)


def norm_names(layers: list[dict]) -> list[tuple[str, str]]:
    """(gamma, beta) names of each batchnorm layer, in order: `gamma<l>`/`beta<l>` for the first in block l (after
    the l-th linear layer), `gamma<l>_2`/`beta<l>_2` for a second, as its output is `BN<l>_2`: each layer owns its
    parameters, as each torch.nn.BatchNorm1d does."""
    names, block, seen = [], 0, Counter()
    for layer in layers:
        if layer["type"] == "linear":
            block += 1
        elif layer["type"] == "batchnorm":
            seen[block] += 1
            suffix = f"{block}" if seen[block] == 1 else f"{block}_{seen[block]}"
            names.append((f"gamma{suffix}", f"beta{suffix}"))
    return names


class DropoutStream:
    """One forward pass's draws from the model-wide `dropout_seed` stream, the keep masks a fresh
    RandomState(dropout_seed) gives in layer order, drawn once per request (seeding costs ~120 us, and numeric
    differentiation runs hundreds of passes). The i-th draw of a pass depends only on the shapes drawn before it,
    so the masks are kept in a tree by those shapes: a node is (its children by the next draw's shape, its masks
    by keep_prob). A pass whose draws are not all in the tree seeds a stream once and replays its earlier draws."""

    def __init__(self, seed: int, root: tuple[dict, dict]) -> None:
        self.seed, self.node = seed, root
        self.shapes: list[tuple[int, ...]] = []  # drawn so far in this pass
        self.live: np.random.RandomState | None = None  # the stream at this pass's position, once one was needed

    @staticmethod
    def root() -> tuple[dict, dict]:
        return {}, {}

    def keep(self, shape: tuple[int, ...], keep_prob: float) -> np.ndarray:
        """The keep mask (rand < keep_prob) of this pass's next draw, of `shape`."""
        children, _ = self.node
        self.node = children.setdefault(shape, self.root())
        masks = self.node[1]
        if self.live is None and keep_prob not in masks:
            self.live = np.random.RandomState(self.seed)
            for drawn in self.shapes:
                self.live.rand(*drawn)
        self.shapes.append(shape)
        if self.live is None:
            return masks[keep_prob]
        values = self.live.rand(*shape)  # keeps the live stream in step, kept or not
        return masks.setdefault(keep_prob, values < keep_prob)


class Network:
    """One instance per request: `complete` fills in generated tensors and checks shapes, `forward` runs the net."""

    catalog_entry = None
    per_sample = False
    # a network spec has no sum(...): an upstream gradient (a layer check), a loss, or the Jacobian
    scalar_advice = (
        "send `dout`, the upstream gradient (gradients are then dout·J, as in a layer check), give the network a "
        '`loss`, or, in /v1/gradients, ask for `"include": ["jacobian"]` or `tangents`'
    )
    no_manual = "a network's gradients come from autograd only; compare them with `numeric`"

    inputs = None  # X, y and the parameters the layers imply
    default_wrt: tuple[str, ...] | None = None  # set by shapes(): every parameter, then X

    def __init__(
        self, spec: dict, limits: Limits | None = None, deadline: Deadline | None = None, variant: Variant = Variant()
    ) -> None:
        self.spec, self.variant = spec, variant
        self.layout = LAYOUTS[spec["layout"]]
        self.layers = spec["layers"]
        self.loss = spec["loss"]
        self.l2 = spec.get("l2") or {"reg": 0.0, "form": "sum_sq", "include_biases": False}
        self.params: list[Param] = []
        self.norm_names = norm_names(self.layers)
        self.check_wrt: tuple[str, ...] = ()
        # A seeded dropout layer's keep mask by (seed, shape, keep_prob): drawn once per request, not once per
        # forward pass (numeric differentiation runs hundreds); seeding a RandomState costs ~120 us, far more than
        # the layer is charged. One byte per element, within the 4 elements a layer's output is charged.
        self._seeded_masks: dict[tuple, np.ndarray] = {}
        # The model-wide `dropout_seed` stream's masks, the same way: every pass draws from a fresh
        # RandomState(dropout_seed) in layer order, so a draw depends only on the shapes drawn before it in the pass
        # (DropoutStream keeps them in a tree of those shapes).
        self._stream_masks = DropoutStream.root()
        self.predictions: torch.Tensor | None = None  # bce's input in the last recorded pass, for diagnose()

    # --- shapes and tensors -----------------------------------------------------------------------

    def plan(self, x_shape: tuple[int, ...]) -> list[Param]:
        """Every parameter's name and shape, in layer order, for an X of this shape."""
        if len(x_shape) != 2:
            raise ShapeError(f"X must be a matrix (samples and features), got shape {list(x_shape)}")
        features = x_shape[1 - self.layout.samples_axis]
        params, block, norms = [], 0, iter(self.norm_names)
        for layer in self.layers:
            if layer["type"] == "linear":
                block += 1
                out = layer["out_features"]
                params.append(Param(f"W{block}", self.layout.weight_shape(features, out), "weight"))
                if layer.get("bias", True):
                    params.append(Param(f"b{block}", self.layout.bias_shape(out), "bias"))
                features = out
            elif layer["type"] == "batchnorm":
                gamma, beta = next(norms)
                params.append(Param(gamma, self.layout.norm_shape(features), "gamma"))
                params.append(Param(beta, self.layout.norm_shape(features), "beta"))
        return params

    def shapes(self, given: dict[str, Shape]) -> dict[str, Shape]:
        """Every tensor's shape from the request's input shapes alone (X and parameters may be generated), checked
        against the layers before anything is allocated; sets the parameters and default_wrt (parameters, then X)."""
        generated = self.spec.get("generate", {})
        both = sorted(set(generated) & set(given))
        if both:
            raise ShapeError(f"{', '.join(both)} given both in `inputs` and in `model.generate`; give each once")
        x_shape = tuple(given["X"]) if "X" in given else self._generated_shape("X")
        self.params = self.plan(x_shape)
        known = {"X", "y", *(p.name for p in self.params)}
        unknown = sorted(set(given) - known) + sorted(set(generated) - known)
        if unknown:
            raise UnknownVariable(
                f"the network has no input {', '.join(map(repr, unknown))}; its inputs are {', '.join(sorted(known))}"
            )
        shapes = {"X": x_shape}
        if "y" in given or "y" in generated:
            shapes["y"] = tuple(given["y"]) if "y" in given else self._generated_shape("y")
        elif self.loss["type"] != "none":
            raise UnknownVariable(f"loss {self.loss['type']!r} needs targets: give `y` in the inputs")
        for p in self.params:
            if p.name in given and tuple(given[p.name]) != p.shape:
                raise ShapeError(
                    f"{p.name} has shape {list(given[p.name])}, but in the {self.layout.name} layout it is "
                    f"{list(p.shape)} ({self.layout.description})"
                )
            if p.name in generated and tuple(generated[p.name].get("shape", p.shape)) != p.shape:
                raise ShapeError(
                    f"`generate` asks for {p.name} of shape {generated[p.name]['shape']}, "
                    f"but in the {self.layout.name} layout it is {list(p.shape)}"
                )
            if p.name not in given and p.name not in generated and self.spec.get("init") is None:
                raise UnknownVariable(
                    f"parameter {p.name} (shape {list(p.shape)}) is missing: give it in `inputs`, "
                    "`model.generate`, or set `model.init`"
                )
            shapes[p.name] = p.shape
        self.default_wrt = self.check_wrt = (*(p.name for p in self.params), "X")
        return shapes

    def complete(self, given: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The inputs plus generated X, y and parameters in `dtype` (shapes() has checked them and the cost model
        priced them); the targets' values are checked here."""
        self.shapes({name: tuple(t.shape) for name, t in given.items()})
        generated = self.spec.get("generate", {})
        tensors = {"X": given["X"] if "X" in given else self._make(generated["X"], self._generated_shape("X"), dtype)}
        if "y" in given or "y" in generated:
            tensors["y"] = given["y"] if "y" in given else self._make(generated["y"], self._generated_shape("y"), dtype)
        default = self.spec.get("init")
        legacy = default is not None and default["scheme"] == "numpy_legacy"
        stream = np.random.RandomState(default.get("seed", 0)) if legacy else None
        for p in self.params:
            if p.name in given:
                tensors[p.name] = given[p.name]
            elif p.name in generated:
                tensors[p.name] = self._make(generated[p.name], p.shape, dtype)
            else:
                tensors[p.name] = self._default_param(p, default, stream, dtype)
        self._check_targets(tensors)
        return tensors

    def _generated_shape(self, name: str) -> tuple[int, ...]:
        spec = self.spec.get("generate", {}).get(name)
        if spec is None or "shape" not in spec:
            raise UnknownVariable(f"{name} is missing: give it in `inputs`, or in `model.generate` with a `shape`")
        return tuple(spec["shape"])

    @staticmethod
    def _make(spec: dict, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if "shape" in spec and tuple(spec["shape"]) != shape:
            raise ShapeError(f"`generate` asks for shape {spec['shape']}, but this tensor has shape {list(shape)}")
        return torch.from_numpy(generate(spec, shape)).to(dtype)

    @staticmethod
    def _default_param(p: Param, init: dict, stream, dtype: torch.dtype) -> torch.Tensor:
        """`model.init` for parameters not given: numpy_legacy draws the weights in layer order from one stream
        (CS231n's `np.random.seed(0)` then `std * randn` per weight); biases and beta are zeros, gamma ones."""
        if p.role == "gamma":
            values = np.ones(p.shape)
        elif p.role != "weight" and init["scheme"] == "numpy_legacy":
            values = np.zeros(p.shape)
        else:
            values = generate(init, p.shape, rng=stream)
        return torch.from_numpy(values).to(dtype)

    def _check_targets(self, t: dict[str, torch.Tensor]) -> None:
        """Class labels are whole numbers in range, one per sample; any other target has the output's shape."""
        if "y" not in t or self.loss["type"] == "none":
            return
        y, kind = t["y"], self.loss["type"]
        samples = t["X"].shape[self.layout.samples_axis]
        classes = self._output_features(t["X"])
        want = self._out_shape(samples, classes)
        if kind in LABEL_LOSSES and tuple(y.shape) != want:
            if y.numel() != samples or y.dim() > 2:
                raise ShapeError(
                    f"y has shape {list(y.shape)}: give one class label per sample ({samples})"
                    + (f" or one-hot targets of shape {list(want)}" if kind == "softmax_cross_entropy" else "")
                )
            if not bool(((y == y.round()) & (y >= 0) & (y < classes)).all()):
                raise ShapeError(f"y holds class labels: whole numbers from 0 to {classes - 1}")
            return
        if kind == "hinge":
            raise ShapeError(f"the hinge loss takes class labels: y of shape [{samples}]")
        if tuple(y.shape) != want:
            raise ShapeError(f"y has shape {list(y.shape)}; the network's output has shape {list(want)}")

    def _output_features(self, x: torch.Tensor) -> int:
        features = x.shape[1 - self.layout.samples_axis]
        for layer in self.layers:
            if layer["type"] == "linear":
                features = layer["out_features"]
        return features

    def _out_shape(self, samples: int, features: int) -> tuple[int, int]:
        return (samples, features) if self.layout.samples_axis == 0 else (features, samples)

    # --- the pass -----------------------------------------------------------------------------------

    def prepare(self, tensors: dict[str, torch.Tensor], wrt: tuple[str, ...]) -> dict[str, torch.Tensor]:
        leaves = dict(tensors)
        for name in wrt:
            leaves[name] = leaves[name].detach().requires_grad_(True)
        return leaves

    def forward(
        self, t: dict[str, torch.Tensor], record: dict[str, torch.Tensor] | None = None, trace: Trace | None = None
    ) -> torch.Tensor:
        """The layers, then the loss (plus L2); with loss "none", the last layer's output. With `trace`, every
        torch op's output is traced (a network's layers, loss and L2 are dozens of small ops, none on the
        neuron's hot path); the two terms of the loss get labels."""
        if trace is None:
            return self._forward(t, record)
        with trace.capture():
            return self._forward(t, record, trace)

    def _forward(
        self, t: dict[str, torch.Tensor], record: dict[str, torch.Tensor] | None, trace: Trace | None = None
    ) -> torch.Tensor:
        out = self.outputs(t, record)
        if self.loss["type"] == "none":
            return out
        if record is not None and self.loss["type"] == "bce":
            self.predictions = out.detach()
        data, l2 = self.data_loss(out, t["y"]), self.l2_term(t, t["X"].shape[self.layout.samples_axis])
        if trace is not None:
            trace.add(("data loss", data), ("L2 penalty", l2))
        return data + l2

    def outputs(self, t: dict[str, torch.Tensor], record: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        lay, h, block, norms = self.layout, t["X"], 0, iter(self.norm_names)
        seed = self.spec.get("dropout_seed")
        dropout_stream = DropoutStream(seed, self._stream_masks) if seed is not None else None
        names: dict[str, int] = {}

        def keep(kind: str, value: torch.Tensor) -> torch.Tensor:
            if record is not None:
                base = f"{kind}{block}"
                names[base] = names.get(base, 0) + 1
                record[base if names[base] == 1 else f"{base}_{names[base]}"] = value
            return value

        for layer in self.layers:
            kind = layer["type"]
            if kind == "linear":
                block += 1
                h = keep("Z", lay.linear(h, t[f"W{block}"], t.get(f"b{block}")))
                if layer.get("activation"):
                    h = keep("A", self._activate(layer["activation"], h, layer))
            elif kind == "batchnorm":
                gamma, beta = next(norms)
                h = keep("BN", self._batchnorm(h, t[gamma], t[beta], layer))
            elif kind == "dropout":
                h = keep("D", h * self._dropout_mask(layer, h, dropout_stream))
            else:
                h = keep("A", self._activate(kind, h, layer))
        return h

    def _activate(self, kind: str, h: torch.Tensor, layer: dict) -> torch.Tensor:
        if kind == "relu":
            if not self.variant.relu_mask:  # the classic bug: the upstream gradient passed on unmasked
                return h + (torch.relu(h) - h).detach()
            return torch.relu(h)
        if kind == "leaky_relu":
            return F.leaky_relu(h, layer.get("negative_slope", 0.01))
        if kind == "sigmoid":
            return torch.sigmoid(h)
        if kind == "tanh":
            return torch.tanh(h)
        return self.layout.own(torch.softmax(self.layout.samples_first(h), dim=1))

    def _batchnorm(self, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, layer: dict) -> torch.Tensor:
        """Train mode: batch statistics; variance over n ("biased", CS231n and torch's normalisation) or n - 1."""
        x = self.layout.samples_first(h)
        n = x.shape[0]
        mean = x.mean(0, keepdim=True)
        denominator = n - 1 if layer.get("variance", "biased") == "unbiased" else n
        if denominator < 1:
            raise ShapeError(
                "batchnorm with the unbiased variance needs at least 2 samples"
                if layer.get("variance", "biased") == "unbiased"
                else "batchnorm needs at least 1 sample"
            )
        var = ((x - mean) ** 2).sum(0, keepdim=True) / denominator
        xhat = (x - mean) / torch.sqrt(var + layer.get("eps", 1e-5))
        return self.layout.own(gamma.reshape(1, -1) * xhat + beta.reshape(1, -1))

    def _dropout_mask(self, layer: dict, h: torch.Tensor, stream) -> torch.Tensor:
        """Inverted dropout's mask in the activation's own orientation: keep where rand < keep_prob, scaled
        by 1/keep_prob (CS231n, deeplearning.ai); `p` is torch's drop probability, keep_prob = 1 - p."""
        keep_prob = layer["keep_prob"] if "keep_prob" in layer else 1.0 - layer.get("p", 0.0)
        scale = 1.0 / keep_prob if layer.get("scale", True) and keep_prob > 0 else 1.0
        if "mask" in layer:
            data = layer["mask"]
            mask = torch.tensor(data.values, dtype=h.dtype).reshape(data.shape)
            if mask.shape != h.shape:
                raise ShapeError(f"dropout mask has shape {list(mask.shape)}, the activation {list(h.shape)}")
            return mask * scale
        if "seed" in layer:
            key = (layer["seed"], tuple(h.shape), keep_prob)
            keep = self._seeded_masks.get(key)
            if keep is None:
                keep = self._seeded_masks[key] = np.random.RandomState(layer["seed"]).rand(*h.shape) < keep_prob
        elif stream is None:
            raise ShapeError("dropout needs a `mask`, a `seed`, or the model's `dropout_seed`")
        else:
            keep = stream.keep(tuple(h.shape), keep_prob)
        return torch.from_numpy(keep).to(h.dtype) * scale

    def data_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        kind = self.loss["type"]
        scores = self.layout.samples_first(out)
        labels = kind in LABEL_LOSSES and tuple(y.shape) != tuple(out.shape)
        if kind == "softmax_cross_entropy":
            logp = torch.log_softmax(scores, dim=1)
            if labels:
                per = -logp.gather(1, y.reshape(-1, 1).long()).reshape(-1)
            else:
                per = -(self.layout.samples_first(y) * logp).sum(1)
        elif kind == "hinge":
            idx = y.reshape(-1, 1).long()
            # relu, not clamp(min=0): a margin of exactly 0 is no violation and passes no gradient, as CS231n's SVM
            # (`margins > 0`) and torch's multi_margin_loss have it; clamp's backward passes it at the bound
            margins = torch.relu(scores - scores.gather(1, idx) + self.loss.get("margin", 1.0))
            correct = torch.arange(scores.shape[1]).reshape(1, -1) == idx  # one_hot, which refuses 0 classes
            per = margins.masked_fill(correct, 0).sum(1)
        else:
            target = self.layout.samples_first(y)
            if kind == "bce":  # on probabilities, unclamped, as deeplearning.ai's compute_cost
                elems = -(target * torch.log(scores) + (1 - target) * torch.log(1 - scores))
            elif kind == "bce_with_logits":
                elems = F.binary_cross_entropy_with_logits(scores, target, reduction="none")
            else:
                elems = (scores - target) ** 2
            per = elems.sum(1)
        reduction = self.variant.data_reduction or self.loss.get("reduction", "mean")
        if reduction == "sum":
            return per.sum()
        if reduction == "mean_elements":  # torch's default for mse and bce: every element, not every sample
            return per.sum() / scores.numel()
        return per.mean()

    def l2_term(self, t: dict[str, torch.Tensor], samples: int) -> torch.Tensor:
        reg = self.l2.get("reg", 0.0) * self.variant.l2_scale
        if reg == 0:
            return torch.zeros((), dtype=t["X"].dtype)
        biases = self.l2.get("include_biases", False) if self.variant.l2_biases is None else self.variant.l2_biases
        roles = ("weight", "bias") if biases else ("weight",)
        squares = [(t[p.name] ** 2).sum() for p in self.params if p.role in roles]
        if not squares:  # no layers, no weights: nothing to regularize (torch.stack([]) was a 500)
            return torch.zeros((), dtype=t["X"].dtype)
        form = self.l2.get("form", "sum_sq")
        if form == "over_2m" and samples == 0:
            raise ShapeError("X holds no samples (m = 0): the L2 term lambda / (2m) is undefined; send at least one")
        return reg * L2_FORMS[form][1](samples) * torch.stack(squares).sum()

    # --- what the engine and the grader ask of a model ------------------------------------------------

    def manual(self, t: dict[str, torch.Tensor], wrt: tuple[str, ...], dout: torch.Tensor | None = None) -> None:
        return None

    def diagnose(self, record: dict[str, torch.Tensor]) -> list[str]:
        """bce's NaN or infinity explained, as the neuron's are: the loss is deeplearning.ai's, unclamped, so a
        prediction of exactly 0 or 1 puts a log(0) in it (0 * log 0 = NaN where it equals y, else infinite)."""
        p = self.predictions
        if p is None or p.numel() == 0:
            return []
        edge = int(((p == 0) | (p == 1)).sum())
        if not edge:
            return []
        float32 = p.dtype != torch.float64
        return [
            f"bce: the prediction is exactly 0 or 1 at {edge} of {p.numel()} element(s) (a "
            f"{'float32' if float32 else 'float64'} sigmoid is 1.0 from z ≈ {16.6 if float32 else 36.7} on), where "
            "log(0) makes the loss and its gradients NaN or infinite, as deeplearning.ai's unclamped compute_cost "
            'does; use loss "bce_with_logits" on the logits (without the last sigmoid)'
            + (' or dtype "float64"' if float32 else "")
        ]

    def intermediate_gradients(self, record: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """dZ1, dA1, ... (dL/d(intermediate)) from the retained gradients, for checks on a student's backward pass."""
        return {f"d{k}": t.grad.detach() for k, t in record.items() if t.grad is not None}

    def intermediate_order(self, names) -> list[str]:
        """Forward values in layer order, then their gradients in backward order: the order mistakes propagate."""
        forward = [n for n in names if not n.startswith("d")]
        return forward + [f"d{n}" for n in reversed(forward) if f"d{n}" in names]
