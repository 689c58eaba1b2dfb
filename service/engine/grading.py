"""Grading: a submission's numbers and derivative formulas against autograd (float64)."""
from __future__ import annotations

import math

import numpy as np
import torch

from schemas.fields import NON_FINITE, parse_tensor

from . import refcache
from .compute import build_model, check_sizes, forward_backward
from .encode import encode_tree
from .errors import EngineError, LimitExceeded
from .formula import parse_formula
from .limits import Deadline, Limits
from .neuron import Neuron

TOLERANCE_RULE = "passed when |actual - expected| <= atol + rtol * |expected| at every element of every point (expected = autograd, float64)"
KIND_BY_SECTION = {"loss": "loss", "gradients": "gradient", "intermediates": "intermediate", "gradient_formulas": "gradient_formula"}
SECTIONS = ("loss", "gradients", "intermediates", "gradient_formulas")
# the chain-rule factors the tutorial multiplies for each neuron parameter
CHAIN_FACTORS = {"w": ("dL/dy_pred", "dy_pred/dz", "dz/dw"), "b": ("dL/dy_pred", "dy_pred/dz", "dz/db")}


# --- points -------------------------------------------------------------------------------------

def _tensor(data) -> torch.Tensor:
    return torch.tensor(data.values, dtype=torch.float64).reshape(data.shape)


def make_points(request: dict, limits: Limits) -> list[dict[str, torch.Tensor]]:
    """The points to grade at, as float64 tensors: `inputs`, `points`, or `domain` draws (seeded, deterministic)."""
    if "points" in request:
        for point in request["points"]:
            check_sizes(point, limits)
        points = [{name: _tensor(data) for name, data in point.items()} for point in request["points"]]
    else:
        base = request.get("inputs", {})
        check_sizes(base, limits)
        fixed = {name: _tensor(data) for name, data in base.items()}
        domain = request.get("domain")
        if not domain:
            return [fixed]
        n = request.get("n_points", 5)
        generator = torch.Generator().manual_seed(request.get("seed", 0))
        points = []
        for _ in range(n):
            point = dict(fixed)
            for name in sorted(domain):  # sorted: the draw order does not depend on the JSON key order
                lo, hi = domain[name]
                shape = fixed[name].shape if name in fixed else ()
                point[name] = lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=torch.float64)
            points.append({name: point[name] for name in sorted(point)})
    total = sum(t.numel() for point in points for t in point.values())
    if total > limits.max_total_elements:
        raise LimitExceeded(
            "max_total_elements", limits.max_total_elements,
            f"the points have {total} elements in total; the limit is {limits.max_total_elements}",
        )
    return points


# --- the reference ------------------------------------------------------------------------------

def reference(model, point: dict[str, torch.Tensor], deadline: Deadline) -> dict:
    """Autograd at one point, every input a leaf: loss, gradients, intermediates, and the neuron's chain-rule factors."""
    leaves, out, record, gradients = forward_backward(model, point, tuple(point))
    deadline.check()
    detached = {k: v.detach() for k, v in leaves.items()}
    return {
        "loss": out.detach(),
        "gradients": gradients,
        "intermediates": {k: t.detach() for k, t in record.items()},
        "chain_rule": model.chain_rule(detached) if isinstance(model, Neuron) else None,
        "warnings": model.diagnose(record),
    }


# --- checks -------------------------------------------------------------------------------------

def plan_checks(request: dict) -> tuple[list[tuple[str, dict]], list[str]]:
    """(check name, options) in order: the request's `checks`, or every answer in the submission at 1 point each."""
    submission, configured = request["submission"], request.get("checks")
    given = []
    for section in SECTIONS:
        if section == "loss":
            given += ["loss"] if "loss" in submission else []
        else:
            given += [f"{section}.{key}" for key in submission.get(section, {})]
    if configured is None:
        return [(name, {"points": 1.0, "visibility": "visible"}) for name in given], []
    ignored = [name for name in given if name not in configured]
    warnings = [f"{name}: answer not graded (not among the request's checks)" for name in ignored]
    return list(configured.items()), warnings


def _answer(submission: dict, name: str):
    section, _, key = name.partition(".")
    if section == "loss":
        return submission.get("loss")
    return submission.get(section, {}).get(key)


def _fmt(t) -> str:
    """A short human rendering of a number or small tensor."""
    if isinstance(t, torch.Tensor):
        if t.numel() == 1:
            t = t.reshape(()).item()
        elif t.numel() <= 6:
            return "[" + ", ".join(_fmt(v) for v in t.reshape(-1).tolist()) + "]"
        else:
            return f"tensor of shape {list(t.shape)}"
    if isinstance(t, float):
        return f"{t:.6g}"
    return str(t)


