"""The tutorial's neuron: z = w·x + b, y_pred = sigmoid(z), L = BCE(y_pred, y), with its chain-rule gradient."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .errors import ShapeError
from .graph import Trace

INPUTS = ("x", "y", "w", "b")
LOSSES = ("bce", "bce_with_logits")
REDUCTIONS = ("mean", "sum", "none")
DEFAULT_EPSILON = 1e-8  # the tutorial's clamp
# the clamp's own chain-rule factor, d clamp(y_pred) / d y_pred: 0 where it bites, 1 elsewhere (in a neuron's
# chain_rule() only at a point where it bites, so that every other point's factors stay the tutorial's three)
CLAMP_FACTOR = "dclamp(y_pred)/dy_pred"
# dL/dy_pred * dy_pred/dz = y_pred - y: kept beside the factors (never shown) for their product where they are
# inf and 0 (y_pred rounds to 1 and sigmoid(-z) to 0), as autograd's gradient stays finite there
DL_DZ = "dL/dz"


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


class Neuron:
    """One instance per request: `prepare` checks shapes and makes leaves, `forward` runs the tutorial's pass."""

    inputs = INPUTS
    default_wrt = ("w", "b")
    scalar_advice = 'use reduction "mean" or "sum"'  # reduction "none" answers per-sample losses instead

    def __init__(self, spec: dict, limits=None, deadline=None) -> None:
        self.loss = spec.get("loss", LOSSES[0])
        self.reduction = spec.get("reduction", REDUCTIONS[0])
        self.epsilon = spec.get("epsilon", DEFAULT_EPSILON)
        self.vector_w = False  # set by prepare(): w holds one weight per feature (x's last axis)
        self.per_sample = False  # set by prepare(): reduction "none" over several samples
        self.targets: torch.Tensor | None = None  # set by prepare(): y, for diagnose()

    def _samples_shape(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Size:
        """Shape of z: every element of x is a sample for a scalar w; the last axis holds features for a vector w."""
        if b.dim() != 0:
            raise ShapeError(f"b must be a scalar, got shape {_shape(b)}")
        if w.dim() == 0:
            return x.shape
        if w.dim() != 1:
            raise ShapeError(f"w must be a scalar or a vector of feature weights, got shape {_shape(w)}")
        if x.dim() == 0 or x.shape[-1] != w.shape[0]:
            raise ShapeError(f"x has shape {_shape(x)} but w has {w.shape[0]} features: x's last axis must match w")
        return x.shape[:-1]

    def shapes(self, given: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """The inputs are every tensor: nothing is generated."""
        return given

    def complete(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return tensors

    def prepare(self, tensors: dict[str, torch.Tensor], wrt: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Make the leaves; for per-sample gradients w and b get one independent copy per sample."""
        zshape = self._samples_shape(tensors["x"], tensors["w"], tensors["b"])
        if tensors["y"].shape != zshape:
            raise ShapeError(
                f"y has shape {_shape(tensors['y'])} "
                f"but the model makes one prediction per sample, shape {list(zshape)}"
            )
        self.vector_w = tensors["w"].dim() == 1
        self.targets = tensors["y"]
        self.per_sample = self.reduction == "none" and len(zshape) > 0
        leaves = dict(tensors)
        if self.per_sample:
            leaves["w"] = tensors["w"].expand(*zshape, *tensors["w"].shape).clone()
            leaves["b"] = tensors["b"].expand(zshape).clone()
        for name in wrt:
            leaves[name] = leaves[name].detach().requires_grad_(True)
        return leaves

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        """z = w·x + b: over x's last axis for a vector w, elementwise for a scalar one."""
        if self.vector_w:
            wx = x * w
            total = wx.sum(-1)
            if trace is not None:
                trace.add(("x*w", wx), ("sum(x*w)", total))
            return total + b
        wx = w * x
        if trace is not None:
            trace.add(("w*x", wx))
        return wx + b

    def clamped_bce(
        self, z: torch.Tensor, y: torch.Tensor, sigmoid=torch.sigmoid, log=torch.log, trace: Trace | None = None
    ):
        """(y_pred, per-sample losses) by the tutorial's clamped formula; the batch runner passes its own
        bit-exact sigmoid and log (engine/batch.py), so the two paths share this one definition. One op a line,
        in the formula's order (the same kernels as the one-line formula), so `trace` can name each step."""
        y_pred = sigmoid(z)
        p = torch.clamp(y_pred, self.epsilon, 1 - self.epsilon)
        log_p = log(p)
        positive = y * log_p
        q = 1 - p
        log_q = log(q)
        one_minus_y = 1 - y  # a graph node only when y is a `wrt` input
        negative = one_minus_y * log_q
        total = positive + negative
        losses = -total
        if trace is not None:  # the tutorial writes the clamped y_pred as y_pred again: so do the labels
            trace.add(
                ("clamp(y_pred)", p),
                ("log(y_pred)", log_p),
                ("y*log(y_pred)", positive),
                ("1 - y_pred", q),
                ("log(1 - y_pred)", log_q),
                ("1 - y", one_minus_y),
                ("(1-y)*log(1 - y_pred)", negative),
                ("y*log(y_pred) + (1-y)*log(1 - y_pred)", total),
                ("losses", losses),  # one per sample; the reduced loss is the graph's root
            )
        return y_pred, losses

    def reduce(self, losses: torch.Tensor, jobs: int | None = None) -> torch.Tensor:
        """Mean or sum over the samples (each job's own, when `jobs` are stacked on a leading axis); the losses
        as they are for reduction "none" or a single sample (as in the tutorial)."""
        if self.reduction == "none" or losses.dim() == (0 if jobs is None else 1):
            return losses
        if jobs is not None:
            losses = losses.reshape(jobs, -1)
            return losses.sum(-1) if self.reduction == "sum" else losses.mean(-1)
        return losses.sum() if self.reduction == "sum" else losses.mean()

    def forward(
        self, t: dict[str, torch.Tensor], record: dict[str, torch.Tensor] | None = None, trace: Trace | None = None
    ) -> torch.Tensor:
        """Linear -> sigmoid -> BCE, reduced unless the loss is already a scalar (as in the tutorial)."""
        z = self.linear(t["x"], t["w"], t["b"], trace)
        if self.loss == "bce_with_logits":
            y_pred, losses = torch.sigmoid(z), F.binary_cross_entropy_with_logits(z, t["y"], reduction="none")
            if trace is not None:
                trace.add(("losses", losses))
        else:
            y_pred, losses = self.clamped_bce(z, t["y"], trace=trace)
        if record is not None:
            record.update(z=z, y_pred=y_pred)
        return self.reduce(losses)

    def chain_rule(self, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tutorial's factors per sample, before reduction: dL/dy_pred, dy_pred/dz, dz/dw, dz/db, and DL_DZ (their
        first two's product, not shown); where the clamp bites at some sample, also CLAMP_FACTOR (autograd's clamp
        passes no gradient there: the product is 0)."""
        z = self.linear(t["x"], t["w"], t["b"])
        y_pred = torch.sigmoid(z)
        # 1 - y_pred as sigmoid(-z): the difference cancels (dL/dy_pred 1.06974e+13 for 1.06865e+13 at z = 30) and
        # is 0 once y_pred rounds to 1 (z > ~37), where the factors were inf and 0 and their product nan
        y, one_minus = t["y"], torch.sigmoid(-z)
        dy_pred_dz = y_pred * one_minus
        zero = torch.zeros((), dtype=z.dtype)
        # -y / y_pred + (1 - y) / (1 - y_pred), a term left out where its y makes it 0 (not 0 / 0 where y_pred is 0)
        dl_dy_pred = torch.where(y != 0, -y / y_pred, zero) + torch.where(y != 1, (1 - y) / one_minus, zero)
        factors = {
            "dL/dy_pred": dl_dy_pred,
            "dy_pred/dz": dy_pred_dz,
            "dz/dw": t["x"],
            "dz/db": torch.ones_like(z),
            DL_DZ: y_pred - y,  # the first two's product, finite where they are inf and 0 (|z| > ~745)
        }
        bites = self.clamped(y_pred)
        if bites is not None and bool(bites.any()):
            factors[CLAMP_FACTOR] = (~bites).to(y_pred.dtype)
        return factors

    def clamped(self, y_pred: torch.Tensor) -> torch.Tensor | None:
        """Where the tutorial's clamp bites (y_pred outside [epsilon, 1 - epsilon]: torch.clamp's backward passes no
        gradient there), per sample; None without a clamp (loss "bce_with_logits")."""
        if self.loss != "bce":
            return None
        return (y_pred < self.epsilon) | (y_pred > 1 - self.epsilon)

    def manual(
        self, t: dict[str, torch.Tensor], wrt: tuple[str, ...], dout: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Closed-form gradients by the chain rule on prepared tensors (unclamped: differs where the clamp bites);
        with `dout` (the loss's upstream gradient: one per sample for reduction "none"), each sample's dL/dz
        is scaled by its own, as autograd's vector-Jacobian product is."""
        x, y, w = t["x"], t["y"], t["w"]
        z = self.linear(x, w, t["b"])
        # dL/dy_pred * dy_pred/dz simplifies to y_pred - y, which stays finite where y_pred is 0 or 1
        # the mean over no samples: autograd's gradient is an empty sum, 0; so is this one (and no 1 / 0)
        scale = 1.0 / max(z.numel(), 1) if (self.reduction == "mean" and not self.per_sample and z.dim() > 0) else 1.0
        if dout is not None:
            scale = dout.to(z.dtype) * scale
        dl_dz = (torch.sigmoid(z) - y) * scale
        dl_dz_f = dl_dz.unsqueeze(-1) if self.vector_w else dl_dz
        each_w = dl_dz_f * x  # per sample: dL_i/dw = dL_i/dz_i * x_i
        reduce_w = not self.per_sample and z.dim() > 0
        grads = {
            "w": (each_w.sum(dim=tuple(range(z.dim()))) if self.vector_w else each_w.sum()) if reduce_w else each_w,
            "b": dl_dz.sum() if reduce_w else dl_dz,
            "x": dl_dz_f * w,
            "y": -z * scale,  # dL/dy = -(log y_pred - log(1 - y_pred)) = -z
        }
        return {name: grads[name] for name in wrt}

    def diagnose(self, record: dict[str, torch.Tensor], targets: torch.Tensor | None = None) -> list[str]:
        """Warn where targets are not probabilities, and where the tutorial's clamp bites or cannot help (float32
        rounds 1 - 1e-8 to 1.0). `targets`: y, when not the one prepare() saw (the batch runner's stacked jobs)."""
        return sample_warnings([self.sample_counts(record["y_pred"], targets)])

    def sample_counts(self, y_pred: torch.Tensor, targets: torch.Tensor | None = None) -> SampleCounts:
        """What diagnose() warns about, counted at one point (a check keeps them with the point's reference and
        adds every point's up: sample_warnings)."""
        y = self.targets if targets is None else targets
        counts = SampleCounts(targets=0 if y is None else y.numel(), outside=_outside_unit_interval(y))
        p = y_pred.detach()
        if self.loss != "bce" or p.numel() == 0:
            return counts
        low, high = _clamp_bounds(self.epsilon, p.dtype)
        # one reduction to Python numbers (exact: float32 and float64 values are doubles); the elementwise count
        # only when the clamp bites or a NaN makes min/max say nothing
        lo, hi = _extremes(p)
        clamped = 0 if lo >= low and hi <= high else int(self.clamped(p).sum())
        rounds_to_one = high == 1 and (hi == 1 if hi <= 1 else bool((p == 1).any()))  # hi is NaN or > 1: look
        dtype = str(p.dtype).removeprefix("torch.")
        return counts._replace(samples=p.numel(), clamped=clamped, rounds_to_one=rounds_to_one, dtype=dtype)


class SampleCounts(NamedTuple):
    """A neuron's samples at one point: y's, how many are outside [0, 1] (or NaN); y_pred's (loss "bce" only), how
    many the clamp bites, whether one rounds to 1.0 where 1 - epsilon does too (float32)."""

    targets: int = 0
    outside: int = 0
    samples: int = 0
    clamped: int = 0
    rounds_to_one: bool = False
    dtype: str = "float64"


def sample_warnings(points: list[SampleCounts]) -> list[str]:
    """diagnose()'s warnings for every point's counts at once: each counts the samples of all of them."""
    warnings = []
    outside = sum(c.outside for c in points)
    if outside:
        warnings.append(
            f"y outside [0, 1] for {outside} of {sum(c.targets for c in points)} sample(s): binary cross-entropy "
            "takes probabilities as targets, so the loss is not a cross-entropy there (it can be negative)"
        )
    clamped = sum(c.clamped for c in points)
    if clamped:
        warnings.append(
            f"clamping hit: y_pred outside [epsilon, 1 - epsilon] for {clamped} of {sum(c.samples for c in points)} "
            "sample(s); autograd's gradient through the clamp is 0 there"
        )
    rounds = next((c for c in points if c.rounds_to_one), None)
    if rounds is not None:
        warnings.append(
            f"y_pred rounds to 1.0 in {rounds.dtype}, where 1 - epsilon == 1.0 too, so the clamp cannot keep "
            'log(1 - y_pred) finite; use loss "bce_with_logits" or dtype "float64"'
        )
    return warnings


def _extremes(t: torch.Tensor) -> tuple[float, float]:
    """(min, max) of a non-empty tensor as Python numbers, in one reduction (`.item()` for one element)."""
    if t.numel() == 1:
        value = t.item()
        return value, value
    lo, hi = torch.aminmax(t)
    return lo.item(), hi.item()


def _outside_unit_interval(y: torch.Tensor | None) -> int:
    """How many targets are outside [0, 1] or NaN: binary cross-entropy takes probabilities as targets, elsewhere the
    loss can be negative and means nothing, though it computes. One reduction; the elementwise count only when
    something is outside."""
    if y is None or y.numel() == 0:
        return 0
    lo, hi = _extremes(y.detach())
    if lo >= 0 and hi <= 1:  # False for NaN
        return 0
    return int(((y < 0) | (y > 1) | y.isnan()).sum())


@functools.lru_cache(maxsize=64)
def _clamp_bounds(epsilon: float, dtype: torch.dtype) -> tuple[float, float]:
    """epsilon and 1 - epsilon rounded to `dtype`, as a comparison with a tensor of that dtype sees them."""
    low, high = torch.tensor([epsilon, 1 - epsilon], dtype=dtype).tolist()
    return low, high
