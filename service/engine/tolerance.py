"""Tolerance profiles for /v1/check, named after the courses whose graders use them.

Each profile has a whole-tensor metric (reported with the verdict) and a per-element rule (for partial credit:
the fraction of elements within tolerance). Values are float64; expected is autograd's reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import echo, feedback

DEFAULTS = {
    "rel_error": {"threshold": 1e-7},
    "norm_ratio": {"threshold": 2e-7},
    "allclose": {"rtol": 1e-5, "atol": 1e-8},
    "round_atol": {"decimals": 4, "atol": 1e-4},
    "exact": {},
}
RULES = {
    "rel_error": "max |a - e| / max(1e-8, |a| + |e|) <= {threshold:g} (CS231n's rel_error)",
    "norm_ratio": "||a - e|| / (||a|| + ||e||) <= {threshold:g} (deeplearning.ai's gradient check)",
    "allclose": "|a - e| <= {atol:g} + {rtol:g} * |e| at every element (numpy/torch allclose)",
    "round_atol": "|round(a, {decimals}) - round(e, {decimals})| <= {atol:g} at every element, counted in whole units"
    " of 10**-{decimals} (MyTorch)",
    "exact": "a == e at every element (backprop ninja's exact)",
}
METRICS = {
    "rel_error": "max relative error",
    "norm_ratio": "norm ratio",
    "allclose": "max |a - e| / (atol + rtol * |e|)",
    "round_atol": "max |round(a) - round(e)|",
    "exact": "max |a - e|",
}


def resolve(options: dict, request: dict, rtol: float, atol: float) -> dict | None:
    """The check's profile with defaults filled in; None: the classic rtol/atol rule at `rtol`/`atol` (the check's
    own, else the request's). The more specific setting wins: the check's own profile, else the request's (an
    `allclose` takes the check's own rtol/atol over its own), else the classic rule. The schema refuses a check's
    own rtol/atol under a request's other profile (schemas/grading.py, own_tolerances_under_a_profile): neither
    reading of them was safe (a second ninth audit)."""
    profile = options.get("tolerance")
    if profile is None:
        profile = request.get("tolerance")
        if profile is None:
            return None
        if profile["profile"] == "allclose":  # the request's rtol/atol unless it names them, the check's above all
            return {"rtol": rtol, "atol": atol, **profile, **{k: options[k] for k in ("rtol", "atol") if k in options}}
    if profile["profile"] == "allclose":  # the check's own rtol/atol unless the profile names them
        return {"rtol": rtol, "atol": atol, **profile}
    return {**DEFAULTS[profile["profile"]], **profile}


def rule(profile: dict) -> str:
    return RULES[profile["profile"]].format(**profile)


class _Flat:
    """Every point's values in one float64 array, compared in numpy (the same IEEE double arithmetic as torch) with
    one call per operation for all points: per point and torch op by op, a profile cost ~15-20 ops a point."""

    def __init__(self, profile: dict, expected: list[torch.Tensor], actual: list[torch.Tensor]) -> None:
        self.sizes = [e.numel() for e in expected]
        self.nonempty = [i for i, n in enumerate(self.sizes) if n]
        self.starts = np.cumsum([0, *self.sizes[:-1]])[self.nonempty]
        e, a = _values(expected), _values(actual)
        with np.errstate(all="ignore"):  # inf - inf is nan and 1 / 1e-300 is inf, as in torch: no warnings
            self.diff = np.abs(a - e)
            self.rel = self.diff / np.maximum(np.abs(a) + np.abs(e), 1e-8)  # CS231n's rel_error, per element
            self.score, ok = _elementwise(profile, a, e, self.diff, self.rel)
        self.ok = ok | (np.isnan(a) & np.isnan(e))

    def per_point(self, ufunc: np.ufunc, values: np.ndarray, empty) -> list:
        """ufunc's reduction over each point's elements (`empty` for a point without any), as Python scalars."""
        out = [empty] * len(self.sizes)
        if self.nonempty:
            for i, value in zip(self.nonempty, ufunc.reduceat(values, self.starts).tolist(), strict=True):
                out[i] = value
        return out


def _values(tensors: list[torch.Tensor]) -> np.ndarray:
    """The points' elements in one array (order is free: max, all and counts ignore it)."""
    if all(t.shape == tensors[0].shape for t in tensors):  # one call, not one per point
        return torch.stack(tensors).detach().numpy().reshape(-1)
    return np.concatenate([t.detach().numpy().reshape(-1) for t in tensors])


