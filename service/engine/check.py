"""Grading: a submission's numbers and derivative formulas against autograd (float64)."""

from __future__ import annotations

import ast
import math
import re
from itertools import islice

import numpy as np
import orjson
import torch

from . import cost, diagnose_bugs, echo, feedback, refcache, tolerance
from .closeness import isclose, isclose_number
from .compute import build_model, forward_backward
from .encode import EncodedPart, encode_tree, encoded_finite, encoded_tensors
from .errors import ClampedReference, DeadlineExceeded, EngineError, LimitExceeded, NonFiniteReference
from .formula import canonical_text, parse_formula
from .jacobian import upstream
from .limits import Deadline, Limits
from .neuron import CLAMP_FACTOR, DL_DZ, Neuron, sample_warnings
from .score import total
from .values import parse_tensor, tensor_shape

TOLERANCE_RULE = (
    "passed when |actual - expected| <= atol + rtol * |expected| at every element of every point"
    " (expected = autograd, float64)"
)
KIND_BY_SECTION = {
    "loss": "loss",
    "gradients": "gradient",
    "intermediates": "intermediate",
    "gradient_formulas": "gradient_formula",
}
SECTIONS = ("loss", "gradients", "intermediates", "gradient_formulas")
# A misnamed check's message names at most this many known names, in at most this many characters, then
# "and N more": a 40-term formula has ~22 KB of intermediate names, once per misnamed check (audit finding 4).
KNOWN_NAMES = 20
KNOWN_CHARS = 1000
# A message shows at most this many of a point's inputs, then how many there are.
POINT_INPUTS = 8
# An answer no check names gets a warning; the first UNGRADED_NAMED by name, the rest in one with their count: 256 such
# answers a job wrote ~15 KB of warnings each, 18.7 MB for a batch of 1000 jobs (an audit).
UNGRADED = "answer not graded (not among the request's checks)"
UNGRADED_NAMED = 8
# encode_tree's path of a check's `actual`: the student's values, never warned about
STUDENT_VALUE = re.compile(r"checks\[\d+\]\.actual\b")
# the chain-rule factors the tutorial multiplies for each neuron parameter
CHAIN_FACTORS = {"w": ("dL/dy_pred", "dy_pred/dz", "dz/dw"), "b": ("dL/dy_pred", "dy_pred/dz", "dz/db")}
LOGITS = 'loss "bce_with_logits"'  # the neuron's loss without the tutorial's clamp


# --- points -------------------------------------------------------------------------------------


def _tensor(data) -> torch.Tensor:
    return torch.tensor(data.values, dtype=torch.float64).reshape(data.shape)


def make_points(request: dict, limits: Limits) -> list[dict[str, torch.Tensor]]:
    """The points to grade at, as float64 tensors: `inputs`, `points`, or `domain` draws (seeded, deterministic).

    Sizes were checked by the cost model (cost.domain_points) before this is called."""
    if "points" in request:
        return [{name: _tensor(data) for name, data in point.items()} for point in request["points"]]
    fixed = {name: _tensor(data) for name, data in request.get("inputs", {}).items()}
    domain = request.get("domain")
    if not domain:
        return [fixed]
    generator = torch.Generator().manual_seed(request.get("seed", 0))
    points = []
    for _ in range(request.get("n_points", 5)):
        point = dict(fixed)
        for name in sorted(domain):  # sorted: the draw order does not depend on the JSON key order
            lo, hi = domain[name]
            shape = fixed[name].shape if name in fixed else ()
            point[name] = lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=torch.float64)
        points.append({name: point[name] for name in sorted(point)})
    return points


# --- the reference ------------------------------------------------------------------------------


def reference(model, point: dict[str, torch.Tensor], deadline: Deadline) -> dict:
    """Autograd at one point, every input a leaf: loss, gradients, intermediates, the neuron's chain-rule factors."""
    wrt = getattr(model, "check_wrt", None) or tuple(point)  # networks: parameters and X, never the labels
    leaves, out, record, gradients = forward_backward(model, point, wrt)
    deadline.check()
    detached = {k: v.detach() for k, v in leaves.items()}
    intermediates = {k: t.detach() for k, t in record.items()}
    if hasattr(model, "intermediate_gradients"):  # networks: dZ1, dA1, ... for checks on the backward pass
        intermediates.update(model.intermediate_gradients(record))
    neuron = isinstance(model, Neuron)
    # a neuron's warnings count samples: its counts are kept, to be added up over every point (Problem)
    counts = model.sample_counts(record["y_pred"]) if neuron else None
    return {
        "loss": out.detach(),
        "gradients": gradients,
        "intermediates": intermediates,
        "chain_rule": model.chain_rule(detached) if neuron else None,
        "sample_counts": counts,
        "warnings": sample_warnings([counts]) if neuron else model.diagnose(record),
    }


# --- checks -------------------------------------------------------------------------------------


DEFAULT_OPTIONS = {"points": 1.0, "visibility": "visible"}  # every answer's check without `checks`; read only
_DEFAULT_OPTIONS_JSON = orjson.dumps(DEFAULT_OPTIONS)


def plan_checks(request: dict) -> tuple[list[tuple[str, dict]], list[str]]:
    """(check name, options) in order: the request's `checks`, or every answer in the submission at 1 point each;
    and the submitted answers no check names by their own key (an intermediate's may be another spelling of one)."""
    submission, configured = request["submission"], request.get("checks")
    given = []
    for section in SECTIONS:
        if section == "loss":
            given += ["loss"] if "loss" in submission else []
        else:
            given += [f"{section}.{key}" for key in submission.get(section, {})]
    if configured is None:
        return [(name, DEFAULT_OPTIONS) for name in given], []
    return list(configured.items()), [name for name in given if name not in configured]


def known_names(names: list[str]) -> str:
    """The names a check could have named, for its message: the first KNOWN_NAMES that fit in KNOWN_CHARS
    characters (the first one always), then how many more there are."""
    shown, length = [], 0
    for name in names[:KNOWN_NAMES]:
        if shown and length + len(name) > KNOWN_CHARS:
            break
        shown.append(name if len(name) <= KNOWN_CHARS else name[:KNOWN_CHARS] + "…")
        length += len(name) + 2
    more = len(names) - len(shown)
    return (", ".join(shown) + (f" and {more} more" if more else "")) or "none"


def _answer(submission: dict, name: str):
    section, _, key = name.partition(".")
    if section == "loss":
        return submission.get("loss")
    return submission.get(section, {}).get(key)


def _fmt(t) -> str:
    """A short human rendering of a number or small tensor."""
    if isinstance(t, torch.Tensor):
        if t.numel() == 1:
            t = t.item()
        elif t.numel() <= 6:
            return "[" + ", ".join(_fmt(v) for v in t.reshape(-1).tolist()) + "]"
        else:
            return f"tensor of shape {list(t.shape)}"
    if isinstance(t, float):
        return f"{t:.6g}"
    return str(t)


def _describe_point(point: dict[str, torch.Tensor]) -> str:
    """A point's inputs for a message: all of an ordinary point, the first POINT_INPUTS of a larger one (a 128-input
    point is ~2.3 KB, in every failed check's message)."""
    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in islice(point.items(), POINT_INPUTS))
    return shown if len(point) <= POINT_INPUTS else f"{shown}, … ({len(point)} inputs)"


# submitted formulas whose cost-model walks a Problem keeps (Problem.formula_passes): a batch's or a file's answers to
# one problem mostly repeat a few; the Problem may be kept across requests, so they are bounded
KEPT_WALKS = 64
# the request fields that define a problem (its references); every other field (submission, tolerances, checks)
# is one answer's
PROBLEM_FIELDS = ("model", "inputs", "points", "domain", "seed", "n_points", "dout")


