"""orjson for request and response bodies: a strict reader and a guard so a non-finite number never reaches a client.

Duplicate keys: orjson (fast) cannot report them and keeps the last value.  Detection stays cheap by counting:
every key in the raw text ends in `"` + optional whitespace + `:`, so that pattern's count is an upper bound
on the keys sent; if it equals the number of keys orjson kept, nothing was dropped.  Only when it is larger
(a duplicate, or a string value that contains `":`) does the stdlib parser run again with an
object_pairs_hook to name the key.  Measured costs are in docs/edge.md.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import orjson
from flask import current_app, request
from flask.json.provider import JSONProvider
from werkzeug.exceptions import RequestEntityTooLarge

from .errors import DuplicateKey, MalformedJSON, NonFiniteInJSON, UnsupportedMediaType

KEY_END = re.compile(rb'"[ \t\r\n]*:')
UTF8 = ("utf-8", "utf8")
OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS  # marshmallow keys list errors by index


def read_json():
    """The request body parsed strictly: identity encoding, UTF-8, RFC 8259 JSON (no NaN literals, nesting at
    most 1024 deep), no duplicate keys, at most MAX_BODY_BYTES (chunked bodies included)."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed.")
    if not request.is_json:
        raise UnsupportedMediaType(f"Send the body as application/json, not {request.mimetype or 'no Content-Type'}.")
    charset = request.mimetype_params.get("charset", "utf-8").strip().lower()
    if charset not in UTF8:
        raise UnsupportedMediaType(f"charset {charset!r} is not supported; JSON is read as UTF-8 (RFC 8259).")
    raw = read_body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise MalformedJSON(f"The body is not valid JSON: {err}.") from None
    if len(KEY_END.findall(raw)) > kept_keys(body):
        reject_duplicate_keys(raw)
    return body


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


def kept_keys(node) -> int:
    """Keys in every object of the parsed body.  A list whose first item is a scalar is not walked (tensors
    are long lists of numbers): an undercount only sends the body to the exact check, it never hides one."""
    count = 0
    stack = [node]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            count += len(item)
            stack.extend(item.values())
        elif type(item) is list and item and type(item[0]) in (dict, list):
            stack.extend(item)
    return count


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(f"The key {key!r} appears more than once in one object.")
        seen[key] = value
    return seen


def reject_duplicate_keys(raw: bytes) -> None:
    """The slow, exact check: the stdlib parser with a hook that sees every key of every object."""
    try:
        json.loads(raw, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise MalformedJSON("The body is nested too deeply to be checked for duplicate keys.") from None


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
