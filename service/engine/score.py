"""Points added up as a person adds them: 0.1 + 0.2 points make a score of 0.3, not 0.30000000000000004."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal


def total(points: Iterable[float]) -> float:
    """The exact sum of the points as JSON writes them (each float's shortest repr, added as decimals), rounded once
    to the nearest float. Where adding the floats one by one already gives that (integer points, 0.5 + 0.25), it is
    that very sum, so such scores are byte for byte what they were."""
    points = list(points)
    added = sum(points)
    if all(float(p).is_integer() for p in points) and abs(added) < 2**53:  # whole points: every sum is exact
        return added
    exact = float(sum((Decimal(repr(float(p))) for p in points), Decimal(0)))
    return added if added == exact else exact
