"""Tensor values as they arrive in JSON: a number or a rectangular nested list, "NaN"/"Infinity" as strings.

Plain Python (no torch, no marshmallow): the request schemas validate with it, and the grader parses a
submitted answer with it, where a ragged list is a failed check rather than a 400.
"""

from __future__ import annotations

from itertools import chain
from typing import Any, NamedTuple

NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_NUMBER_TYPES = {int, float}


class TensorData(NamedTuple):
    """A validated tensor literal: its values in row-major order and its shape."""

    values: list
    shape: tuple[int, ...]


def _as_numbers(level: list) -> list:
    """Map the strings "NaN"/"Infinity"/"-Infinity" to floats; reject any other non-number."""
    out = []
    for item in level:
        if type(item) in _NUMBER_TYPES:
            out.append(item)
        elif isinstance(item, str) and item in NON_FINITE:
            out.append(NON_FINITE[item])
        else:
            kind = "boolean" if isinstance(item, bool) else type(item).__name__
            raise ValueError(f'Tensor elements must be numbers (or "NaN", "Infinity", "-Infinity"), got {kind}.')
    return out


def parse_tensor(value: Any) -> TensorData:
    """Check a number or nested list is rectangular, level by level (no recursion: deep input is safe).

    Raises ValueError with a message for the client when it is not.
    """
    shape: list[int] = []
    level = [value]
    while True:
        types = set(map(type, level))
        if not types:  # an empty dimension: nothing below it
            return TensorData([], tuple(shape))
        if types <= _NUMBER_TYPES:
            return TensorData(level, tuple(shape))
        if types == {list}:
            lengths = set(map(len, level))
            if len(lengths) != 1:
                raise ValueError(
                    f"Tensor is not rectangular: lists at depth {len(shape) + 1} have lengths {sorted(lengths)[:5]}."
                )
            shape.append(lengths.pop())
            level = list(chain.from_iterable(level))
            continue
        if list in types:
            raise ValueError(f"Tensor mixes numbers and lists at depth {len(shape) + 1}.")
        return TensorData(_as_numbers(level), tuple(shape))
