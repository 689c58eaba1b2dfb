"""Tolerance profiles for /v1/check, named after the courses whose graders use them.

Each profile has a whole-tensor metric (reported with the verdict) and a per-element rule (for partial credit:
the fraction of elements within tolerance). Values are float64; expected is autograd's reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import feedback

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
    "round_atol": "|round(a, {decimals}) - round(e, {decimals})| <= {atol:g} at every element (MyTorch)",
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
    """The check's profile (its own, else the request's) with defaults filled in; None: the classic rtol/atol rule."""
    profile = options.get("tolerance") or request.get("tolerance")
    if profile is None:
        return None
    settings = {**DEFAULTS[profile["profile"]], **profile}
    if profile["profile"] == "allclose":  # the check's own rtol/atol unless the profile names them
        settings = {"rtol": rtol, "atol": atol, **profile}
    return settings


def rule(profile: dict) -> str:
    return RULES[profile["profile"]].format(**profile)


def _elementwise(profile: dict, a: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-element score, per-element within tolerance) for one point."""
    kind = profile["profile"]
    diff = (a - e).abs()
    if kind in ("rel_error", "norm_ratio"):
        score = diff / torch.clamp(a.abs() + e.abs(), min=1e-8)
        return score, score <= profile["threshold"]
    if kind == "allclose":
        score = diff / (profile["atol"] + profile["rtol"] * e.abs())
        return score, diff <= profile["atol"] + profile["rtol"] * e.abs()
    if kind == "round_atol":
        d = profile["decimals"]
        score = (torch.round(a, decimals=d) - torch.round(e, decimals=d)).abs()
        return score, score <= profile["atol"]
    return diff, a == e


def _metric(profile: dict, a: torch.Tensor, e: torch.Tensor, score: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    if profile["profile"] == "norm_ratio":
        denominator = (torch.linalg.vector_norm(a) + torch.linalg.vector_norm(e)).item()
        return torch.linalg.vector_norm(a - e).item() / denominator if denominator else 0.0
    return score.max().item()


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
    metrics, oks = [], []
    for e, a in zip(expected, actual, strict=True):
        score, ok = _elementwise(profile, a, e)
        oks.append(ok | (torch.isnan(a) & torch.isnan(e)))
        metrics.append(_metric(profile, a, e, score))
    if profile["profile"] == "norm_ratio":
        point_passed = [m <= limit_of(profile) for m in metrics]  # False for NaN
    else:
        point_passed = [bool(ok.all()) for ok in oks]
    failing = [i for i, p in enumerate(point_passed) if not p]
    worst = failing[0] if failing else max(range(len(metrics)), key=metrics.__getitem__)
    within, total = sum(int(ok.sum()) for ok in oks), sum(ok.numel() for ok in oks)
    return Verdict(
        passed=not failing,
        metric=metrics[worst],
        fraction=within / total if total else 1.0,
        worst_point=worst,
        bad_elements=total - within,
        elements=total,
    )


def apply(result: dict, expected: list[torch.Tensor], actual: list[torch.Tensor], profile: dict, at) -> None:
    """Fill a check result from the profile's verdict: passed, points (partial credit), message, `tolerance`."""
    verdict = judge(profile, expected, actual)
    e, a = expected[verdict.worst_point], actual[verdict.worst_point]
    finite = bool(torch.isfinite(a).all() and torch.isfinite(e).all())
    pairs = [(x, y) for x, y in zip(actual, expected, strict=True) if x.numel()]  # empty tensors have no error
    result["abs_error"] = max(((x - y).abs().max().item() for x, y in pairs), default=0.0) if finite else None
    rel = [((x - y).abs() / torch.clamp(y.abs() + x.abs(), min=1e-8)).max().item() for x, y in pairs]
    result["rel_error"] = max(rel, default=0.0) if finite else None
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
            result["message"] += (
                f" (you gave {a.reshape(-1)[0].item():.6g}, autograd gives {e.reshape(-1)[0].item():.6g})"
            )
    if profile.get("partial_credit"):
        result["points"] = result["max_points"] * verdict.fraction
        result["message"] += f"; partial credit {verdict.fraction:.0%} of {result['max_points']:g} points"
