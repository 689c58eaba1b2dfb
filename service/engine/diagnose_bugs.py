"""Name the classic backprop mistake behind a wrong gradient, and the first layer whose intermediate is wrong.

A wrong answer is compared with references computed for each classic mistake (the network re-run with the
mistake built in, or a simple transform of the right answer), at the check's own tolerance: an answer rounded
as the grading allows still gets its mistake named (audit L1). The first mistake it matches exactly (to MATCH)
is named; else the closest of those it matches at the check's tolerance (the first in order on a tie).
"""

from __future__ import annotations

import math
import re

import torch

from . import tolerance
from .closeness import allclose
from .compute import forward_backward
from .network import Network, Variant
from .values import outline, parse_tensor

MATCH = {"rtol": 1e-6, "atol": 1e-9}  # "exactly": this mistake and nothing else (no closer one is looked for)


def _raw(model):
    return getattr(model, "inner", model)


def _parse(values: list) -> list[torch.Tensor] | None:
    """The answer's value at each point as a float64 tensor, or None when one is not a tensor (ragged or mixed
    lists, a number past float64). Called once their outlines fit a mistake: parse_tensor refuses a ragged level
    before it flattens the next, so it never copies more numbers than the outline has."""
    out = []
    for value in values:
        try:
            data = parse_tensor(value)
            out.append(torch.tensor(data.values, dtype=torch.float64).reshape(data.shape))
        except (ValueError, OverflowError):
            return None
    return out


def _fits(shape: tuple[int, ...], c: torch.Tensor, flatten: bool) -> bool:
    """Whether an answer of `shape` (its outline) can be _same() as `c`: only then is it built as a tensor."""
    return shape == tuple(c.shape) or (flatten and math.prod(shape) == c.numel())


def _variant_gradient(grader, variant: Variant, key: str) -> list[torch.Tensor]:
    """`key`'s gradient at every point for the network with the mistake built in."""
    model = grader.model
    wrong = Network(_raw(model).spec, variant=variant)
    wrong.params = _raw(model).params
    if model is not _raw(model):
        wrong = type(model)(wrong, model.dout)
    return [forward_backward(wrong, point, (key,))[3][key] for point in grader.points]


def candidates(grader, key: str, expected: list[torch.Tensor]):
    """(mistake, its wrong gradients) in the order they are tried; computed only when reached."""
    yield (
        "the sign is flipped (a gradient ascent step, or a - where the chain rule has a +)",
        lambda: [-e for e in expected],
    )
    if all(e.dim() == 2 and e.shape[0] > 1 and e.shape[1] > 1 for e in expected):
        yield "it is transposed (check the layout: which axis is in, which is out)", lambda: [e.t() for e in expected]
    model = _raw(grader.model)
    if not isinstance(model, Network) or model.loss["type"] == "none":
        return
    reg = model.l2.get("reg", 0.0)
    if model.loss.get("reduction", "mean") == "mean":
        yield (
            "the 1/N of the mean over samples is missing",
            lambda: _variant_gradient(grader, Variant(data_reduction="sum"), key),
        )
    if reg > 0 and key.startswith("W"):
        yield (
            "the L2 term's gradient is twice too large (d/dW of reg*ΣW² is 2*reg*W; of 0.5*reg*ΣW², reg*W)",
            lambda: _variant_gradient(grader, Variant(l2_scale=2.0), key),
        )
        yield (
            "the L2 term's gradient is half what it should be (d/dW of reg*ΣW² is 2*reg*W)",
            lambda: _variant_gradient(grader, Variant(l2_scale=0.5), key),
        )
    if reg > 0 and key.startswith("b") and not model.l2.get("include_biases"):
        yield (
            "the biases are regularised: the L2 term covers the weights only",
            lambda: _variant_gradient(grader, Variant(l2_biases=True), key),
        )
    block = key[1:]
    dz = [ref["intermediates"].get(f"dZ{block}") for ref in grader.refs]
    if key.startswith("b") and all(d is not None for d in dz):
        axis = 1 - model.layout.samples_axis
        yield (
            "the bias gradient is summed over the wrong axis (over the features; sum dZ over the samples)",
            lambda: [d.sum(axis) for d in dz],
        )
    if any(layer["type"] == "relu" or layer.get("activation") == "relu" for layer in model.layers):
        yield (
            "the ReLU mask is missing in the backward pass (multiply the upstream gradient by (Z > 0))",
            lambda: _variant_gradient(grader, Variant(relu_mask=False), key),
        )