class Problem:
    """What every answer to one problem shares: the model, the cost model's estimate (checked before anything
    is allocated), the points and their autograd references. A batch builds one per problem for all its jobs."""

    def __init__(self, request: dict, limits: Limits, answer: cost.Estimate | None = None) -> None:
        """`answer`: the checks of the one answer this problem is built for (a /v1/check), which must fit with it
        before the references are computed (they were computed first: 1.8 s, then the 413)."""
        deadline = Deadline(limits.max_wall_seconds)
        self.spec, self.limits = {"model": request["model"]}, limits  # not its submission: a Problem may be kept
        self.model = build_model(request["model"], limits, deadline)
        self.shapes = [self.model.shapes(s) for s in cost.domain_points(request, limits)]
        self.shape_groups = cost.distinct_shapes(self.shapes)  # what every per-point estimate walks, once
        self.estimate = cost.check_estimate(request, self.model, self.shapes, limits)
        # the references at every point, the response (and the answer's checks); formulas later
        self.estimate.plus(answer).require(limits)
        self.points = [self.model.complete(p, torch.float64) for p in make_points(request, limits)]
        self.model = upstream(self.model, request, torch.float64)  # layer checks: dout·J
        self.is_neuron = isinstance(self.model, Neuron)
        dout = getattr(self.model, "dout", None)
        self.refs = refcache.references(
            request["model"],
            self.points,
            limits,
            lambda: [reference(self.model, p, deadline) for p in self.points],
            dout,
        )
        self.multi = "inputs" not in request or "domain" in request or "points" in request
        # naming a wrong answer's mistake costs budget for networks only (cost.diagnosis_estimate): elsewhere
        # diagnosing after a deferred comparison charges the same as diagnosing in check order
        self.free_diagnosis = request["model"]["kind"] != "network"
        self.encoded = encoded_tensors(self.points, self.refs)  # what every answer's response shows of them
        self.encoded_points = encoded_finite(self.points, self.encoded, 1) or self.points  # the body's `points`
        self.warnings: list[str] = []
        if self.is_neuron:  # its warnings count samples: those of every point, not one point's
            self.warnings = sample_warnings([ref["sample_counts"] for ref in self.refs])
        else:
            for ref in self.refs:
                self.warnings += [w for w in ref["warnings"] if w not in self.warnings]
        # the points where the tutorial's clamp bites (a neuron's chain rule has its factor only there)
        self.clamped = [i for i, ref in enumerate(self.refs) if CLAMP_FACTOR in (ref["chain_rule"] or ())]
        self.descriptions: dict[int, str] = {}  # point index -> _describe_point(), for every message naming it
        self._stacks: list[tuple[list[int], dict[str, torch.Tensor]]] | None = None
        # the cost model's shape-only estimates of its answers, computed once (kept: bounded, the problem may be)
        self._walks: dict[str, list[cost.Pass] | LimitExceeded] = {}  # formula source -> cost.formula_walk()
        self._diagnosis: cost.Estimate | None = None
        self._chains: dict[tuple[int, str], EncodedPart | dict] = {}  # (point, gradient) -> chain_rule()

    def chain_rule(self, i: int, key: str):
        """A neuron gradient check's `chain_rule` at point i: the factors of dL/d`key`, encoded once for every
        answer to this problem (encode.EncodedPart); a dict of the tensors where one is not finite (encode_tree's full
        walk names it in each response)."""
        chain = self._chains.get((i, key))
        if chain is None:
            factors = self.refs[i]["chain_rule"]
            plain = {name: factors[name] for name in _factor_names(factors, key)}
            chain = self._chains[(i, key)] = encoded_finite(plain, self.encoded, 3) or plain  # body.checks[].chain_rule
        return chain

    def intermediate_name(self, key: str, ledger: Ledger, spend=None) -> str:
        """The name the references give the intermediate `key` spells: `key` itself, else its canonical text
        ("x**2" for sin(x**2)'s "x ** 2"); an unparsable key stays as sent (the check says no such intermediate).
        Parsed once per request (a class's answers in a batch repeat their keys: Ledger.spellings), charged to
        `ledger` first (or to `spend`: a job's KeyAllowance for its student's keys): refused (LimitExceeded), it
        is not parsed. A key that cannot name one is not parsed: longer than a formula may be (canonical_text would
        refuse it), or the references have no intermediates."""
        names = self.refs[0]["intermediates"]
        if key in names or not names or len(key) > self.limits.max_formula_length:
            return key
        text = ledger.spellings.get(key)
        if text is None:
            if spend is None:
                ledger.charge(cost.intermediate_key_estimate(key), self.limits)
            else:
                spend(cost.intermediate_key_estimate(key))
            text = ledger.spellings[key] = canonical_text(key, self.limits) or key
        return text

    def formula_passes(self, formula, ledger: Ledger) -> list[cost.Pass]:
        """cost.formula_walk() of a submitted formula over the shape groups, walked once per formula (128 checks
        of one formula: one walk), its walk charged to `ledger` first: refused (LimitExceeded), it is not walked;
        walked, it stays charged whether or not the formula's estimate then fits. A walk that refuses the formula
        (a broadcast over max_tensor_elements) refuses it again without walking."""
        walked = self._walks.get(formula.source)
        if walked is None:
            walk = cost.walk_estimate(formula.node_count, len(self.shape_groups), "formula")
            ledger.charge(walk, self.limits, hint="a simpler formula")
            try:
                walked = cost.formula_walk(formula, self.shape_groups, self.limits)
            except LimitExceeded as err:
                walked = err
            if len(self._walks) >= KEPT_WALKS:
                self._walks.pop(next(iter(self._walks)))
            self._walks[formula.source] = walked
        if isinstance(walked, LimitExceeded):
            raise walked
        return walked

    def diagnosis(self, ledger: Ledger) -> cost.Estimate:
        """cost.diagnosis_estimate(): what naming one wrong answer's mistake re-runs, the same for every check of
        the problem, so estimated once (it was once per failed check: 256 wrong answers over 40 points of a 64-layer
        network walked it 10,240 times); its walk charged to `ledger` first, as formula_passes()'."""
        if self._diagnosis is None:
            walk = cost.diagnosis_walk(self.spec, self.shape_groups, self.limits)
            ledger.charge(walk, self.limits)
            self._diagnosis = cost.diagnosis_estimate(self.spec, self.shape_groups, self.limits)
        return self._diagnosis

    def describe(self, i: int) -> str:
        text = self.descriptions.get(i)
        if text is None:
            text = self.descriptions[i] = _describe_point(self.points[i])
        return text

    def stacks(self) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
        """The points by their inputs' names and shapes, in order of first use: each group's indices and its inputs
        stacked along a new leading dimension (built once, for every submitted formula of every answer)."""
        if self._stacks is None:
            groups: dict[tuple, list[int]] = {}
            for i, point in enumerate(self.points):
                groups.setdefault(tuple((name, tuple(t.shape)) for name, t in point.items()), []).append(i)
            self._stacks = [
                (indices, {name: torch.stack([self.points[i][name] for i in indices]) for name, _ in key})
                for key, indices in groups.items()
            ]
        return self._stacks


# what a check without an answer says once Spellings stopped reading other keys (its allowance was spent)
SPELLINGS_REFUSED = "not every other key was read as a spelling of it: there were too many"


def checked_keys(checks) -> set[str]:
    """The intermediates' keys the checks name (`intermediates.<key>`): each the answer of its own check, never read
    as another's spelling (Spellings' `taken`)."""
    return {name.partition(".")[2] for name in checks if name.startswith("intermediates.")}


class KeyAllowance:
    """One job's (or problem's) allowance for reading its student's intermediate keys as formulas, apart from the
    request budget: its guaranteed share (Ledger.spelling_share), then, past it, what is left of the request's common
    pool (Ledger.spelling_pool). What one job's keys spend of its share, another's cannot: a job's junk keys drain its
    own share and the pool, never a later job's share; an honest class's keys, read once for the request (the first
    job) and free for every later job, fit where the first job's share alone would not."""

    def __init__(self, ledger: Ledger, refusal: str) -> None:
        self.ledger, self.refusal = ledger, refusal
        self.share = self.left = ledger.spelling_share
        self.drawn = 0  # what this job took from the pool

    def spend(self, estimate: cost.Estimate) -> None:
        """Take `estimate` from the share, the rest from the pool, or raise LimitExceeded (`refusal`, no budget
        numbers) when the two cannot."""
        own = min(estimate.total, self.left)
        pooled = estimate.total - own
        if pooled > self.ledger.spelling_pool:
            allowed = self.share + self.drawn + self.ledger.spelling_pool
            spent = self.share - self.left + self.drawn
            raise LimitExceeded("max_request_bytes", allowed, self.refusal, estimate=spent + estimate.total)
        self.left -= own
        self.drawn += pooled
        self.ledger.spelling_pool -= pooled


