"""Custom marshmallow fields: numbers and booleans as JSON types only, tensors as numbers or rectangular nested
lists, the model union, and maps keyed by input name."""

from __future__ import annotations

import numbers

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate

from service.engine.values import TensorData, parse_tensor

INPUT_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
INPUT_NAME_ERROR = "Input names are identifiers (letters, digits, _)."
MAX_UNKNOWN_FIELDS = 20  # named in an object's 400; more than this many unknown keys are counted, not listed


class StrictFloat(fields.Float):
    """A JSON number, never a numeric string: marshmallow's Float takes "1e-4" (and has no `strict` option), while
    the OpenAPI document says `number`. Booleans are refused by marshmallow's Number already."""

    def _validated(self, value) -> float:
        if not isinstance(value, numbers.Real):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


class StrictInteger(fields.Integer):
    """A JSON integer as JSON Schema counts them: 3 and 3.0 (what `json.dumps(3.0)` sends) are the integer 3;
    marshmallow's `strict=True` refuses "3", true and 2.5 (which the lenient Integer truncates to 2)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(strict=True, **kwargs)

    def _validated(self, value) -> int:
        if type(value) is float and value.is_integer():  # finite and whole; inf and nan are not
            value = int(value)
        return super()._validated(value)


class StrictBoolean(fields.Boolean):
    """JSON true or false only, not marshmallow's truthy/falsy strings and 0/1. The sets alone cannot say it
    (1 == True, so `1 in {True}`), hence the type check before them."""

    def __init__(self, **kwargs) -> None:
        super().__init__(truthy={True}, falsy={False}, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return super()._deserialize(value, attr, data, **kwargs)


def input_name() -> fields.String:
    """An input's name: an identifier, as formulas and the engine name their variables."""
    return fields.String(validate=validate.Regexp(INPUT_NAME_PATTERN, error=INPUT_NAME_ERROR))


class InputMap(fields.Dict):
    """A JSON object keyed by input name (inputs, points, domain, gradients, ...): one definition, so every such
    map checks its keys alike and the OpenAPI document states the rule (`propertyNames`) for each of them."""

    def __init__(self, values: fields.Field, **kwargs) -> None:
        super().__init__(keys=input_name(), values=values, **kwargs)


class CappedSchema(Schema):
    """A request schema that refuses what would cost more to load than to refuse, before marshmallow loads an item:
    a list or map over its validate.Length max gets that validator's 400 (an audit: 300,000 layers held a worker
    7 s, 1 M `released` items 876 MiB, loaded to be counted), and an object with more than MAX_UNKNOWN_FIELDS
    unknown keys gets the first of them named (1 M unknown keys: 4-7 s, +440 MiB, a 29 MB error). Every request
    schema derives from it (tests/test_cost.py)."""

    @pre_load
    def _refuse_before_loading(self, data, **kwargs):
        try:
            caps, known = self._before_loading
        except AttributeError:  # once per instance: its load_fields (`only`, `exclude`) are known by now
            caps = length_caps(self.load_fields)
            known = {field.data_key or name for name, field in self.load_fields.items()}
            self._before_loading = caps, known
        if type(data) is not dict:
            return data
        if any(type(data.get(key)) in (list, dict) and len(data[key]) > cap for key, cap in caps.items()):
            refuse_long_lists(data, caps)
        if len(data) > len(known) + MAX_UNKNOWN_FIELDS and self.unknown == RAISE:
            unknown = [key for key in data if key not in known]
            if len(unknown) > MAX_UNKNOWN_FIELDS:
                named = {key: ["Unknown field."] for key in unknown[:MAX_UNKNOWN_FIELDS]}
                raise ValidationError(
                    {**named, "_schema": [f"{len(unknown)} unknown fields; the first {MAX_UNKNOWN_FIELDS} are named."]}
                )
        return data


def length_caps(load_fields: dict[str, fields.Field]) -> dict[str, int]:
    """{data key: validate.Length max} of the lists and maps among these fields."""
    return {
        field.data_key or name: validator.max
        for name, field in load_fields.items()
        if isinstance(field, (fields.List, fields.Dict))
        for validator in field.validators
        if isinstance(validator, validate.Length) and validator.max is not None
    }


def refuse_long_lists(data, caps: dict[str, int]) -> None:
    """validate.Length's 400 for a list (or an object) over its cap, before marshmallow deserializes every item."""
    if not isinstance(data, dict):
        return
    errors = {
        key: [f"Longer than maximum length {cap}."]
        for key, cap in caps.items()
        if isinstance(data.get(key), (list, dict)) and len(data[key]) > cap
    }
    if errors:
        raise ValidationError(errors)


class Tensor(fields.Field):
    """A number or a rectangular nested list of numbers; non-finite values as "NaN"/"Infinity"/"-Infinity"."""

    def _deserialize(self, value, attr, data, **kwargs) -> TensorData:
        try:
            return parse_tensor(value)
        except ValueError as err:
            raise ValidationError(str(err)) from None

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


class ValidatedLater(fields.Raw):
    """Any JSON to the request's schema: the view loads it later with one of `schemas`, and its errors then mean
    something else (a problem file's are the instructor's). The OpenAPI document states those schemas (`oneOf`)."""

    def __init__(self, *schemas: type[Schema], **kwargs) -> None:
        super().__init__(**kwargs)
        self.schemas = schemas
