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
    check, limits: Limits, loaded: dict[bytes, dict | None] | None = None
) -> tuple[dict, bytes, Problem | None]:
    """check_request.load(check), its problem_json(), and the Problem when one is kept for it (else None: build it
    with problem_for()).

    `loaded`: a request's own memo of problem parts already loaded (a batch's jobs), by problem_json()."""
    if not isinstance(check, dict):
        return check_request.load(check), b"", None  # not an object: the load raises its ValidationError
    fields = _problem_fields(check)
    try:
        raw = orjson.dumps(fields)
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
    answer = answer_part.load({name: value for name, value in check.items() if name not in PROBLEM_FIELDS})
    body = {**shared, **answer}
    return {name: body[name] for name in check_request.fields if name in body}, raw, problem


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