class Spellings:
    """The key a submission's intermediates (`given`) hold a check's answer under when it is not the check's own:
    another spelling of the same subexpression ("x**2" for a check of "intermediates.x ** 2"), as the references
    match a key without checks. Read only when a check finds no answer under its own key, each submitted key at most
    once, through Problem.intermediate_name (memoized per request); a key that is a check's
    own (`taken`) is that check's answer, never read, and a key answers one check at most. The reads are charged to
    this job's or problem's allowance for them (KeyAllowance: its share, then the request's pool), never to its
    budget nor to another's share; once it refuses a key, no other key is read (`refused`)."""

    def __init__(self, problem: Problem, ledger: Ledger, given: dict, taken) -> None:
        self.problem, self.ledger = problem, ledger
        self.unread = iter([key for key in given if key not in taken])
        self.read: dict[str, str] = {}  # intermediate's name -> the first submitted key that spells it
        self.used: set[str] = set()  # the submitted keys found as a check's answer
        self.refused: LimitExceeded | None = None
        self.allowance = KeyAllowance(ledger, "too many other keys to read as spellings of the checks' intermediates")

    def find(self, key: str) -> str | None:
        """The submitted key spelling the intermediate the check's `key` names, or None. LimitExceeded: `key` itself
        over the budget (the caller's, as when its reference is looked up)."""
        target = self.problem.intermediate_name(key, self.ledger)
        found = self.read.get(target)
        while found is None:
            other = next(self.unread, None)
            if other is None:
                return None
            try:
                name = self.problem.intermediate_name(other, self.ledger, self.allowance.spend)
            except LimitExceeded as err:
                self.refused, self.unread = err, iter(())
                return None
            self.read.setdefault(name, other)
            found = other if name == target else None
        if found in self.used:  # one answer answers one check (two checks of one intermediate: 6 points from one)
            return None
        self.used.add(found)
        return found


