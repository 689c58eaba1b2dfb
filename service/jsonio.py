"""orjson for request and response bodies, with a strict guard: a non-finite number never reaches a client."""
from __future__ import annotations

import math

import numpy as np
import orjson
from flask.json.provider import JSONProvider

OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS  # marshmallow keys list errors by index


class NonFiniteInJSON(ValueError):
    """A NaN or infinity got past the encoder (engine/encode.py); orjson would silently write null."""


def assert_finite(obj, where: str = "body") -> None:
    """Walk the small dict/list skeleton; numpy arrays are checked in one vectorized call."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            assert_finite(value, f"{where}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            assert_finite(value, f"{where}[{i}]")
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f" and not np.isfinite(obj).all():
            raise NonFiniteInJSON(where)
    elif isinstance(obj, (float, np.floating)) and not math.isfinite(obj):
        raise NonFiniteInJSON(where)


def dumps_bytes(obj) -> bytes:
    assert_finite(obj)
    return orjson.dumps(obj, option=OPTIONS)


class StrictJSONProvider(JSONProvider):
    """Flask's JSON provider, backed by orjson, refusing non-finite numbers instead of writing null or NaN."""

    def dumps(self, obj, **kwargs) -> str:
        return dumps_bytes(obj).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)

    def response(self, *args, **kwargs):
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(dumps_bytes(obj), mimetype="application/json")