def _describe_point(point: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())


class Grader:
    """Grades one check request: references at every point, then each check against them."""

    def __init__(self, request: dict, limits: Limits) -> None:
        self.request, self.limits = request, limits
        self.deadline = Deadline(limits.max_wall_seconds)
        self.points = make_points(request, limits)
        self.model, self.refs = refcache.references(request["model"], self.points, limits, self._references)
        self.is_neuron = isinstance(self.model, Neuron)
        self.multi = "inputs" not in request or "domain" in request or "points" in request
        self.warnings: list[str] = []
        for ref in self.refs:
            self.warnings += [w for w in ref["warnings"] if w not in self.warnings]

    def _references(self) -> tuple[object, list[dict]]:
        """The model and its autograd reference at every point (what refcache keeps per problem)."""
        model = build_model(self.request["model"], self.limits, self.deadline)
        return model, [reference(model, p, self.deadline) for p in self.points]

    def title(self, name: str) -> str:
        section, _, key = name.partition(".")
        f = "L" if self.is_neuron else "f"
        if section == "loss":
            return "the loss L" if self.is_neuron else f"f = {self.model.formula.source}"
        if section in ("gradients", "gradient_formulas"):
            return f"d{f}/d{key}" + (" (formula)" if section == "gradient_formulas" else "")
        return f"intermediate {key}"

    def expected(self, name: str, i: int) -> torch.Tensor | None:
        section, _, key = name.partition(".")
        ref = self.refs[i]
        if section == "loss":
            return ref["loss"]
        if section == "intermediates":
            return ref["intermediates"].get(key)
        return ref["gradients"].get(key)

    def run(self) -> dict:
        plan, ignored = plan_checks(self.request)
        self.warnings += ignored
        checks = [self.check(name, options) for name, options in plan]
        score = sum(c["points"] for c in checks)
        max_score = sum(c["max_points"] for c in checks)
        passed = sum(c["passed"] for c in checks)
        body = {
            "score": score,
            "max_score": max_score,
            "passed": passed == len(checks),
            "rtol": self.request["rtol"],
            "atol": self.request["atol"],
            "tolerance_rule": TOLERANCE_RULE,
            "n_points": len(self.points),
            "points": self.points,
            "checks": checks,
            "summary": f"{passed} of {len(checks)} checks passed; score {score:g} of {max_score:g}",
        }
        body = encode_tree(body, self.warnings)
        body["warnings"] = self.warnings
        return body

    # one check ------------------------------------------------------------------------------------

    def check(self, name: str, options: dict) -> dict:
        section, _, key = name.partition(".")
        rtol = options.get("rtol", self.request["rtol"])
        atol = options.get("atol", self.request["atol"])
        result = {
            "name": name, "title": options.get("title") or self.title(name), "kind": KIND_BY_SECTION[section],
            "expected": None, "actual": None, "formula": None, "abs_error": None, "rel_error": None,
            "rtol": rtol, "atol": atol, "passed": False, "points": 0.0, "max_points": options["points"],
            "message": "", "worst_point": None, "chain_rule": None, "visibility": options["visibility"],
        }
        expected = [self.expected(name, i) for i in range(len(self.points))]
        if any(e is None for e in expected):
            known = self._known(section)
            result["message"] = f"{name}: there is no {section[:-1] if section != 'loss' else 'loss'} named {key!r} to grade; known: {known}"
            return result
        result["expected"] = expected if self.multi else expected[0]
        answer = _answer(self.request["submission"], name)
        if answer is None:
            result["message"] = f"{result['title']}: no answer given (add {self._where(name)} to the submission)"
            return result
        if section == "gradient_formulas":
            result["formula"] = answer
            actual, problem = self._formula_values(answer, expected)
        else:
            result["actual"] = answer
            actual, problem = self._numbers(answer, expected)
        if problem:
            result["message"] = f"{result['title']}: {problem}"
            return result
        if section == "gradient_formulas":
            result["actual"] = actual if self.multi else actual[0]
        self._compare(result, expected, actual, rtol, atol, section, key)
        return result

    def _known(self, section: str) -> str:
        ref = self.refs[0]
        names = ref["intermediates"] if section == "intermediates" else ref["gradients"]
        return ", ".join(names) or "none"

    @staticmethod
    def _where(name: str) -> str:
        section, _, key = name.partition(".")
        return '"loss"' if section == "loss" else f'"{section}": {{"{key}": ...}}'

    def _numbers(self, answer, expected: list[torch.Tensor]) -> tuple[list[torch.Tensor] | None, str | None]:
        """The answer as one float64 tensor per point, or why it cannot be compared (a failed check, not an error)."""
        values = [answer]
        if self.multi:
            if not isinstance(answer, list) or len(answer) != len(expected):
                got = f"{len(answer)} value(s)" if isinstance(answer, list) else "a single number"
                return None, f"expected a list with one value per point ({len(expected)} points), got {got}"
            values = answer
        out = []
        for i, (value, e) in enumerate(zip(values, expected)):
            try:
                data = parse_tensor(value)
            except Exception as err:  # marshmallow's ValidationError: ragged or mixed lists
                msg = err.messages[0] if hasattr(err, "messages") and isinstance(err.messages, list) else str(err)
                return None, f"the answer{self._at(i)} is not a number or a rectangular list: {msg}"
            t = torch.tensor([NON_FINITE.get(v, v) for v in data.values], dtype=torch.float64).reshape(data.shape)
            if t.shape != e.shape:
                return None, f"wrong shape{self._at(i)}: expected shape {list(e.shape)}, got {list(t.shape)}"
            out.append(t)
        return out, None

    def _formula_values(self, source: str, expected: list[torch.Tensor]):
        """Evaluate the submitted formula at every point with the safe evaluator; errors become messages."""
        try:
            formula = parse_formula(source, self.limits)
            out = []
            for i, point in enumerate(self.points):
                with torch.no_grad():
                    value = formula.evaluate(point, dtype=torch.float64, deadline=self.deadline)
                e = expected[i]
                try:
                    value = torch.broadcast_to(value, e.shape).clone()
                except RuntimeError:
                    return None, f"your formula {source!r} gives shape {list(value.shape)}{self._at(i)}, but the gradient has shape {list(e.shape)}"
                out.append(value)
            return out, None
        except LimitExceeded as err:
            if err.limit == "max_wall_seconds":
                raise
            return None, f"your formula {source!r} is too large: {err.detail}"
        except EngineError as err:
            if err.slug == "deadline-exceeded":
                raise
            return None, f"your formula {source!r} could not be evaluated: {err.detail}"

    def _at(self, i: int) -> str:
        return f" at point {i} ({_describe_point(self.points[i])})" if self.multi else ""

    def _compare(self, result: dict, expected, actual, rtol: float, atol: float, section: str, key: str) -> None:
        # numpy views of the float64 tensors: the same IEEE arithmetic as torch's, at a fraction of the per-op cost
        expected = [e.detach().numpy() for e in expected]
        actual = [a.detach().numpy() for a in actual]
        abs_max, rel_max, finite, failed_at, errors = 0.0, None, True, None, []
        with np.errstate(all="ignore"):  # inf - inf is nan and 1e308 / 1e-9 is inf here, as in torch: no warnings
            for i, (e, a) in enumerate(zip(expected, actual)):
                close = _isclose(a, e, rtol, atol)
                diff = np.abs(a - e)
                both = np.isfinite(a) & np.isfinite(e)
                if (~close & ~both).any():
                    finite = False
                if not close.all() and failed_at is None:
                    failed_at = i
                errors.append(float(diff[both].max()) if both.any() else 0.0)
                if both.any():
                    abs_max = max(abs_max, errors[-1])
                    nz = both & (e != 0)
                    if nz.any():
                        r = float((diff[nz] / np.abs(e[nz])).max())
                        rel_max = r if rel_max is None else max(rel_max, r)
        worst = failed_at if failed_at is not None else max(range(len(errors)), key=errors.__getitem__, default=None)
        result["abs_error"] = abs_max if finite and math.isfinite(abs_max) else None
        result["rel_error"] = rel_max if finite and rel_max is not None and math.isfinite(rel_max) else None
        result["worst_point"] = worst
        i = worst if worst is not None else 0
        if self.is_neuron and key in CHAIN_FACTORS and section in ("gradients", "gradient_formulas"):
            factors = self.refs[i]["chain_rule"]
            result["chain_rule"] = {name: factors[name] for name in CHAIN_FACTORS[key]}
        title, n = result["title"], len(expected)
        if failed_at is None:
            result.update(passed=True, points=result["max_points"])
            where = f" at all {n} points (max abs error" if self.multi else " (abs error"
            result["message"] = f"{title} is correct{where} {abs_max:.3g})"
            return
        e, a = expected[failed_at], actual[failed_at]
        bad = ~_isclose(a, e, rtol, atol).reshape(-1)
        with np.errstate(invalid="ignore"):
            diff = a - e
        diff = np.where(np.isnan(diff), np.inf, np.abs(diff)).reshape(-1)
        j = int(np.where(bad, diff, -1.0).argmax())
        ev, av = float(e.reshape(-1)[j]), float(a.reshape(-1)[j])
        elem = f"[{', '.join(map(str, _unravel(j, e.shape)))}]" if e.ndim else ""
        n_bad = int(bad.sum())
        allowed = atol + rtol * abs(ev)
        what = f"your formula gives {av:.6g}" if section == "gradient_formulas" else f"you gave {av:.6g}"
        msg = f"{title}{elem} is off{self._at(failed_at)}: {what}, autograd gives {ev:.6g}"
        if math.isfinite(av) and math.isfinite(ev):
            rel = f", {abs(av - ev) / abs(ev):.3g} relative" if ev else ""
            msg += f" (off by {av - ev:+.3g}{rel}; allowed {allowed:.3g} = atol {atol:g} + rtol {rtol:g} * |expected|)"
        if e.size > 1:
            msg += f"; {n_bad} of {e.size} elements are off"
        if self.multi:
            bad_points = sum(not _isclose(a2, e2, rtol, atol).all() for e2, a2 in zip(expected, actual))
            msg += f"; wrong at {bad_points} of {n} points"
        if result["chain_rule"] is not None:
            msg += "; " + self._chain_text(key, failed_at)
        result["message"] = msg

    def _chain_text(self, key: str, i: int) -> str:
        factors = self.refs[i]["chain_rule"]
        names = CHAIN_FACTORS[key]
        parts = " * ".join(f"{name} ({_fmt(factors[name])})" for name in names)
        text = f"chain rule: dL/d{key} = {parts}"
        if all(factors[name].numel() == 1 for name in names):
            product = math.prod(factors[name].item() for name in names)
            text += f" = {product:.6g}"
        reduction = self.model.reduction
        samples = self.refs[i]["intermediates"]["z"].numel()
        if samples > 1 and not self.model.per_sample:
            text += f", per sample, then {'averaged' if reduction == 'mean' else 'summed'} over the {samples} samples (reduction {reduction!r})"
        return text