class Ledger:
    """What a request has charged to its one budget: the estimates of all its problems (a /v1/grade problem file's)
    or jobs (a batch's), reserved before any is graded, then what grading the answers adds (submitted formulas,
    diagnosed mistakes) and what estimating them cost (charged whether or not what it estimated then fits). Its
    graders share it, so a student's formulas in one job or problem are charged against what the others left, never
    against a fresh budget, and never against what the others reserved. It keeps what that work found that
    the answers share: `spellings`, each intermediate's key read as a formula once (Problem.intermediate_name)."""

    def __init__(self, total: int = 0) -> None:
        self.total = total
        self.spellings: dict[str, str] = {}  # a submitted intermediate's key -> canonical_text(key), or the key
        self.graders = 1  # the jobs or problems that share it: with more than one, each reads its own keys on its share
        self.share_spellings(1)
        self.typed_chars = 0  # answers typed as text, re-read (problems.TYPED_READ_CHARS)

    def share_spellings(self, graders: int) -> None:
        """Split the allowance for reading a student's keys as spellings (KeyAllowance) among `graders` jobs or
        problems: cost.SPELLING_READ_BYTES in guaranteed shares (at least SPELLING_SHARE_BYTES each: one job's junk
        keys cannot spend what another job's student needs, a final audit), and, with several, a pool of
        cost.SPELLING_POOL_BYTES any of them draws on past its share (a class's keys, read once by the first job and
        free for the rest, were refused on its share alone: an audit). One alone has the whole allowance as share."""
        self.graders = graders
        self.spelling_share = max(cost.SPELLING_READ_BYTES // max(graders, 1), cost.SPELLING_SHARE_BYTES)
        self.spelling_pool = cost.SPELLING_POOL_BYTES if graders > 1 else 0

    def charge(self, estimate: cost.Estimate, limits: Limits, hint: str | None = None) -> None:
        """Add `estimate`, or raise LimitExceeded when the budget cannot take it (the caller decides what then); its
        breakdown counts what the ledger holds already, so that it adds up to the estimate (a 413's `limit`)."""
        try:
            estimate.require(limits, spent=self.total, hint=hint)
        except LimitExceeded as err:
            err.breakdown = {"charged already": self.total, **(err.breakdown or {})}
            raise
        self.total += estimate.total

    def spend(self, nbytes: int) -> None:
        """Charge work already done (an estimate's own), whether or not what it estimated then fits: the total may
        pass the budget, and then every later charge is refused."""
        self.total += nbytes

    def closed(self, floor: int, limits: Limits) -> LimitExceeded | None:
        """The refusal of anything that costs at least `floor` once the budget cannot take even that, before it is
        estimated (a formula is not parsed: that is work too); else None."""
        budget = limits.max_request_bytes
        if self.total + floor <= budget:
            return None
        return LimitExceeded(
            "max_request_bytes",
            budget,
            f"this request would allocate more than its budget of {budget / 2**20:.1f} MiB, "
            f"{self.total / 2**20:.1f} MiB of which is charged already",
            estimate=self.total + floor,
        )


def answer_place(name: str) -> str:
    """Where a check's answer goes in a submission, as JSON: "loss", or "gradients": {"w": ...}."""
    section, _, key = name.partition(".")
    return '"loss"' if section == "loss" else f'"{section}": {{"{key}": ...}}'


class Grader:
    """Grades one check request: each check against the problem's references."""

    def __init__(
        self,
        request: dict,
        limits: Limits,
        *,
        problem: Problem | None = None,
        deferred: list | None = None,
        ledger: Ledger | None = None,
        places: dict[str, str | None] | None = None,
        refuse_clamped: bool = False,
        checks: cost.Estimate | None = None,
        verdicts: dict | None = None,
    ) -> None:
        """`ledger`: the request's, with this answer's problem estimate already in it (a problem file or a batch
        reserves every one first); without it the answer is the request and its estimate is charged here.
        `places`: what a missing answer's message says to do, by check name, in the caller's terms (a problem
        file's answers: a PrairieLearn input box, the problem's key); else where it goes in the submission.
        `refuse_clamped`: a loss or gradient reference where the tutorial's clamp bites is the problem's error
        (ClampedReference: a problem file's); else it is graded, and a failed check's message says the clamp bit.
        `checks`: cost.checks_estimate(request), when the caller has it already (a /v1/check's view).
        `verdicts`: a memo of one-number results shared by the graders of one problem's answers (_one_number())."""
        self.request, self.limits = request, limits
        self.deadline = Deadline(limits.max_wall_seconds)
        problem = problem or Problem(request, limits)
        self.problem = problem
        self.model, self.shapes, self.points, self.refs = problem.model, problem.shapes, problem.points, problem.refs
        self.encoded = problem.encoded
        self.is_neuron, self.multi = problem.is_neuron, problem.multi
        # a list: classic rtol/atol comparisons are queued there for _compare_together(), not done here (only where
        # diagnosing afterwards changes nothing); their diagnosis waits in self.undiagnosed until finish()
        self.deferred = deferred if problem.free_diagnosis else None
        self.verdicts = verdicts if problem.free_diagnosis else None  # a network's diagnosis is charged per answer
        self.settings: tuple | None = None  # the request's part of _memo_key(), once
        self.hits: dict[int, EncodedPart] = {}  # id(a result copied from `verdicts`) -> its encoding
        self.undiagnosed: list[tuple[dict, object, list[torch.Tensor]]] = []
        if ledger is None:  # this answer is the request: its problem's estimate and its checks
            ledger = Ledger()
            ledger.charge(problem.estimate.plus(checks or cost.checks_estimate(request)), limits)
        self.ledger = ledger
        self.warnings = list(problem.warnings)
        self.misnamed: list[str] = []  # checks naming nothing the model has (a problem file's error)
        self.refused: LimitExceeded | None = None  # the first intermediate's key the budget left no room to parse
        self.places = places or {}
        self.refuse_clamped = refuse_clamped
        self.spellings: Spellings | None = None  # made at the first intermediate's check without its own answer
        # without `checks` every intermediate's key is the student's: in a request shared by several jobs, read on
        # this job's share of the allowance (as Spellings reads), so one job's junk keys cannot refuse another's
        self.own_keys = None
        if request.get("checks") is None and ledger.graders > 1:
            self.own_keys = KeyAllowance(ledger, "too many keys to read as formulas for one job")

    def title(self, name: str) -> str:
        section, _, key = name.partition(".")
        f = "L" if not hasattr(self.model, "formula") else "f"
        if section == "loss":
            return "the loss L" if not hasattr(self.model, "formula") else f"f = {self.model.formula.source}"
        if section in ("gradients", "gradient_formulas"):
            return f"d{f}/d{key}" + (" (formula)" if section == "gradient_formulas" else "")
        return f"intermediate {key}"

    def expected(self, name: str, i: int) -> torch.Tensor | None:
        """The reference the check `name` compares with at point `i`, or None: nothing of that name. LimitExceeded:
        an intermediate's key the request's budget (or, the student's own, this job's share: own_keys) left no room
        to read (Problem.intermediate_name)."""
        section, _, key = name.partition(".")
        ref = self.refs[i]
        if section == "loss":
            return ref["loss"]
        if section == "intermediates":
            spend = self.own_keys.spend if self.own_keys else None
            return ref["intermediates"].get(self.problem.intermediate_name(key, self.ledger, spend))
        return ref["gradients"].get(key)

    def run(self) -> dict:
        return self.finish(self.grade_checks())

    def grade_checks(self) -> list[dict]:
        """Each planned check's result (its comparison queued, when deferred)."""
        plan, ignored = plan_checks(self.request)
        checks = [self.check(name, options) for name, options in plan]
        used = self.spellings.used if self.spellings else set()
        ungraded = [
            name for name in ignored if not (name.startswith("intermediates.") and name.partition(".")[2] in used)
        ]
        self.warnings += [f"{name}: {UNGRADED}" for name in ungraded[:UNGRADED_NAMED]]
        if len(ungraded) > UNGRADED_NAMED:
            self.warnings.append(f"{len(ungraded) - UNGRADED_NAMED} more answers: {UNGRADED}")
        return checks

    def finish(self, checks: list[dict]) -> dict:
        """The response body around the checks' results, once every comparison is done: the deferred
        comparisons' diagnoses, the first wrong layer, the score."""
        for result, answer, expected in self.undiagnosed:
            if not result["passed"]:
                self._diagnose(result, result["name"], answer, expected)
        self.undiagnosed = []
        checked = [] if self.problem.free_diagnosis else diagnose_bugs.up_to_first_wrong(self, checks)  # networks'
        first_wrong = diagnose_bugs.first_wrong_layer(checked)
        for c in checks if first_wrong else ():
            if c["kind"] == "gradient" and not c["passed"] and c.get("feedback") != "verdict":
                if all(_seen_with(c, other) for other in checked):
                    c["message"] += f"; {first_wrong['message']}"
        for c in checks:
            if "feedback" in c:  # set only for a mode other than the default, which redact() leaves as it is
                feedback.redact(c)
        profile = tolerance.resolve({}, self.request, self.request["rtol"], self.request["atol"])
        score = total(c["points"] for c in checks)
        max_score = total(c["max_points"] for c in checks)
        passed = sum(c["passed"] for c in checks)
        body = {
            "score": score,
            "max_score": max_score,
            "passed": passed == len(checks),
            "rtol": self.request["rtol"],
            "atol": self.request["atol"],
            "tolerance_rule": tolerance.rule(profile) if profile else TOLERANCE_RULE,
            "n_points": len(self.points),
            "points": self.problem.encoded_points,
            "checks": [self.hits.get(id(c), c) if "feedback" not in c else c for c in checks],
            "summary": f"{passed} of {len(checks)} checks passed; score {score:g} of {max_score:g}",
        }
        if first_wrong:
            body["first_wrong"] = first_wrong
        encoded: list[str] = []
        body = encode_tree(body, encoded, known=self.encoded)
        # a student's own non-finite answer (or formula value) is in its check's message ("you gave nan"): a
        # warning would repeat it, by an index path that tells a student where hidden checks are
        body["warnings"] = self.warnings + [w for w in encoded if not STUDENT_VALUE.match(w)]
        return body

    # one check ------------------------------------------------------------------------------------

    def check(self, name: str, options: dict) -> dict:
        memo = self._memo_key(name, options)
        if memo is not None:
            seen = self.verdicts.get(memo)
            if seen is not None:
                if len(seen) == 1:  # repeated: its encoding in a response's `checks` (depth 2), once for its copies
                    seen.append(encoded_finite(seen[0], self.encoded, 2))
                result = _copied(seen[0])
                if seen[1] is not None:  # what finish() encodes for it, unless finish() edits it (feedback.redact)
                    self.hits[id(result)] = seen[1]
                return result
            prelude = self.verdicts.get(memo[0])  # another number to this check: what precedes the number, once
            answer = _answer(self.request["submission"], name)
            if prelude is not None and (type(answer) is float or abs(answer) <= 2**53):  # still _is_one_number()
                template, expected, rtol, atol = prelude
                section, _, key = name.partition(".")
                return self._one_number(dict(template), answer, expected, rtol, atol, section, key, memo)
        section, _, key = name.partition(".")
        rtol = options.get("rtol", self.request["rtol"])
        atol = options.get("atol", self.request["atol"])
        profile = tolerance.resolve(options, self.request, rtol, atol)
        if profile is not None and profile["profile"] == "allclose":  # the tolerances echoed are those applied
            rtol, atol = profile["rtol"], profile["atol"]
        result = {
            "name": name,
            "title": options.get("title") or self.title(name),
            "kind": KIND_BY_SECTION[section],
            "expected": None,
            "actual": None,
            "formula": None,
            "abs_error": None,
            "rel_error": None,
            "rtol": rtol,
            "atol": atol,
            "passed": False,
            "points": 0.0,
            "max_points": options["points"],
            "message": "",
            "worst_point": None,
            "chain_rule": None,
            "visibility": options["visibility"],
        }
        mode = feedback.mode(options, self.request)
        if mode != feedback.DEFAULT:  # the default's results stay as they were, byte for byte
            result["feedback"] = mode
        refused = None
        try:
            expected = [self.expected(name, i) for i in range(len(self.points))]
        except LimitExceeded as err:  # an intermediate's key the budget left no room to parse: not parsed
            expected, refused = [None], err
        if any(e is None for e in expected):
            known = self._known(section)
            what = section[:-1] if section != "loss" else "loss"
            result["message"] = f"{name}: there is no {what} named {key!r} to grade; known: {known}"
            if refused is None:
                self.misnamed.append(name)
            else:  # maybe another spelling of one: the budget is the reason it was not read
                result["message"] += f"; not read as another spelling of one, over the budget: {refused.detail}"
                self.refused = self.refused or refused
            return result
        self._require_finite(name, result["title"], expected)
        if self.refuse_clamped and section != "intermediates":
            self._require_unclamped(name, result["title"])
        result["expected"] = expected if self.multi else expected[0]
        answer = _answer(self.request["submission"], name)
        if answer is None and section == "intermediates":
            answer = self._spelled(key)
        if answer is None:
            place = self.places.get(name) or f"add {answer_place(name)} to the submission"
            result["message"] = f"{result['title']}: no answer given ({place})"
            if section == "intermediates" and self.spellings and self.spellings.refused:
                result["message"] += "; " + SPELLINGS_REFUSED
            return result
        if section == "gradient_formulas":
            result["formula"] = echo.clip(answer)
            actual, problem = self._formula_values(answer, expected)
        else:
            if profile is None and self._is_one_number(answer, expected):
                if memo is not None and memo[0] not in self.verdicts:  # all above: the options' and settings'
                    template = dict(result)
                    if id(expected[0]) in self.encoded:  # the reference, encoded once for the other answers
                        template["expected"] = EncodedPart(self.encoded[id(expected[0])])
                    self.verdicts[memo[0]] = template, expected[0], rtol, atol
                return self._one_number(result, answer, expected[0], rtol, atol, section, key, memo)
            actual, problem = self._numbers(answer, expected)
            self._echo(result, answer, shaped=problem is None)
        if problem:
            result["message"] = f"{result['title']}: {problem}"
            self._diagnose(result, name, answer, expected, profile)
            return result
        if section == "gradient_formulas":
            result["actual"] = actual if self.multi else actual[0]
        if profile is None and self.deferred is not None:  # the vectorized path knows the classic rule only
            self.deferred.append((self, result, expected, actual, section, key))
            self.undiagnosed.append((result, answer, expected))
            return result
        if profile is None:
            self._compare(result, expected, actual, rtol, atol, section, key)
        else:
            tolerance.apply(result, expected, actual, profile, self._at)
        if not result["passed"]:
            self._diagnose(result, name, answer, expected, profile)
        return result

    def _memo_key(self, name: str, options: dict) -> tuple | None:
        """What the result of check `name` is a function of, when its answer is one number (_one_number()): the
        check's options and the request's settings (the problem is the batch's one), which all that precedes the
        number is a function of (the key's first item), and the answer (repr: 1 and 1.0, 0.0 and -0.0 are equal
        keys but different answers to echo). None: no memo, or another kind of answer."""
        if self.verdicts is None:
            return None
        answer = _answer(self.request["submission"], name)
        if type(answer) is not float and type(answer) is not int:
            return None
        if self.settings is None:
            request = self.request
            self.settings = repr(request["rtol"]), repr(request["atol"]), orjson.dumps(request.get("tolerance"))
            self.settings += (request.get("feedback"),)
        written = _DEFAULT_OPTIONS_JSON if options is DEFAULT_OPTIONS else orjson.dumps(options)
        return (name, written, self.settings), repr(answer)

    def _one_number(
        self, result: dict, answer, expected: torch.Tensor, rtol: float, atol: float, section: str, key: str, memo
    ) -> dict:
        """A one-number answer's result by the classic rule (_is_one_number), made once per request for equal
        answers to one check (`verdicts`, under _memo_key()): a class gives the same right numbers, and the same
        wrong ones, many times over. The memo keeps a copy, as finish() edits the results it returns."""
        result["actual"] = answer
        self._compare_number(result, expected.item(), float(answer), rtol, atol, section, key)
        if not result["passed"]:
            self._diagnose(result, result["name"], answer, [expected])
        if memo is not None:
            self.verdicts[memo] = [_copied(result)]
        return result

    def _spelled(self, key: str):
        """The answer to the intermediate `key` under another spelling of it (Spellings), or None."""
        given = self.request["submission"].get("intermediates") or {}
        if not given or self.request.get("checks") is None:  # without checks, each answer names its own check
            return None
        if self.spellings is None:
            self.spellings = Spellings(self.problem, self.ledger, given, checked_keys(self.request["checks"]))
        found = self.spellings.find(key)
        return None if found is None else given[found]

    def _diagnose(
        self, result: dict, name: str, answer, expected: list[torch.Tensor], profile: dict | None = None
    ) -> None:
        """Name the classic mistake a wrong gradient matches at the check's tolerance (its `profile`, else its
        rtol/atol: diagnose_bugs.py); a network re-runs with each mistake built in, charged to the request's budget:
        without budget left, the verdict stands undiagnosed. Only with feedback "expected": with the answer, the
        mistake gives the reference (feedback.py)."""
        if result.get("feedback", feedback.DEFAULT) != feedback.DEFAULT:
            return
        if not self.problem.free_diagnosis:  # its estimate is the problem's, computed once: a refusal costs nothing
            try:
                self.ledger.charge(self.problem.diagnosis(self.ledger), self.limits)
            except LimitExceeded:
                return
        rule = profile or {"rtol": result["rtol"], "atol": result["atol"]}
        mistake = diagnose_bugs.diagnose(self, name, answer, expected, rule)
        if mistake:
            result["diagnosis"] = mistake
            result["message"] += f"; likely mistake: {mistake}"

    def _require_finite(self, name: str, title: str, expected: list[torch.Tensor]) -> None:
        """NonFiniteReference when the reference is NaN or infinite anywhere: an error in the problem (its model
        or points), which no answer can be graded against, with or without one. A finite tensor of the problem
        is in `encoded` already (encoded_tensors skips non-finite ones): most checks cost a lookup per point."""
        for i, e in enumerate(expected):
            if id(e) in self.encoded:
                continue
            finite = torch.isfinite(e)
            if bool(finite.all()):
                continue
            index = int((~finite).reshape(-1).nonzero()[0])
            element = f"[{', '.join(map(str, _unravel(index, tuple(e.shape))))}]" if e.dim() else ""
            value = e.reshape(-1)[index].item()
            at = f" at point {i} ({self.problem.describe(i)})" if self.multi else f" at {self.problem.describe(i)}"
            said = self.problem.refs[i]["warnings"]  # the model's word on why (a network's bce at 0 or 1)
            raise NonFiniteReference(
                f"the reference (autograd) of check {name!r} ({title}) is {value}{element}{at}, "
                f"at {int((~finite).sum())} of {e.numel()} element(s): no answer can be graded against it; "
                "choose points (inputs, points or domain) where the model and its derivatives are finite"
                + "".join(f"; {w}" for w in said),
                name,
            )

    def _require_unclamped(self, name: str, title: str) -> None:
        """ClampedReference when the tutorial's clamp bites at some point: there the reference of the loss and of
        every gradient is the clamped model's (a gradient through the clamp is 0), which a right chain-rule answer
        does not match. An error in the problem (its points, or its loss), like a non-finite reference."""
        clamped = self.problem.clamped
        if not clamped:
            return
        i = clamped[0]
        at = f" at point {i} ({self.problem.describe(i)})" if self.multi else f" at {self.problem.describe(i)}"
        points = f" (it bites at {len(clamped)} of {len(self.points)} points)" if self.multi else ""
        raise ClampedReference(
            f"the reference (autograd) of check {name!r} ({title}) is computed where the tutorial's clamp bites{at}: "
            f"{self._clamp_bite(i)}{points}, where autograd's gradient through the clamp is 0 and the loss is the "
            "clamped one, so a right chain-rule answer would be graded wrong; choose points (inputs, points or domain) "
            f"where y_pred = sigmoid(z) stays within the bounds, or use {LOGITS}",
            name,
        )

    def _clamp_bite(self, i: int) -> str:
        """Where the clamp bites at point i: y_pred (the first sample's where it bites) against the bounds."""
        y_pred = self.refs[i]["intermediates"]["y_pred"]
        bites = self.model.clamped(y_pred)
        first = int(bites.reshape(-1).nonzero()[0])
        value = _probability(y_pred.reshape(-1)[first].item())
        epsilon = self.model.epsilon
        bounds = f"outside [epsilon, 1 - epsilon] = [{epsilon:g}, 1 - {epsilon:g}]"
        if y_pred.numel() == 1:
            return f"y_pred = {value} is {bounds}"
        sample = f"[{', '.join(map(str, _unravel(first, tuple(y_pred.shape))))}]"
        return f"y_pred is {bounds} at {int(bites.sum())} of {y_pred.numel()} samples (at sample {sample}: {value})"

    def _clamp_note(self, section: str, key: str, i: int) -> str:
        """A failed check's word on the clamp where it bites at point i (/v1/check grades against autograd, the
        clamped model): what autograd does there, what the unclamped chain rule gives, and the author's way out."""
        through = section != "loss" and key != "y"  # dL/dy does not pass the clamp: log(y_pred) is its factor
        text = f"the tutorial's clamp bit at this point: {self._clamp_bite(i)}, so "
        if through:
            text += "autograd's gradient through the clamp is 0"
        else:
            text += (
                "autograd's loss is the clamped one"
                if section == "loss"
                else "autograd differentiates the clamped loss"
            )
        ref, point = self.refs[i], self.points[i]
        z, y = ref["intermediates"]["z"], point["y"]
        if z.numel() == 1 and (section == "loss" or key in ("b", "w") and point["w"].dim() == 0):
            if section == "loss":  # BCE on the logit, to the last digit where y_pred rounds to 0 or 1
                softplus = torch.nn.functional.softplus
                unclamped = y * softplus(-z) + (1 - y) * softplus(z)
            else:  # dL/dy_pred * dy_pred/dz = y_pred - y, finite where y_pred rounds to 0 or 1
                unclamped = (ref["intermediates"]["y_pred"] - y) * (point["x"] if key == "w" else 1.0)
            what = "the loss is" if section == "loss" else "the chain rule gives"
            text += f" (without the clamp {what} {unclamped.item():.6g})"
        return f"{text}; the problem's author should choose points where the clamp does not bite, or use {LOGITS}"

    def _echo(self, result: dict, answer, shaped: bool) -> None:
        """`actual`: the answer as sent when it has the checked shape or is a small tensor literal (echo.py);
        else `actual` stays null and `actual_summary` describes it in a bounded string."""
        dims = self.limits.max_tensor_dims
        if shaped or echo.echoable(answer, self.multi, dims):
            result["actual"] = answer
        else:
            result["actual_summary"] = echo.summary(answer, dims + self.multi)

    def _known(self, section: str) -> str:
        ref = self.refs[0]
        return known_names(list(ref["intermediates"] if section == "intermediates" else ref["gradients"]))

    def _numbers(self, answer, expected: list[torch.Tensor]) -> tuple[list[torch.Tensor] | None, str | None]:
        """The answer as one float64 tensor per point, or why it cannot be compared (a failed check, not an error)."""
        values = [answer]
        if self.multi:
            if not isinstance(answer, list) or len(answer) != len(expected):
                got = f"{len(answer)} value(s)" if isinstance(answer, list) else "a single number"
                return None, f"expected a list with one value per point ({len(expected)} points), got {got}"
            values = answer
        out = []
        for i, (value, e) in enumerate(zip(values, expected, strict=True)):
            try:  # the shape first, read off the lists: a mis-shaped answer's numbers are never copied
                shape = tensor_shape(value)
            except ValueError as err:  # ragged or mixed lists
                return None, f"the answer{self._at(i)} is not a number or a rectangular list: {err}"
            if shape != tuple(e.shape):
                dims = self.limits.max_tensor_dims
                got = list(shape) if len(shape) <= dims else f"lists nested {len(shape)} deep"
                return None, f"wrong shape{self._at(i)}: expected shape {list(e.shape)}, got {got}"
            try:
                t = _tensor(parse_tensor(value))
            except OverflowError:  # an integer past float64's range, typed as text (JSON numbers stop at 64 bits)
                return None, f"the answer{self._at(i)} has a number too large for a double (float64)"
            out.append(t)
        return out, None

    def _formula_values(self, source: str, expected: list[torch.Tensor]):
        """Evaluate the submitted formula at every point with the safe evaluator; errors become messages.
        A stackable formula is evaluated once per group of points of the same shapes (stacked_values), else point by
        point: the same values and the same message either way."""
        try:
            closed = self.ledger.closed(cost.formula_parse_bytes(None), self.limits)  # no budget left: not parsed
            if closed is not None:
                raise closed
            formula = parse_formula(source, self.limits)
            self.ledger.spend(cost.formula_parse_bytes(formula))  # done, whatever follows
            target = tuple(expected[0].shape)
            stackable = formula.stackable  # a walk of the formula's tree: once
            passes = self.problem.formula_passes(formula, self.ledger)
            charge = cost.formula_estimate(formula, self.problem.shape_groups, target, self.limits, stackable, passes)
            self.ledger.charge(charge, self.limits, hint="a simpler formula")
            if stackable:
                return self._broadcast(source, stacked_values(formula, self.problem, self.deadline), expected)
            out = []
            for i, point in enumerate(self.points):
                with torch.no_grad():
                    value = formula.evaluate(point, dtype=torch.float64, deadline=self.deadline)
                e = expected[i]
                try:
                    value = torch.broadcast_to(value, e.shape).clone()
                except RuntimeError:
                    return None, self._shape_problem(source, value.shape, e.shape, i)
                out.append(value)
            return out, None
        except DeadlineExceeded:
            raise  # the whole request is out of time, not this answer wrong
        except LimitExceeded as err:
            return None, f"your formula {echo.clip(source)!r} is too large: {err.detail}"
        except EngineError as err:
            return None, f"your formula {echo.clip(source)!r} could not be evaluated: {err.detail}"

    def _broadcast(self, source: str, groups: list, expected: list[torch.Tensor]):
        """stacked_values' groups broadcast to each point's gradient, as the point-by-point loop does: what it meets
        first in point order, a value that does not broadcast (a failed check naming the point) or a group's error
        (raised), wins. A group whose points' gradients share a shape is broadcast in one call."""
        out: list[torch.Tensor | None] = [None] * len(self.points)
        failed, error = None, None  # (first point, shape) of a value that does not broadcast; (first point, error)
        for (indices, _), value in zip(self.problem.stacks(), groups, strict=True):
            if isinstance(value, EngineError):
                error = min(error, (indices[0], value), key=lambda e: e[0]) if error else (indices[0], value)
                continue
            shape = tuple(value.shape[1:])
            target = tuple(expected[indices[0]].shape)
            if len(shape) <= len(target) and all(tuple(expected[i].shape) == target for i in indices):
                padded = value.reshape(len(indices), *(1,) * (len(target) - len(shape)), *shape)
                try:
                    out_block = torch.broadcast_to(padded, (len(indices), *target)).clone()
                except RuntimeError:
                    failed = min(failed or (indices[0], shape), (indices[0], shape))
                    continue
                for i, point in zip(indices, out_block.unbind(0), strict=True):
                    out[i] = point
                continue
            for j, i in enumerate(indices):
                try:
                    out[i] = torch.broadcast_to(value[j], expected[i].shape).clone()
                except RuntimeError:
                    failed = min(failed or (i, shape), (i, shape))
                    break
        if failed is not None and (error is None or failed[0] < error[0]):
            return None, self._shape_problem(source, failed[1], expected[failed[0]].shape, failed[0])
        if error is not None:
            raise error[1]
        return out, None

    def _shape_problem(self, source: str, shape, target, i: int) -> str:
        return (
            f"your formula {echo.clip(source)!r} gives shape {list(shape)}{self._at(i)}, "
            f"but the gradient has shape {list(target)}"
        )

    def _at(self, i: int) -> str:
        return f" at point {i} ({self.problem.describe(i)})" if self.multi else ""

    def _is_one_number(self, answer, expected: list[torch.Tensor]) -> bool:
        """Whether a check by the classic rtol/atol rule is the common case _compare_number() grades without tensors:
        one point, a scalar expected, a JSON number that is exactly a double (in a batch too: this is cheaper than
        queueing it for _compare_together())."""
        kind = type(answer)
        return (kind is float or (kind is int and abs(answer) <= 2**53)) and not self.multi and expected[0].dim() == 0

    def _compare_number(
        self, result: dict, expected: float, actual: float, rtol: float, atol: float, section: str, key: str
    ) -> None:
        """_compare() for one number at one point: the same floats as through float64 tensors, without them."""
        closeness, per_point, result["abs_error"], result["rel_error"] = _compare_scalars(
            [expected], [actual], rtol, atol
        )
        if closeness[0]:  # passed: the verdict reads how many points there are, not their values
            self._verdict(result, [expected], [actual], closeness, None, per_point, section, key)
        else:
            self._verdict(result, [np.array(expected)], [np.array(actual)], closeness, 0, per_point, section, key)

    def _compare(self, result: dict, expected, actual, rtol: float, atol: float, section: str, key: str) -> None:
        """Fill in the errors, the verdict and the message of a check whose answers have the right shapes."""
        # numpy views of the float64 tensors: the same IEEE arithmetic as torch's, at a fraction of the per-op cost
        expected = [e.detach().numpy() for e in expected]
        actual = [a.detach().numpy() for a in actual]
        if all(e.ndim == 0 for e in expected):  # most checks: one number per point, compared as Python floats
            closeness, per_point, result["abs_error"], result["rel_error"] = _compare_scalars(
                [float(e) for e in expected], [float(a) for a in actual], rtol, atol
            )
        else:
            closeness = [isclose(a, e, rtol, atol) for e, a in zip(expected, actual, strict=True)]
            per_point, result["abs_error"], result["rel_error"] = _errors(expected, actual, closeness)
        self._verdict(result, expected, actual, closeness, _first_failed(closeness), per_point, section, key)

    def _verdict(
        self,
        result: dict,
        expected,
        actual,
        closeness,
        failed_at: int | None,
        per_point: list[float],
        section: str,
        key: str,
    ) -> None:
        """Pass or fail, the worst point, the chain rule and the message, from the comparison's numbers
        (`failed_at`: _first_failed(closeness), which the caller may know without asking numpy)."""
        if failed_at is None:
            worst = max(range(len(per_point)), key=per_point.__getitem__, default=None)
        else:
            worst = failed_at
        result["worst_point"] = worst
        if self.is_neuron and key in CHAIN_FACTORS and section in ("gradients", "gradient_formulas"):
            result["chain_rule"] = self.problem.chain_rule(worst if worst is not None else 0, key)
        if failed_at is None:
            where = f" at all {len(expected)} points (max abs error" if self.multi else " (abs error"
            result.update(
                passed=True,
                points=result["max_points"],
                message=f"{result['title']} is correct{where} {max(per_point, default=0.0):.3g})",
            )
            if result.get("feedback") == "verdict":
                result["message"] = f"{result['title']} is correct"
        else:
            result["message"] = self._failure(result, expected, actual, closeness, failed_at, section, key)

    def _failure(self, result: dict, expected, actual, closeness, failed_at: int, section: str, key: str) -> str:
        """What is off at the first failing point: the worst element, by how much, and how widespread it is (as
        much of it as the check's feedback mode tells: feedback.py)."""
        mode = result.get("feedback", feedback.DEFAULT)
        if mode == "verdict":
            return f"{result['title']} is not correct"
        e, a, close = expected[failed_at], actual[failed_at], closeness[failed_at]
        index, want, got = _worst_element(e, a, close)
        element = f"[{', '.join(map(str, _unravel(index, e.shape)))}]" if e.ndim else ""
        if mode == "error":
            what = f"your formula gives {got:.6g}" if section == "gradient_formulas" else f"you gave {got:.6g}"
            message = f"{result['title']}{element} is off{self._at(failed_at)}: {what}"
            if math.isfinite(got) and math.isfinite(want):
                message += f", off by {feedback.band(got, want)} of the right value"
            return message + self._spread(e, close, closeness) + self._chain_names(result, key, failed_at)
        shown, reference = echo.apart(got, want)
        what = f"your formula gives {shown}" if section == "gradient_formulas" else f"you gave {shown}"
        message = f"{result['title']}{element} is off{self._at(failed_at)}: {what}, autograd gives {reference}"
        if math.isfinite(got) and math.isfinite(want):
            rtol, atol = result["rtol"], result["atol"]
            relative = f", {abs(got - want) / abs(want):.3g} relative" if want else ""
            message += (
                f" (off by {got - want:+.3g}{relative}; allowed {atol + rtol * abs(want):.3g}"
                f" = atol {atol:g} + rtol {rtol:g} * |expected|)"
            )
        message += self._spread(e, close, closeness)
        if result["chain_rule"] is not None:
            message += "; " + self._chain_text(key, failed_at)
        elif section != "intermediates" and failed_at in self.problem.clamped:
            message += "; " + self._clamp_note(section, key, failed_at)
        return message

    def _spread(self, e, close, closeness) -> str:
        """How many elements and points are off."""
        text = f"; {int((~close).sum())} of {e.size} elements are off" if e.size > 1 else ""
        if self.multi:
            wrong = sum(not c.all() for c in closeness)
            text += f"; wrong at {wrong} of {len(closeness)} points"
        return text

    def _chain_names(self, result: dict, key: str, i: int) -> str:
        """feedback "error": the chain rule's factors by name only (their values multiply to the reference)."""
        return "; " + self._chain_text(key, i, values=False) if result["chain_rule"] is not None else ""

    def _chain_text(self, key: str, i: int, values: bool = True) -> str:
        """The chain rule's factors at point i, with their values and product (which is autograd's: the clamp's factor
        is among them where it bites, with what that means); by name only, the tutorial's three (feedback "error":
        the clamp's factor would tell that the reference is 0)."""
        factors = self.refs[i]["chain_rule"]
        names = _factor_names(factors, key) if values else CHAIN_FACTORS[key]
        parts = " * ".join(f"{name} ({_fmt(factors[name])})" if values else name for name in names)
        text = f"chain rule: dL/d{key} = {parts}"
        if values and all(factors[name].numel() == 1 for name in names):
            text += f" = {_chain_product(factors, names):.6g}"
        reduction = self.model.reduction
        samples = self.refs[i]["intermediates"]["z"].numel()
        if samples > 1 and not self.model.per_sample:
            how = "averaged" if reduction == "mean" else "summed"
            text += f", per sample, then {how} over the {samples} samples (reduction {reduction!r})"
        if values and CLAMP_FACTOR in factors:
            text += "; " + self._clamp_note("gradients", key, i)
        return text


def _copied(result: dict) -> dict:
    """A check's result with its own chain_rule dict, unless encoded (Problem.chain_rule): the only value in it
    that could be edited in place (none is now; a memo's copy must not depend on that)."""
    copy = dict(result)
    if type(copy["chain_rule"]) is dict:
        copy["chain_rule"] = dict(copy["chain_rule"])
    return copy


def _seen_with(check: dict, other: dict) -> bool:
    """Whether whoever reads `check`'s message may read `other` too: `other` is visible, or released with `check`
    (the same visibility). A message names another check's verdict only then: a visible gradient's message said
    "the forward pass first goes wrong at Z1" of a hidden Z1, and "the intermediates before it are right" tells
    the verdicts of every one before it."""
    return other["visibility"] in ("visible", check["visibility"])


def _factor_names(factors: dict, key: str) -> tuple[str, ...]:
    """The chain rule's factors of dL/d`key` in the tutorial's order, the clamp's after dL/dy_pred where it bites."""
    names = CHAIN_FACTORS[key]
    return (names[0], CLAMP_FACTOR, *names[1:]) if CLAMP_FACTOR in factors else names


def _chain_product(factors: dict, names: tuple[str, ...]) -> float:
    """The scalar factors' product as autograd computes it: torch.clamp's backward passes 0 where the clamp bites,
    whatever reaches it (an infinite dL/dy_pred where y_pred rounds to 1 too), so the factors before it are dropped
    there (its 0 keeps the sign autograd gives, that of the factors after it). Elsewhere dL/dy_pred * dy_pred/dz is
    taken as y_pred - y (DL_DZ), as autograd rounds it: finite where the two are inf and 0 (|z| > ~745), and with
    autograd's digits where y_pred - y cancels (z = 30, y = 1: -2.80442e-12 against the factors' -2.80729e-12)."""
    values = [factors[name].item() for name in names]
    if CLAMP_FACTOR in names and values[names.index(CLAMP_FACTOR)] == 0:
        return math.prod(values[names.index(CLAMP_FACTOR) :])
    return math.prod([factors[DL_DZ].item(), *values[2:]])


def _probability(p: float) -> str:
    """y_pred for a message: near 1 as 1 - its distance to 1 (0.99999999794 is "1 - 2.06115e-09")."""
    return f"1 - {1 - p:.6g}" if 0.5 < p < 1 else f"{p:.6g}"


def stacked_values(formula, problem: Problem, deadline: Deadline) -> list[torch.Tensor | EngineError]:
    """A stackable formula (formula.py) evaluated once per group of points of the same shapes (Problem.stacks): per
    group its values, stacked along the first dimension, or the error evaluating it at the group's first point
    raises (an error depends on the shapes and names only, never on the values: the one every point of the group
    would raise). Each input is padded to the rank of the formula's largest input (1s after the stacked dimension,
    where broadcasting would put them at one point), so elementwise ops broadcast as they do at one point."""
    called = {id(node.func) for node in ast.walk(formula.body) if isinstance(node, ast.Call)}
    # the names the formula reads (an input `exp` is not the function exp(...) it may also call)
    names = {node.id for node in ast.walk(formula.body) if isinstance(node, ast.Name) and id(node) not in called}
    out: list[torch.Tensor | EngineError] = []
    for indices, stack in problem.stacks():
        used = [name for name in stack if name in names]  # with an input `e` or `pi`, if the formula names it
        rank = max((stack[name].dim() - 1 for name in used), default=0)
        try:
            with torch.no_grad():
                if any(name not in stack for name in formula.variables):  # the message lists the point's inputs
                    formula.evaluate(problem.points[indices[0]], dtype=torch.float64, deadline=deadline)
                env = {name: _pad(stack[name], rank) for name in used}
                try:
                    value = formula.evaluate(env, dtype=torch.float64, deadline=deadline, stacked=True)
                except DeadlineExceeded:
                    raise
                except EngineError:  # the point's own error, in the point's own words
                    formula.evaluate(problem.points[indices[0]], dtype=torch.float64, deadline=deadline)
                    raise
        except DeadlineExceeded:
            raise
        except EngineError as err:
            out.append(err)
            continue
        if not used:  # constants only: the same value at every point
            value = value.expand(len(indices), *value.shape)
        out.append(value)
    return out


def _pad(stack: torch.Tensor, rank: int) -> torch.Tensor:
    """Points stacked along the first dimension, each padded with leading 1s to `rank` dimensions."""
    return stack.reshape(stack.shape[0], *(1,) * (rank + 1 - stack.dim()), *stack.shape[1:])


def _first_failed(closeness: list[np.ndarray]) -> int | None:
    """The first point where some element is not close, or None."""
    return next((i for i, close in enumerate(closeness) if not close.all()), None)


def _compare_scalars(expected: list[float], actual: list[float], rtol: float, atol: float):
    """isclose() and _errors() for one number per point, in Python floats: the same IEEE double arithmetic
    (inf - inf is nan, overflow is inf; no exception for either), without a dozen numpy calls per number.
    Returns (closeness as numpy bools, per point |actual - expected|, abs error, rel error)."""
    closeness, per_point, rel_max, describable = [], [], None, True
    for e, a in zip(expected, actual, strict=True):
        diff = abs(a - e)
        close = isclose_number(a, e, rtol, atol)
        closeness.append(np.bool_(close))
        both = math.isfinite(a) and math.isfinite(e)
        describable = describable and (close or both)
        per_point.append(diff if both else 0.0)
        if both and e != 0:
            rel = diff / abs(e)
            rel_max = rel if rel_max is None else max(rel_max, rel)
    abs_max = max(per_point, default=0.0)
    abs_error = abs_max if describable and math.isfinite(abs_max) else None
    rel_error = rel_max if describable and rel_max is not None and math.isfinite(rel_max) else None
    return closeness, per_point, abs_error, rel_error


def _errors(expected, actual, closeness) -> tuple[list[float], float | None, float | None]:
    """Per point the largest |actual - expected| over elements finite in both; the largest absolute and relative
    error overall, None where no finite number describes it (an element that is off is non-finite)."""
    per_point, rel_max, describable = [], None, True
    with np.errstate(all="ignore"):  # inf - inf is nan and 1e308 / 1e-9 is inf here, as in torch: no warnings
        for e, a, close in zip(expected, actual, closeness, strict=True):
            diff = np.abs(a - e)
            both = np.isfinite(a) & np.isfinite(e)
            describable = describable and not (~close & ~both).any()
            per_point.append(float(diff[both].max()) if both.any() else 0.0)
            nonzero = both & (e != 0)
            if nonzero.any():
                rel = float((diff[nonzero] / np.abs(e[nonzero])).max())
                rel_max = rel if rel_max is None else max(rel_max, rel)
    abs_max = max(per_point, default=0.0)
    abs_error = abs_max if describable and math.isfinite(abs_max) else None
    rel_error = rel_max if describable and rel_max is not None and math.isfinite(rel_max) else None
    return per_point, abs_error, rel_error


def _worst_element(expected: np.ndarray, actual: np.ndarray, close: np.ndarray) -> tuple[int, float, float]:
    """(flat index, expected, actual) of the element that is off by the most; NaN counts as off by infinity."""
    if expected.ndim == 0:
        return 0, float(expected), float(actual)
    with np.errstate(invalid="ignore"):
        diff = actual - expected
    diff = np.where(np.isnan(diff), np.inf, np.abs(diff))
    index = int(np.where(close, -1.0, diff).reshape(-1).argmax())
    return index, float(expected.reshape(-1)[index]), float(actual.reshape(-1)[index])


def _unravel(index: int, shape: tuple) -> list[int]:
    out = []
    for size in reversed(shape):
        out.append(index % size)
        index //= size
    return out[::-1]


def grade_many(
    requests: list[dict], limits: Limits, problem: Problem, before_each=None, ledger: Ledger | None = None
) -> list[dict | Exception]:
    """Many answers to one problem (a batch's check jobs sharing PROBLEM_FIELDS), each result what grade() gives
    for it alone; every check's comparison runs once for all answers (numpy over a leading answers axis).
    A job that raises gets its exception in its place; `before_each()` (the batch's deadline) runs per job.
    `ledger`: the batch's, with every job's estimate reserved in it (else each answer is charged on its own)."""
    results: list[dict | Exception | None] = [None] * len(requests)
    graded, by_name, verdicts = [], {}, {}
    for i, request in enumerate(requests):
        deferred: list = []
        try:
            if before_each is not None:
                before_each()
            grader = Grader(request, limits, problem=problem, deferred=deferred, ledger=ledger, verdicts=verdicts)
            graded.append((i, grader, grader.grade_checks()))
        except Exception as err:  # noqa: BLE001 - one job's failure must not take the others down
            results[i] = err
            continue
        for item in deferred:
            by_name.setdefault(item[1]["name"], []).append((i, *item))
    for group in by_name.values():
        try:
            _compare_together([item[1:] for item in group])
        except Exception:  # noqa: BLE001 - then one by one, so that only the answer that breaks it fails
            for i, grader, result, expected, actual, section, key in group:
                try:
                    grader._compare(result, expected, actual, result["rtol"], result["atol"], section, key)
                except Exception as err:  # noqa: BLE001
                    results[i] = err
    for i, grader, checks in graded:
        if results[i] is None:
            try:
                results[i] = grader.finish(checks)
            except Exception as err:  # noqa: BLE001
                results[i] = err
    return results


def _compare_together(group: list) -> None:
    """Grader._compare for many answers to the same check of one problem (same expected values), at once."""
    expected = [e.detach().numpy() for e in group[0][2]]
    shape = expected[0].shape
    if len(group) == 1 or expected[0].size == 0 or any(e.shape != shape for e in expected):
        for grader, result, exp, actual, section, key in group:
            grader._compare(result, exp, actual, result["rtol"], result["atol"], section, key)
        return
    n, points, size = len(group), len(expected), expected[0].size
    lead = (n, 1) + (1,) * len(shape)
    e_all = np.stack(expected)  # [points, *shape]
    a_all = np.stack([np.stack([a.detach().numpy() for a in item[3]]) for item in group])  # [answers, points, ...]
    rtol = np.array([float(item[1]["rtol"]) for item in group]).reshape(lead)
    atol = np.array([float(item[1]["atol"]) for item in group]).reshape(lead)
    close = isclose(a_all, e_all, rtol, atol)
    with np.errstate(all="ignore"):  # as in _errors
        diff = np.abs(a_all - e_all).reshape(n, points, size)
        both = (np.isfinite(a_all) & np.isfinite(e_all)).reshape(n, points, size)
        nonzero = both & (e_all != 0).reshape(1, points, size)
        rel = np.where(nonzero, diff / np.abs(e_all).reshape(1, points, size), -np.inf).max(axis=2)
    abs_point = np.where(both.any(axis=2), np.where(both, diff, -np.inf).max(axis=2), 0.0)
    has_rel = nonzero.any(axis=2)
    describable = ~(~close.reshape(n, points, size) & ~both).any(axis=(1, 2))
    for s, (grader, result, _, _, section, key) in enumerate(group):
        per_point = [float(x) for x in abs_point[s]]
        abs_max = max(per_point, default=0.0)
        rel_max = float(rel[s][has_rel[s]].max()) if has_rel[s].any() else None
        ok = bool(describable[s])
        result["abs_error"] = abs_max if ok and math.isfinite(abs_max) else None
        result["rel_error"] = rel_max if ok and rel_max is not None and math.isfinite(rel_max) else None
        actual = [a_all[s][p, ...] for p in range(points)]  # [p, ...]: 0-d arrays, not numpy scalars
        closeness = [close[s][p, ...] for p in range(points)]
        grader._verdict(result, expected, actual, closeness, _first_failed(closeness), per_point, section, key)


def estimate(request: dict, limits: Limits) -> cost.Estimate:
    """The cost model's estimate for a check request's problem (a LimitExceeded when it alone is over the budget):
    its `points` (the references, computed once for every answer to it) and each answer's `response`; add each
    answer's cost.checks_estimate()."""
    model = build_model(request["model"], limits, Deadline(limits.max_wall_seconds))
    points = [model.shapes(s) for s in cost.domain_points(request, limits)]
    budget = cost.check_estimate(request, model, points, limits)
    budget.require(limits)
    return budget


def grade(request: dict, limits: Limits, problem: Problem | None = None, checks: cost.Estimate | None = None) -> dict:
    """Run a loaded CheckRequestSchema body (against `problem`, built from its PROBLEM_FIELDS, when given; `checks`:
    its cost.checks_estimate(), when known); returns the JSON-ready check response."""
    return Grader(request, limits, problem=problem, checks=checks).run()
