"""Check bodies loaded, and their problem built, once per problem rather than once per student.

A class's requests repeat one problem (PROBLEM_FIELDS: the model and where to evaluate it) byte for byte and
differ in the answer. The problem part's validated fields and its Problem (model, cost estimate, points, autograd
references) are kept per worker (engine/refcache.py PROBLEMS, with the reference cache's bounds) under the raw
JSON of those fields, key order included (the points' order shows in the response), and the limits; a request
then validates and grades only its answer.

Exact: each of CheckRequestSchema's validators reads only problem fields or only answer fields, so the two parts
load to what the whole body loads to; a body whose problem part fails is loaded whole, for the errors it always
gave. A failing answer part's errors are the whole body's then: no problem field fails, and a schema validator
runs only when no field fails (marshmallow's default), reading fields of one part. So an answer is read once,
valid or not (a 4 M-number answer with a `true` in it was walked twice). A Problem's model is never evaluated
after the Problem is built (its references are), so the deadline it was built under does not reach a later
request.
"""

from __future__ import annotations

import orjson
from marshmallow import ValidationError

from schemas.grading import CheckRequestSchema

from ..engine import cost, refcache
from ..engine.check import PROBLEM_FIELDS, Problem
from ..engine.errors import LimitExceeded
from ..engine.limits import Limits
from ..jsonio import value_counts

check_request = CheckRequestSchema()
problem_part = CheckRequestSchema(only=PROBLEM_FIELDS)
answer_part = CheckRequestSchema(only=[name for name in check_request.fields if name not in PROBLEM_FIELDS])


def problem_json(check: dict) -> bytes:
    """The raw JSON of a check body's problem fields, in the body's key order: equal bytes, equal Problems."""
    return orjson.dumps(_problem_fields(check))


def _problem_fields(check: dict) -> dict:
    return {name: check[name] for name in PROBLEM_FIELDS if name in check}


def load_check(
    check,
    limits: Limits,
    loaded: dict[bytes, dict | None] | None = None,
    answers: dict[tuple, dict | None] | None = None,
    shape: tuple[bytes, tuple] | None = None,
) -> tuple[dict, bytes, Problem | None]:
    """check_request.load(check), its problem_json(), and the Problem when one is kept for it (else None: build it
    with problem_for()).

    `loaded`: a request's own memo of problem parts already loaded (a batch's jobs), by problem_json(). `answers`:
    its memo of answer parts loaded, by answer_skeleton() (load_answer()). `shape`: check_shape(check), when the
    caller has it."""
    if not isinstance(check, dict):
        return check_request.load(check), b"", None  # not an object: the load raises its ValidationError
    fields = _problem_fields(check)
    try:
        raw = shape[0] if shape is not None else orjson.dumps(fields)
    except TypeError:  # nested deeper than orjson writes (254 levels): a tensor is refused before (cost.check_raw)
        check_request.load(check)  # the schema's 400 for what else is nested there (a 500 before)
        raise LimitExceeded(
            "max_tensor_dims", limits.max_tensor_dims, "the problem's fields are nested deeper than 254 levels"
        ) from None
    kept = refcache.cached_problem((raw, limits))
    problem = None
    if kept is not None:
        shared, problem = kept
    elif loaded is not None and raw in loaded:
        shared = loaded[raw]
    else:
        try:
            shared = problem_part.load(fields)
        except ValidationError:
            shared = None
        if loaded is not None:
            loaded[raw] = shared
    if shared is None:
        return check_request.load(check), raw, None  # raises the problem part's errors, with the answer's
    # a failing answer part raises its own errors: what the whole body raises when its problem part loads
    skeleton = shape[1] if shape is not None else None
    answer = load_answer(
        {name: value for name, value in check.items() if name not in PROBLEM_FIELDS}, answers, skeleton
    )
    body = {**shared, **answer}
    return {name: body[name] for name in check_request.fields if name in body}, raw, problem


def check_shape(check) -> tuple[bytes, tuple] | None:
    """A check job's problem_json() and answer_skeleton(): jobs of one shape load alike but for their answers'
    numbers, and the cost model's walks of them (cost.check_raw, cost.answers_estimate, cost.checks_estimate: the
    sizes, keys and nesting of the JSON, never a number's value) give the same results. None: not an object, nested
    past what orjson writes, or an answer with more than numbers in it."""
    if not isinstance(check, dict):
        return None
    try:
        raw = orjson.dumps(_problem_fields(check))
    except TypeError:
        return None
    skeleton = answer_skeleton({name: value for name, value in check.items() if name not in PROBLEM_FIELDS})
    return None if skeleton is None else (raw, skeleton)


