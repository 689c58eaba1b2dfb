"""Custom marshmallow fields: numbers and booleans as JSON types only, tensors as numbers or rectangular nested
lists, the model union, and maps keyed by input name."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, utils, validate

from service.engine.cost import error_messages
from service.engine.values import TensorData, parse_tensor

INPUT_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
INPUT_NAME_ERROR = "Input names are identifiers (letters, digits, _)."
MAX_UNKNOWN_FIELDS = 20  # named in an object's 400; more than this many unknown keys are counted, not listed
# A list or map of objects stops loading its items once their errors hold this many messages (ErrorBoundedList): each
# item stays under its caps, but 5,000 problem-file checks of 49 errors each took a worker 2-6 s for a 9-15 MB 400
MAX_LISTED_ERRORS = 1000


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
    a list or map over its validate.Length cap (a map's list values too: `domain`) gets that validator's 400 (an
    audit: 300,000 layers held a worker 7 s, 1 M `released` items 876 MiB, 1 M items of one `domain` range 10 s,
    loaded to be counted), and an object with more than MAX_UNKNOWN_FIELDS unknown keys gets the first of them
    named (1 M unknown keys: 4-7 s, +440 MiB, a 29 MB error). Every request schema derives from it
    (tests/test_cost.py)."""

    @pre_load
    def _refuse_before_loading(self, data, **kwargs):
        try:
            caps, value_caps, known = self._before_loading
        except AttributeError:  # once per instance: its load_fields (`only`, `exclude`) are known by now
            caps, value_caps = length_caps(self.load_fields)
            known = {field.data_key or name for name, field in self.load_fields.items()}
            self._before_loading = caps, value_caps, known
        if type(data) is not dict:
            return data
        errors = {key: cap.error for key, cap in caps.items() if cap.exceeded(data.get(key))}
        for key, cap in value_caps.items():
            values = data.get(key)
            over = {name: {"value": cap.error} for name, value in _items(values) if cap.exceeded(value)}
            if over:
                errors[key] = over
        if errors:
            raise ValidationError(errors)
        if len(data) > len(known) + MAX_UNKNOWN_FIELDS and self.unknown == RAISE:
            unknown = [key for key in data if key not in known]
            if len(unknown) > MAX_UNKNOWN_FIELDS:
                named = {key: ["Unknown field."] for key in unknown[:MAX_UNKNOWN_FIELDS]}
                raise ValidationError(
                    {**named, "_schema": [f"{len(unknown)} unknown fields; the first {MAX_UNKNOWN_FIELDS} are named."]}
                )
        return data


def _items(values) -> list:
    return list(values.items()) if type(values) is dict else []


class _Cap:
    """A validate.Length's upper bound and the message it gives a list (or map) over it."""

    def __init__(self, validator: validate.Length) -> None:
        self.cap = validator.equal if validator.equal is not None else validator.max
        template = validator.message_equal if validator.equal is not None else validator.message_max
        self.error = [(validator.error or template).format(equal=validator.equal, max=validator.max, min=validator.min)]

    def exceeded(self, value) -> bool:
        return type(value) in (list, dict) and len(value) > self.cap


def length_caps(load_fields: dict[str, fields.Field]) -> tuple[dict[str, _Cap], dict[str, _Cap]]:
    """The validate.Length caps of the lists and maps among these fields, and of the list values of their maps, by
    data key: lists over them are refused before loading (only too long: a short one's items are loaded first, as
    marshmallow does)."""

    def caps(field: fields.Field) -> list[_Cap]:
        if not isinstance(field, (fields.List, fields.Dict)):
            return []
        return [
            _Cap(v)
            for v in field.validators
            if isinstance(v, validate.Length) and (v.max is not None or v.equal is not None)
        ]

    direct, values = {}, {}
    for name, field in load_fields.items():
        key = field.data_key or name
        for cap in caps(field):
            direct[key] = cap
        if isinstance(field, fields.Dict) and field.value_field is not None:
            for cap in caps(field.value_field):
                values[key] = cap
    return direct, values


class _ErrorBound:
    """The errors an ErrorBoundedList or ErrorBoundedDict has listed so far, and where it stopped loading items."""

    def __init__(self) -> None:
        self.listed = 0

    def reached(self) -> bool:
        return self.listed >= MAX_LISTED_ERRORS

    def add(self, messages) -> None:
        self.listed += error_messages(messages)

    def stop(self, rest: int, what: str) -> list[str]:
        """The message in place of the first item not loaded; `rest`: the items after it, not loaded either."""
        after = f", nor the {rest} {what} after it" if rest else ""
        return [
            f"Not validated{after}: the errors of the {what} before it hold {self.listed} messages (at most "
            f"{MAX_LISTED_ERRORS} are listed at once); fix those first."
        ]


class ErrorBoundedList(fields.List):
    """A list of objects (problems, points) loaded item by item until their errors hold MAX_LISTED_ERRORS messages;
    the item after that gets a message saying that it and the rest were not validated. Marshmallow's List loads
    every item whatever it found: each stays under its caps, but together they made 400s of millions of messages
    (docs/limits.md "Errors listed at most")."""

    def _deserialize(self, value, attr, data, **kwargs) -> list:
        if not utils.is_collection(value):
            raise self.make_error("invalid")
        result, errors, bound = [], {}, _ErrorBound()
        for index, item in enumerate(value):
            if bound.reached():
                errors[index] = bound.stop(len(value) - index - 1, "items")  # a list from JSON: len() is known
                break
            try:
                result.append(self.inner.deserialize(item, **kwargs))
            except ValidationError as error:
                if error.valid_data is not None:
                    result.append(error.valid_data)
                errors[index] = error.messages
                bound.add(error.messages)
        if errors:
            raise ValidationError(errors, valid_data=result)
        return result


class ErrorBoundedDict(fields.Dict):
    """A map of objects (a check's `checks`) whose values load until their errors (and its keys') hold
    MAX_LISTED_ERRORS messages, as ErrorBoundedList; its keys are loaded first, as marshmallow's Dict does."""

    def _deserialize(self, value, attr, data, **kwargs) -> dict:
        if not isinstance(value, Mapping):
            raise self.make_error("invalid")
        errors: dict = {}
        keys = {}
        for key in value:
            try:
                keys[key] = self.key_field.deserialize(key, **kwargs)
            except ValidationError as error:
                errors[key] = {"key": error.messages}
        bound = _ErrorBound()
        bound.add(errors)
        result = {}
        for index, (key, item) in enumerate(value.items()):
            if bound.reached():
                errors.setdefault(key, {})["value"] = bound.stop(len(value) - index - 1, "entries")
                break
            try:
                loaded = self.value_field.deserialize(item, **kwargs)
            except ValidationError as error:
                errors.setdefault(key, {})["value"] = error.messages
                bound.add(error.messages)
                if error.valid_data is not None and key in keys:
                    result[keys[key]] = error.valid_data
            else:
                if key in keys:
                    result[keys[key]] = loaded
        if errors:
            raise ValidationError(errors, valid_data=result)
        return result


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
