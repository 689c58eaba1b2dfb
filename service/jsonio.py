"""orjson for request and response bodies, with a strict guard: a non-finite number never reaches a client."""
from __future__ import annotations

import math

import numpy as np
import orjson
from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge
from flask.json.provider import JSONProvider

from .errors import MalformedJSON, NonFiniteInJSON, UnsupportedMediaType

OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS  # marshmallow keys list errors by index


def read_json():
    """The request body parsed as strict RFC 8259 JSON (no NaN literals, nesting at most 1024 deep)."""
    if not request.is_json:
        raise UnsupportedMediaType(f"Send the body as application/json, not {request.mimetype or 'no Content-Type'}.")
    try:
        return orjson.loads(read_body())
    except orjson.JSONDecodeError as err:
        raise MalformedJSON(f"The body is not valid JSON: {err}.") from None


def read_body() -> bytes:
    """The body, at most MAX_BODY_BYTES of it; a longer chunked body is a 413, not silently cut.

    With a Content-Length werkzeug refuses an over-long body itself. A chunked body has none: werkzeug then
    stops reading at the limit without a word, so the app reads one byte more from the server's
    (de-chunking) stream and counts.
    """
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None or not request.environ.get("wsgi.input_terminated") or limit is None:
        return request.get_data(cache=False)
    data = request.environ["wsgi.input"].read(limit + 1)
    if len(data) > limit:
        raise RequestEntityTooLarge()
    return data


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


_ALWAYS_FINITE = frozenset((str, int, bool, type(None)))


def all_finite(obj) -> bool:
    """assert_finite()'s question without building a path per key: the common case costs ~10x less."""
    kind = type(obj)
    if kind is dict:
        return all(map(all_finite, obj.values()))
    if kind is list or kind is tuple:
        return all(map(all_finite, obj))
    if kind in _ALWAYS_FINITE:
        return True
    if kind is float:
        return math.isfinite(obj)
    if kind is np.ndarray:
        return obj.dtype.kind != "f" or bool(np.isfinite(obj).all())
    try:
        assert_finite(obj)  # anything else (numpy scalars, subclasses): the full check
    except NonFiniteInJSON:
        return False
    return True


class Encoded(dict):
    """A body built from engine.encode_tree() output, whose walk already made every float finite (non-finite
    ones are "NaN"/"Infinity" strings): dumps_bytes() does not walk it a second time."""


def dumps_bytes(obj) -> bytes:
    if type(obj) is not Encoded and not all_finite(obj):
        assert_finite(obj)  # raises, naming the path
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
