"""Size and time limits the engine enforces; defaults here, overrides from the environment (service/config.py)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from .deadline import check_request
from .errors import DeadlineExceeded


@dataclass(frozen=True)
class Limits:
    """Every limit a request can hit; names are the ones reported in 413/422/503 bodies."""

    max_tensor_elements: int = 1_048_576
    max_total_elements: int = 4_194_304
    max_tensor_dims: int = 8
    max_formula_length: int = 1_000
    max_ast_nodes: int = 500
    max_ast_depth: int = 50
    max_numeric_elements: int = 1_000
    max_hessian_elements: int = 100
    max_jacobian_elements: int = 1_000_000  # output elements x `wrt` elements (docs/networks.md)
    max_graph_nodes: int = 5_000
    max_svg_layout_nodes: int = 12_000  # an SVG picture's nodes plus its edges' rank crossings (docs/playground.md)
    graph_value_max_elements: int = 100
    max_wall_seconds: float = 10.0
    # the cost model's budget (engine/cost.py, docs/limits.md): bytes a request may allocate over its life
    max_request_bytes: int = 256 * 2**20
    max_inputs: int = 128  # named inputs of a request or a point (and answers per submission section)
    max_batch_jobs: int = 1000

    def as_dict(self) -> dict:
        return asdict(self)


# Bounds on two limits themselves, enforced where they are read from the environment (service/config.py).
# MAX_WALL_SECONDS: a request's fixed work outside its computation -- routing, hooks, the access line, encoding the
# answer -- took 0.15 ms at the median for a probe and 1.5 ms for the tutorial neuron, and up to 8 ms and 21 ms on a
# 2-core machine at load 5 (docs/operate.md, "Signals and deadlines"). Under 0.1 s the probes themselves would be
# 503s whenever the scheduler delays a worker (at 0.0001 s /readyz never answered 200).
MIN_WALL_SECONDS = 0.1
# An hour at most: a request allowed longer no longer has a deadline worth the name, and from ~6e9 s the timer
# itself overflowed (setitimer: "timestamp out of range"), every request was a 500 and the workers crashed in a
# loop (an audit). deploy/gunicorn.conf.py keeps the same number (its timeouts must exceed it by 10 s).
MAX_WALL_SECONDS_CEILING = 3600
# MAX_AST_DEPTH: Python 3.11's parser refuses more than 200 nested parentheses, so nested calls (`sin(sin(...))`)
# stop at 201 levels whatever the limit says, and the evaluator's recursion at ~320 levels (measured: nested
# unary minus, powers and sums all stop there). 200 is the deepest limit every formula shape can reach.
MAX_AST_DEPTH_CEILING = 200


class Deadline:
    """Wall-clock budget for one piece of work; long loops call check() between steps.

    check() also ends the work when the enclosing request's deadline (engine/deadline.py) has passed,
    so every job of a batch and every point of a check share the request's one budget.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def check(self) -> None:
        check_request()
        if time.monotonic() > self._end:
            raise DeadlineExceeded(self.seconds)


NO_DEADLINE = Deadline(float("inf"))