def _shaped(actual: list[torch.Tensor], wrong: list[torch.Tensor], flatten: bool) -> list[torch.Tensor] | None:
    """The answer in the mistake's shapes (reshaped only for a mistake that keeps the count), or None."""
    out = []
    for a, w in zip(actual, wrong, strict=True):
        if a.shape != w.shape:
            if not (flatten and a.numel() == w.numel()):
                return None
            a = a.reshape(w.shape)
        out.append(a)
    return out


def _within(actual: list[torch.Tensor], reference: list[torch.Tensor], rule: dict) -> bool:
    """Whether `actual` would pass a check against `reference` under `rule`: a tolerance profile (tolerance.resolve)
    or the classic {"rtol", "atol"}."""
    if any(a.shape != r.shape for a, r in zip(actual, reference, strict=True)):
        return False
    if "profile" in rule:
        return tolerance.judge(rule, reference, actual).passed
    return all(allclose(a, r, rule["rtol"], rule["atol"]) for a, r in zip(actual, reference, strict=True))


def _distance(actual: list[torch.Tensor], wrong: list[torch.Tensor]) -> float:
    return max(((a - w).abs().max().item() for a, w in zip(actual, wrong, strict=True) if a.numel()), default=0.0)


def diagnose(grader, name: str, answer, expected: list[torch.Tensor], rule: dict) -> str | None:
    """The classic mistake a wrong `gradients.<key>` answer matches at every point under the check's tolerance
    `rule`, or None. Called for failed checks only; a mistake whose values would pass the check is never named."""
    section, _, key = name.partition(".")
    if section != "gradients":
        return None
    values = answer if grader.multi else [answer]
    if not isinstance(values, list) or len(values) != len(expected):
        return None
    shapes = [outline(value) for value in values]
    actual = None  # built once a mistake has the answer's outlines: a mis-shaped answer's numbers are never read
    closest: tuple[float, str] | None = None
    for mistake, make in candidates(grader, key, expected):
        wrong = make()
        pairs = zip(wrong, expected, strict=True)
        if any(w.shape == e.shape and allclose(w, e, **MATCH) for w, e in pairs):
            continue  # this mistake makes no difference here: it cannot be told apart
        flatten = "wrong axis" in mistake
        if not all(_fits(shape, w, flatten) for shape, w in zip(shapes, wrong, strict=True)):
            continue
        if _within(wrong, expected, rule):
            continue  # at this tolerance the mistake's values are right: naming it would mislead
        if actual is None:
            actual = _parse(values)
            if actual is None:
                return None
        shaped = _shaped(actual, wrong, flatten)
        if shaped is None:
            continue
        if _within(shaped, wrong, MATCH):
            return mistake
        if _within(shaped, wrong, rule):
            distance = _distance(shaped, wrong)
            if closest is None or distance < closest[0]:
                closest = (distance, mistake)
    return closest[1] if closest else None


def up_to_first_wrong(grader, checks: list[dict]) -> list[dict]:
    """For networks: the graded intermediates' checks in the order mistakes propagate (forward values in layer order,
    then gradients backwards), up to the first wrong one; [] when none is wrong, when one before it has no answer
    ("first goes wrong at Z1" of a Z1 not given), or not a network."""
    model = _raw(grader.model)
    if not isinstance(model, Network):
        return []
    graded = {
        c["name"].partition(".")[2]: c for c in checks if c["kind"] == "intermediate" and c["expected"] is not None
    }
    order = model.intermediate_order(list(grader.refs[0]["intermediates"]))
    seen = []
    for name in order:
        if name in graded:
            check = graded[name]
            if check["actual"] is None and "actual_summary" not in check:
                return []  # not answered (or unreadable): where the pass first goes wrong is not known (an audit)
            seen.append(check)
            if not check["passed"]:
                return seen
    return []


def first_wrong_layer(checked: list[dict]) -> dict | None:
    """The first wrong intermediate of up_to_first_wrong(), its layer and a message, or None."""
    if not checked:
        return None
    first = checked[-1]["name"].partition(".")[2]
    digits = re.search(r"(\d+)", first)
    layer = int(digits.group(1)) if digits else 0
    where = "backward" if first.startswith("d") else "forward"
    return {
        "intermediate": first,
        "layer": layer,
        "message": f"the {where} pass first goes wrong at {first} (layer {layer}); "
        "the intermediates before it are right",
    }
