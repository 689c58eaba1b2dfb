"""Reading a JSON request body strictly: identity encoding, UTF-8, RFC 8259 JSON, no duplicate keys.

orjson (fast) cannot report duplicate keys and keeps the last value.  Detection stays cheap by counting:
every key in the raw text ends in `"` + optional whitespace + `:`, so that pattern's count is an upper bound
on the keys sent; if it equals the number of keys orjson kept, nothing was dropped.  Only when it is larger
(a duplicate, or a string value that contains `":`) does the stdlib parser run again with an
object_pairs_hook to name the key.  Measured costs are in docs/edge.md.
"""
from __future__ import annotations

import json
import re

import orjson
from flask import request

from .errors import MalformedJSON, UnsupportedMediaType

KEY_END = re.compile(rb'"[ \t\r\n]*:')
UTF8 = ("utf-8", "utf8")


class DuplicateKey(MalformedJSON):
    """The same key twice in one object: which value was meant is a guess, so the request is refused."""


def read_json():
    """The request body parsed as strict RFC 8259 JSON (no NaN literals, nesting at most 1024 deep)."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed.")
    if not request.is_json:
        raise UnsupportedMediaType(f"Send the body as application/json, not {request.mimetype or 'no Content-Type'}.")
    charset = request.mimetype_params.get("charset", "utf-8").strip().lower()
    if charset not in UTF8:
        raise UnsupportedMediaType(f"charset {charset!r} is not supported; JSON is read as UTF-8 (RFC 8259).")
    raw = request.get_data(cache=False)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise MalformedJSON(f"The body is not valid JSON: {err}.") from None
    if len(KEY_END.findall(raw)) > kept_keys(body):
        reject_duplicate_keys(raw)
    return body


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
