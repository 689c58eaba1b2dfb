"""Why a request could not be computed; no HTTP knowledge here (service/errors.py maps to status codes)."""

from __future__ import annotations


class EngineError(Exception):
    """Base class: the request is well-formed JSON but cannot be computed as asked."""

    slug = "not-computable"
    title = "Request not computable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class FormulaError(EngineError):
    """A formula uses syntax or a function outside the safe formula language."""

    slug = "invalid-formula"
    title = "Invalid formula"


class UnknownExpression(EngineError):
    """The `name` is not in the catalog of GET /v1/models."""

    slug = "unknown-expression"
    title = "Unknown expression"


class UnknownVariable(EngineError):
    """A formula (or `wrt`) names a variable that is not among the inputs."""

    slug = "unknown-variable"
    title = "Unknown variable"


class ShapeError(EngineError):
    """Input shapes do not fit together (torch cannot broadcast them, or the model needs other shapes)."""

    slug = "shape-mismatch"
    title = "Shape mismatch"


class NonScalarOutput(EngineError):
    """backward() needs a scalar output: a formula needs a reduction such as sum() or mean(), a network `dout`
    or a loss (the model's `scalar_advice` says which)."""

    slug = "non-scalar-output"
    title = "Non-scalar output"


class UngradableReference(EngineError):
    """A checked quantity's reference (autograd) at some point is one no answer can be graded against: the
    request's (in a problem file, the instructor's), never the answer's. `check` names the check."""

    def __init__(self, detail: str, check: str) -> None:
        super().__init__(detail)
        self.check = check


class NonFiniteReference(UngradableReference):
    """A checked quantity's reference is NaN or infinite at a point: nothing can be graded against it, and a student
    must not be scored on it (a NaN answer would "match" a NaN)."""

    slug = "non-finite-reference"
    title = "Reference not finite"


class ClampedReference(UngradableReference):
    """A problem file's loss or gradient reference at a point where the tutorial's clamp bites: autograd's gradient
    through the clamp is 0 there, so a right chain-rule answer would be graded wrong (/v1/check grades such a point
    and says so in the message; a problem file is refused, as with a non-finite reference)."""

    slug = "clamped-reference"
    title = "Reference clamped"


# What to reduce, for a limit refused without a hint of its own (every 413 says what to do: docs/api.md).
LIMIT_HINTS = {
    "max_body_bytes": "send a smaller body: split the work into several requests (a batch into smaller batches)",
    "max_tensor_elements": "use smaller tensors, or inputs whose shapes broadcast to fewer elements",
    "max_total_elements": "send fewer or smaller inputs",
    "max_tensor_dims": "use tensors of fewer dimensions",
    "max_formula_length": "shorten the formula",
    "max_ast_nodes": "use a smaller formula",
    "max_ast_depth": "nest the formula less deeply (a long sum as a balanced tree of parentheses)",
    "max_numeric_elements": 'drop "numeric" from `include`, or take fewer `wrt` elements',
    "max_hessian_elements": 'drop "hessian" from `include`, or take fewer `wrt` elements',
    "max_jacobian_elements": "send `dout` for the vector-Jacobian product instead of the whole Jacobian",
    "max_graph_nodes": 'drop "graph" and "dot" from `include`, or use a smaller model',
    "max_svg_layout_nodes": "ask for JSON instead of a picture, or use a smaller model",
    "max_request_bytes": "use smaller inputs or a smaller formula",
    "max_inputs": "send only the inputs the model uses",
    "max_batch_jobs": "split the batch into several requests",
}


class LimitExceeded(EngineError):
    """A configured size limit was hit; carries the limit's name and value, and a hint (LIMIT_HINTS by default)."""

    slug = "limit-exceeded"
    title = "Limit exceeded"

    def __init__(
        self,
        name: str,
        value: int | float,
        detail: str,
        *,
        estimate: int | None = None,
        hint: str | None = None,
        breakdown: dict | None = None,
    ) -> None:
        super().__init__(detail)
        self.limit = name
        self.value = value
        self.estimate = estimate  # the cost model's figure, for the request budget
        self.breakdown = breakdown  # that figure by part (forward, backward, numeric, ...)
        self.hint = hint or LIMIT_HINTS.get(name)  # what to reduce


class DeadlineExceeded(EngineError):
    """The request ran past the wall-time limit and was cut off."""

    slug = "deadline-exceeded"
    title = "Wall-time limit exceeded"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"computation exceeded the wall-time limit of {seconds:g} s")
        self.limit = "max_wall_seconds"
        self.value = seconds
