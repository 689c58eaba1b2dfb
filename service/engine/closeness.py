"""torch.isclose and torch.allclose in numpy: the same float64 arithmetic, at a fraction of torch's per-call cost
on the small tensors a check compares (a 0-d torch.allclose costs ~30 us, as much as grading the answer)."""

from __future__ import annotations

import math

import numpy as np
import torch


def isclose(a: np.ndarray, e: np.ndarray, rtol: float, atol: float, equal_nan: bool = True) -> np.ndarray:
    """torch.isclose(a, e, rtol, atol, equal_nan) exactly (numpy's own isclose differs at infinities)."""
    with np.errstate(all="ignore"):
        err = np.abs(a - e)
        close = (a == e) | (np.isfinite(err) & (err <= atol + np.abs(rtol * e)))
        return close | (np.isnan(a) & np.isnan(e)) if equal_nan else close


def isclose_number(a: float, e: float, rtol: float, atol: float, equal_nan: bool = True) -> bool:
    """isclose() for two Python floats: the same IEEE doubles (inf - inf is nan, overflow is inf, no exception)."""
    err = abs(a - e)
    return a == e or (equal_nan and a != a and e != e) or (math.isfinite(err) and err <= atol + abs(rtol * e))


def allclose(a: torch.Tensor, e: torch.Tensor, rtol: float, atol: float) -> bool:
    """torch.allclose(a, e, rtol, atol) (equal_nan False) for float64 CPU tensors of one shape; else torch's own."""
    if a.dtype != torch.float64 or e.dtype != torch.float64 or a.shape != e.shape or not (a.is_cpu and e.is_cpu):
        return bool(torch.allclose(a, e, rtol=rtol, atol=atol))
    if a.dim() == 0:
        return isclose_number(a.item(), e.item(), rtol, atol, equal_nan=False)
    return bool(isclose(a.detach().numpy(), e.detach().numpy(), rtol, atol, equal_nan=False).all())
