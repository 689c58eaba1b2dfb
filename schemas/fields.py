"""Custom marshmallow fields: tensors as numbers or rectangular nested lists, and the model union."""
from __future__ import annotations

from itertools import chain
from typing import Any, NamedTuple

from marshmallow import Schema, ValidationError, fields

NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_NUMBER_TYPES = {int, float}


class TensorData(NamedTuple):
    """A validated tensor literal: its values in row-major order and its shape."""

    values: list
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return len(self.values)


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
            raise ValidationError(f"Tensor elements must be numbers (or \"NaN\", \"Infinity\", \"-Infinity\"), got {kind}.")
    return out


def parse_tensor(value: Any) -> TensorData:
    """Check a number or nested list is rectangular, level by level (no recursion: deep input is safe)."""
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
                raise ValidationError(
                    f"Tensor is not rectangular: lists at depth {len(shape) + 1} have lengths {sorted(lengths)[:5]}."
                )
            shape.append(lengths.pop())
            level = list(chain.from_iterable(level))
            continue
        if list in types:
            raise ValidationError(f"Tensor mixes numbers and lists at depth {len(shape) + 1}.")
        return TensorData(_as_numbers(level), tuple(shape))


def refuse_long_lists(data, caps: dict[str, int]) -> None:
    """validate.Length's 400 for a list over its cap, before marshmallow deserializes every item of it."""
    if not isinstance(data, dict):
        return
    errors = {key: [f"Longer than maximum length {cap}."] for key, cap in caps.items()
              if isinstance(data.get(key), list) and len(data[key]) > cap}
    if errors:
        raise ValidationError(errors)


class Tensor(fields.Field):
    """A number or a rectangular nested list of numbers; non-finite values as "NaN"/"Infinity"/"-Infinity"."""

    def _deserialize(self, value, attr, data, **kwargs) -> TensorData:
        return parse_tensor(value)

    def _serialize(self, value, attr, obj, **kwargs):
        return value


class OneOfKind(fields.Field):
    """A JSON object whose `kind` picks the schema that loads it (a tagged union)."""

    def __init__(self, schemas: dict[str, type[Schema]], **kwargs) -> None:
        super().__init__(**kwargs)
        self.schemas = {kind: cls() for kind, cls in schemas.items()}

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError("Not a valid object.")
        kind = value.get("kind")
        if not isinstance(kind, str) or kind not in self.schemas:
            raise ValidationError({"kind": [f"Must be one of: {', '.join(self.schemas)}."]})
        return self.schemas[kind].load(value)