def _elementwise(profile: dict, a: np.ndarray, e: np.ndarray, diff: np.ndarray, rel: np.ndarray):
    """(per-element score, per-element within tolerance)."""
    kind = profile["profile"]
    if kind in ("rel_error", "norm_ratio"):
        return rel, rel <= profile["threshold"]
    if kind == "allclose":
        bound = profile["atol"] + profile["rtol"] * np.abs(e)
        return diff / bound, diff <= bound
    if kind == "round_atol":
        # In whole units of the rounding, 10**-decimals: rint(x * 10**d) as torch.round(x, decimals=d) takes it, and
        # the difference of two such integers is exact. The difference of the rounded floats was one unit give or
        # take an ulp (0.12346 vs 0.12344: 0.00010000000000000286 > 1e-4, failed; 0.50006 vs 0.50004 passed).
        scale = 10.0 ** profile["decimals"]
        units = np.where(a == e, 0.0, np.abs(np.rint(a * scale) - np.rint(e * scale)))
        allowed = profile["atol"] * scale  # atol in units (1e-4 at 4 decimals: 1), read to a billionth of a unit
        return units / scale, units <= allowed + 1e-9 * max(1.0, allowed)
    return diff, a == e


def _norm_ratios(expected: list[torch.Tensor], actual: list[torch.Tensor]) -> list[float]:
    """||a - e|| / (||a|| + ||e||) at each point, by torch's norms: a sum's rounding depends on the order of its
    terms, and torch sums a tensor in memory order. Points of one shape, all contiguous, are normed as the rows of
    one matrix: torch reduces each row as it reduces that tensor alone (the last-dimension kernel). Each point is
    scaled first (_scaled), as LAPACK's nrm2 is: squared unscaled, values past ~1e154 overflowed and below ~1e-162
    underflowed (1e-170 against 5e-170 had ratio 0 and passed, a ninth audit)."""
    norm = torch.linalg.vector_norm
    if all(t.shape == expected[0].shape and t.is_contiguous() for t in (*expected, *actual)):
        a, e = (torch.stack(ts).reshape(len(ts), expected[0].numel()).detach().numpy() for ts in (actual, expected))
        a, e = _scaled(a, e, axis=1) if a.size else (a, e)
        a, e = torch.from_numpy(a), torch.from_numpy(e)
        pairs = zip(norm(a - e, dim=1).tolist(), (norm(a, dim=1) + norm(e, dim=1)).tolist(), strict=True)
    else:
        pairs = (
            _norm_pair(*_scaled(a.detach().numpy(), e.detach().numpy())) if e.numel() else (0.0, 0.0)
            for e, a in zip(expected, actual, strict=True)
        )
    return [difference / denominator if denominator else 0.0 for difference, denominator in pairs]


def _norm_pair(a: np.ndarray, e: np.ndarray) -> tuple[float, float]:
    """(||a - e||, ||a|| + ||e||) of one point, in torch (its memory order kept: np.ldexp keeps a view's layout)."""
    norm = torch.linalg.vector_norm
    a, e = torch.from_numpy(a), torch.from_numpy(e)
    return norm(a - e).item(), (norm(a) + norm(e)).item()


def _scaled(a: np.ndarray, e: np.ndarray, axis=None) -> tuple[np.ndarray, np.ndarray]:
    """`a` and `e` (each row of them, with axis=1) times the power of two that brings their largest |value| into
    [0.5, 1): exactly (np.ldexp), so a ratio is the very float it was wherever nothing over- or underflowed; zeros,
    NaN and infinities are left as they are."""
    peak = np.maximum(np.abs(a).max(axis=axis), np.abs(e).max(axis=axis))
    shift = -np.frexp(peak)[1]
    if axis is not None:
        shift = shift[:, None]
    return np.asarray(np.ldexp(a, shift)), np.asarray(np.ldexp(e, shift))


@dataclass
class Verdict:
    passed: bool
    metric: float  # the worst point's
    fraction: float  # elements within tolerance, over every point
    worst_point: int
    bad_elements: int
    elements: int


def limit_of(profile: dict) -> float:
    """The number the metric is held to: the threshold, allclose's ratio 1, round_atol's atol, exact's 0."""
    return profile.get("threshold", 1.0 if profile["profile"] == "allclose" else profile.get("atol", 0.0))


def judge(profile: dict, expected: list[torch.Tensor], actual: list[torch.Tensor]) -> Verdict:
    """The verdict over every point: it passes when every point passes (norm_ratio: per tensor, else per element)."""
    return _judge(profile, expected, actual, _Flat(profile, expected, actual))