def load_answer(fields: dict, memo: dict[tuple, dict | None] | None, skeleton: tuple | None = None) -> dict:
    """answer_part.load(fields), validated once per answer skeleton in a request (`memo`; None: no memo).

    A class's answers to one problem differ in their numbers only. The schema reads a submitted number by its type
    (schemas.grading.Answer: any int or float passes, as it is), so answers whose fields are equal but for those
    numbers (answer_skeleton()) load to the same dict with their own numbers in it: marshmallow loads the first,
    and the others are its copy with their numbers put in (~100 µs an answer, a third of a batch's check job)."""
    if memo is not None and skeleton is None:
        skeleton = answer_skeleton(fields)
    if memo is None or skeleton is None:
        return answer_part.load(fields)
    if skeleton not in memo:
        loaded = answer_part.load(fields)  # invalid: raises, and the next answer of this skeleton loads for itself
        memo[skeleton] = loaded if _mirrors(loaded["submission"], fields["submission"]) else None
        return loaded
    template = memo[skeleton]
    if template is None:
        return answer_part.load(fields)
    given = fields["submission"]
    submission = {
        key: {name: given[key][name] for name in value} if type(value) is dict else given[key]
        for key, value in template["submission"].items()
    }
    return {**template, "submission": submission}


def answer_skeleton(fields: dict) -> tuple | None:
    """What an answer part loads by, its submitted numbers left out: the submission's keys (and those of its
    sections) in order, and the other fields' JSON; None when the submission holds anything but numbers and objects
    of numbers (a list, a formula, a "NaN": loaded for itself)."""
    submission = fields.get("submission")
    if type(submission) is not dict:
        return None
    shape = []
    for key, value in submission.items():
        kind = type(value)
        if kind is dict:
            if not all(type(item) in _NUMBERS for item in value.values()):
                return None
            shape.append((key, tuple(value)))
        elif kind in _NUMBERS:
            shape.append((key, None))
        else:
            return None
    try:
        rest = orjson.dumps({name: value for name, value in fields.items() if name != "submission"})
    except TypeError:  # nested deeper than orjson writes: loaded for itself (its errors)
        return None
    return rest, tuple(shape)


_NUMBERS = (int, float)  # type() is bool for true/false: not a number here, as in the schema


def _mirrors(loaded: dict, given: dict) -> bool:
    """Whether a loaded submission holds the given one's keys and number objects, section by section, so that
    another answer of its skeleton loads to it with that answer's numbers put in."""
    if set(loaded) != set(given):
        return False
    for key, value in loaded.items():
        if type(value) is dict:
            if type(given[key]) is not dict or list(value) != list(given[key]):
                return False
            if any(value[name] is not given[key][name] for name in value):
                return False
        elif value is not given[key]:
            return False
    return True


# What the loaded fields keep alive per JSON value (a float object and its list slot, ~32-40 bytes) and per list
# or object: counted from the raw JSON. 2x the raw length, as counted before, was 8 bytes for `0.5,`, and the caches
# held ~1.5x what they counted (an audit: 90-120 MiB kept for 64 MiB of budget).
KEPT_BYTES_PER_VALUE, KEPT_BYTES_PER_CONTAINER = 40, 64


def loaded_bytes(raw: bytes) -> int:
    values, containers = value_counts(raw)
    return KEPT_BYTES_PER_VALUE * values + KEPT_BYTES_PER_CONTAINER * containers


def problem_for(spec: dict, raw: bytes, limits: Limits, answer: cost.Estimate | None = None) -> Problem:
    """A new Problem for a loaded check body whose problem fields are `raw` (problem_json()), then kept. `answer`:
    the checks of the one answer it is built for, charged with it (Problem)."""
    problem = Problem(spec, limits, answer)
    shared = _problem_fields(spec)
    # the points twice: Problem.stacks(), built once a stackable formula is graded, is a stacked copy of them
    nbytes = len(raw) + loaded_bytes(raw) + refcache.tensors_nbytes(problem.points, problem.points, problem.refs)
    # a compact copy of the key: orjson's output keeps its working buffer (a 166 KB document held 4 MB)
    refcache.keep_problem((bytes(memoryview(raw)), limits), (shared, problem), nbytes)
    return problem