def _isclose(a: np.ndarray, e: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """torch.isclose(a, e, rtol, atol, equal_nan=True) exactly (numpy's own isclose differs at infinities)."""
    with np.errstate(all="ignore"):
        err = np.abs(a - e)
        return (a == e) | (np.isnan(a) & np.isnan(e)) | (np.isfinite(err) & (err <= atol + np.abs(rtol * e)))


def _unravel(index: int, shape: tuple) -> list[int]:
    out = []
    for size in reversed(shape):
        out.append(index % size)
        index //= size
    return out[::-1]


def grade(request: dict, limits: Limits) -> dict:
    """Run a loaded CheckRequestSchema body; returns the JSON-ready check response."""
    return Grader(request, limits).run()


# --- platform formats ---------------------------------------------------------------------------

def _test_output(check: dict) -> str:
    lines = [check["message"]]
    if check["formula"] is not None:
        lines.append(f"your formula: {check['formula']}")
    lines.append(f"tolerance: atol {check['atol']:g}, rtol {check['rtol']:g}")
    return "\n".join(lines)


def _overall_output(result: dict) -> str:
    lines = [result["summary"], f"Tolerance: {result['tolerance_rule']}."]
    lines += [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)


def to_gradescope(result: dict) -> dict:
    """A Gradescope results.json body: top-level score, output and visibilities, one test per check."""
    return {
        "score": result["score"],
        "output": _overall_output(result),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "extra_data": {"max_score": result["max_score"], "rtol": result["rtol"], "atol": result["atol"]},
        "tests": [
            {
                "name": c["title"] if c["title"] == c["name"] else f"{c['title']} ({c['name']})",
                "number": str(i + 1),
                "score": c["points"],
                "max_score": c["max_points"],
                "status": "passed" if c["passed"] else "failed",
                "output": _test_output(c),
                "visibility": c["visibility"],
            }
            for i, c in enumerate(result["checks"])
        ],
    }


def to_prairielearn(result: dict) -> dict:
    """A PrairieLearn external grader result: score as a fraction in [0, 1], one test per check."""
    if result["max_score"] > 0:
        score = min(1.0, max(0.0, result["score"] / result["max_score"]))
    else:
        score = 1.0 if result["passed"] else 0.0
    return {
        "gradable": True,
        "succeeded": True,
        "score": score,
        "format_errors": [],
        "message": result["summary"],
        "output": _overall_output(result),
        "tests": [
            {
                "name": c["title"],
                "description": c["name"],
                "points": c["points"],
                "max_points": c["max_points"],
                "message": c["message"],
                "output": _test_output(c),
            }
            for c in result["checks"]
        ],
    }