def _judge(profile: dict, expected: list[torch.Tensor], actual: list[torch.Tensor], flat: _Flat) -> Verdict:
    if profile["profile"] == "norm_ratio":
        metrics = _norm_ratios(expected, actual)
        point_passed = [m <= limit_of(profile) for m in metrics]  # False for NaN
    else:
        metrics = flat.per_point(np.maximum, flat.score, 0.0)  # NaN wherever a point's score has one, as torch's max
        point_passed = flat.per_point(np.logical_and, flat.ok, True)
    failing = [i for i, p in enumerate(point_passed) if not p]
    worst = failing[0] if failing else max(range(len(metrics)), key=metrics.__getitem__)
    ok = flat.ok
    if failing and profile["profile"] == "norm_ratio":
        ok = _largest_errors_outside(flat, failing)
    within, total = int(ok.sum()), ok.size
    return Verdict(
        passed=not failing,
        metric=metrics[worst],
        fraction=within / total if total else 1.0,
        worst_point=worst,
        bad_elements=total - within,
        elements=total,
    )


def _largest_errors_outside(flat: _Flat, failing: list[int]) -> np.ndarray:
    """norm_ratio's elements within tolerance, where a point the norm ratio fails has its largest |a - e| outside
    even when that element's relative error is within the threshold: a failed check has an element outside, so
    partial credit never awards it all its points (a reference of 0 against 1e-15 was "failed", 2 of 2 points: a
    ninth audit)."""
    ok = flat.ok.copy()
    offsets = np.cumsum([0, *flat.sizes])
    for i in failing:
        start, end = offsets[i], offsets[i + 1]
        if ok[start:end].all():  # a point failing has elements: an empty point's ratio is 0
            ok[start + int(np.argmax(flat.diff[start:end]))] = False
    return ok


def _largest(per_point: list) -> float | None:
    """The largest of the points' errors (0 without elements); None when one is not finite, as in the classic
    rule: null in every format (a worst point that was finite let another point's infinity through, which JSON
    wrote as null and Gradescope as "Infinity")."""
    errors = [x for x in per_point if x is not None]
    return max(errors, default=0.0) if all(math.isfinite(x) for x in errors) else None


def apply(result: dict, expected: list[torch.Tensor], actual: list[torch.Tensor], profile: dict, at) -> None:
    """Fill a check result from the profile's verdict: passed, points (partial credit), message, `tolerance`."""
    flat = _Flat(profile, expected, actual)
    verdict = _judge(profile, expected, actual, flat)
    e, a = expected[verdict.worst_point], actual[verdict.worst_point]
    finite = bool(torch.isfinite(a).all() and torch.isfinite(e).all())  # at the worst point: the message's "off by"
    result["abs_error"] = _largest(flat.per_point(np.maximum, flat.diff, None))
    result["rel_error"] = _largest(flat.per_point(np.maximum, flat.rel, None))
    result["worst_point"] = verdict.worst_point
    limit = limit_of(profile)
    result["tolerance"] = {
        "profile": profile["profile"],
        "metric": METRICS[profile["profile"]],
        "value": verdict.metric,
        "threshold": limit,
        "fraction_within": verdict.fraction,
        "rule": rule(profile),
        "partial_credit": profile.get("partial_credit", False),
    }
    title, name = result["title"], METRICS[profile["profile"]]
    mode = result.get("feedback", feedback.DEFAULT)  # what the message may say of the reference: feedback.py
    if verdict.passed:
        result.update(passed=True, points=result["max_points"])
        result["message"] = f"{title} is correct ({name} {verdict.metric:.3g}, within {limit:g})"
        if mode == "verdict":
            result["message"] = f"{title} is correct"
        return
    share = f"{verdict.bad_elements} of {verdict.elements} elements are outside tolerance"
    if mode == "verdict":
        result["message"] = f"{title} is not correct"
    elif mode == "error":  # the metric's value and the answer give the reference: the metric's limit only
        result["message"] = f"{title} is off{at(verdict.worst_point)}: {name} above {limit:g}; {share}"
        if e.numel() == 1:
            got, want = a.reshape(-1)[0].item(), e.reshape(-1)[0].item()
            off = f", off by {feedback.band(got, want)} of the right value" if finite else ""
            result["message"] += f" (you gave {got:.6g}{off})"
    else:
        result["message"] = f"{title} is off{at(verdict.worst_point)}: {name} {verdict.metric:.3g} > {limit:g}; {share}"
        if e.numel() == 1:
            got, want = echo.apart(a.reshape(-1)[0].item(), e.reshape(-1)[0].item())
            result["message"] += f" (you gave {got}, autograd gives {want})"
    if profile.get("partial_credit"):
        result["points"] = result["max_points"] * verdict.fraction
        result["message"] += f"; partial credit {verdict.fraction:.0%} of {result['max_points']:g} points"
