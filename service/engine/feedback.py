"""How much a check's result says about the reference value (autograd's): the `feedback` option (audit H4).

- "expected" (the default): the message states the reference to 6 significant digits ("autograd gives 6.69176"),
  the allowed error, the chain rule's factors and their product, and the classic mistake the answer matches;
  `expected`, `abs_error`, `rel_error` and `chain_rule` carry the numbers. Pasting the message's value back passes.
- "error": the message says where the answer is off (element, point, how many) and how far, as a decade of
  relative error |answer - reference| / |reference| ("off by 1% to 10%"), with no sign. One failed submission
  then leaves the reference somewhere in two intervals about a decade wide (below and above the answer), where
  the default rtol 1e-4 needs it to within 0.01%. Why not the relative error to 1 significant digit: at 3e-4 that
  is the reference to within 5e-5 on one of two sides, and the second resubmission passes. Leaving the sign out
  matters as much: with it, one interval. Every distance-based message is still an oracle: a student who may
  resubmit without end can bisect on the decade boundaries; "verdict" gives nothing to bisect on.
  No diagnosis: "the sign is flipped" with the student's own answer is the reference (so are "transposed",
  "the 1/N is missing" and the others, by construction: they match the answer to the check's tolerance). The
  chain rule is named without its factors' values (their product is the reference).
- "verdict": "<title> is correct" / "<title> is not correct"; format errors, missing answers and shape errors keep
  their messages (they say nothing of the values).

In "error" and "verdict" a result's `expected` and `chain_rule` are null, a failed check's `abs_error` and
`rel_error` are null (with the answer they give the reference: answer ± abs_error) and so is a tolerance profile's
metric `value`; the result carries `feedback`. Nothing is kept for staff in the result: every format is built from
it, and the json one is what `gradsvc check` prints into a GitHub Classroom log the student reads.
"""

from __future__ import annotations

import math

MODES = ("expected", "error", "verdict")
DEFAULT = "expected"
# (upper bound of the relative error, what the message says); the last one takes the rest, a zero reference too
BANDS = (
    (1e-3, "less than 0.1%"),
    (1e-2, "0.1% to 1%"),
    (1e-1, "1% to 10%"),
    (1.0, "10% to 100%"),
)
LAST_BAND = "100% or more"


def mode(options: dict, request: dict) -> str:
    """The check's own mode, else the request's (a problem's), else the default."""
    return options.get("feedback") or request.get("feedback") or DEFAULT


def band(got: float, want: float) -> str:
    """The decade |got - want| / |want| falls in (both finite, got != want), without its sign."""
    relative = abs(got - want) / abs(want) if want else math.inf
    return next((text for bound, text in BANDS if relative < bound), LAST_BAND)


def redact(result: dict) -> None:
    """Clear what states the reference from a graded check in "error" or "verdict" mode (the message is written
    for its mode where it is made)."""
    if result.get("feedback", DEFAULT) == DEFAULT:
        return
    result["expected"] = None
    result["chain_rule"] = None
    result.pop("diagnosis", None)
    if not result["passed"]:
        result["abs_error"] = None
        result["rel_error"] = None
        if "tolerance" in result:
            result["tolerance"] = {**result["tolerance"], "value": None}
