"""orjson for request and response bodies: a strict reader and a guard so a non-finite number never reaches a client.

Duplicate keys: orjson (fast) cannot report them and keeps the last value.  Detection stays cheap by counting:
every key in the raw text ends in `"` + optional whitespace + `:`, so that pattern's count is an upper bound
on the keys sent; if it equals the number of keys orjson kept, nothing was dropped.  When it is larger (a
duplicate, or a string value that contains `":`), the keys are counted exactly on the raw bytes, without
parsing the body again (`raw_key_count`), and compared with every key orjson kept; only a body that really has a
duplicate has its key names decoded, to name it.  Measured costs are in docs/limits.md.
"""

from __future__ import annotations

import gc
import math
import re
from itertools import chain, compress
from operator import itemgetter

import numpy as np
import orjson
from flask import current_app, request
from flask.json.provider import JSONProvider
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .engine.deadline import DeadlineInterrupt
from .engine.encode import JsonText
from .engine.errors import LimitExceeded
from .errors import BodyTimeout, DuplicateKey, IncompleteBody, MalformedJSON, NonFiniteInJSON, UnsupportedMediaType

KEY_END = re.compile(rb'"[ \t\r\n]*:')
UTF8 = ("utf-8", "utf8")
OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS  # marshmallow keys list errors by index


def read_json():
    """The request body parsed strictly: identity encoding (no transfer coding but chunked), UTF-8, RFC 8259 JSON
    (no NaN literals, nesting at most 1024 deep), no duplicate keys, at most MAX_BODY_BYTES (chunked included)."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed.")
    require_plain_transfer()
    if not request.is_json:
        sent = f", not {request.mimetype}" if request.mimetype else ": the request has no Content-Type"
        raise UnsupportedMediaType(f"Send the body as application/json{sent}.")
    charset = request.mimetype_params.get("charset", "utf-8").strip().lower()
    if charset not in UTF8:
        raise UnsupportedMediaType(f"charset {charset!r} is not supported; JSON is read as UTF-8 (RFC 8259).")
    raw = read_body()
    keys = len(KEY_END.findall(raw))
    require_parse_budget(raw, keys, current_app.config["LIMITS"].max_request_bytes)
    try:
        body = loads_untracked(raw)
    except orjson.JSONDecodeError as err:
        raise MalformedJSON(f"The body is not valid JSON: {err}.") from None
    if keys > kept_keys(body):
        reject_duplicate_keys(raw, body)
    return body


# Transfer codings that leave the body's bytes as sent: gunicorn de-chunks, and takes `identity` as a no-op
PLAIN_TRANSFER_CODINGS = ("chunked", "identity")


def require_plain_transfer() -> None:
    """A 415 for a body sent with a transfer coding such as gzip (`Transfer-Encoding: gzip, chunked`): gunicorn
    removes the chunking only and hands the compressed bytes on, which would be parsed as text. Like a
    Content-Encoding, it is refused before the body is read (docs/edge.md says why 415 and not 501)."""
    sent = request.headers.get("Transfer-Encoding", "")
    codings = [coding.strip().lower() for coding in sent.split(",") if coding.strip()]
    if any(coding not in PLAIN_TRANSFER_CODINGS for coding in codings):
        raise UnsupportedMediaType(
            f"Transfer-Encoding {sent.strip()[:100]!r} is not supported; send the body uncompressed, with "
            "Transfer-Encoding: chunked alone or a Content-Length."
        )


# Bytes the parsed body takes per JSON value, per list or object and per key (orjson's objects, measured with
# tracemalloc and VmHWM, docs/limits.md): a number ~40 kept and up to ~88 while its list grows, an empty list
# ~91, an object with one key ~290 in all.  Counted on the raw bytes (each value but a container's first follows
# a comma; commas inside strings only overcount), so a 12 MB body of `[],` or `{"a":0},` cannot take a worker's
# gigabyte before any limit looks at it.  A body of max_total_elements numbers (4 Mi) stays under the budget.
PARSE_BYTES_PER_VALUE, PARSE_BYTES_PER_CONTAINER, PARSE_BYTES_PER_KEY = 56, 96, 160
# Lists and objects beyond one a value (`[[[]]]`, `[[[[[[0]]]]]]`) are priced by their time as well: the walks of
# an answer made of them (parse, kept_keys, the schema's and the grader's level-by-level reads, its summary) take
# 0.6-1.4 µs a list in all (2.2 s of CPU in-process for 400,000 `[[[[[[0]]]]]]`): 256 bytes (1 µs) more each. A
# tensor's rows hold a value each or more ([n, 1], [n, 2]: no extra), so an honest body pays 96 a list as before;
# every list priced at 160 refused 1 M-row [n, 1] inputs that answer in under a second (a second audit).
PARSE_BYTES_PER_EXTRA_CONTAINER = 256


def loads_untracked(raw: bytes):
    """orjson.loads with the cyclic garbage collector paused: a parsed body is a tree, with no cycle to find, but
    its lists are tracked containers, and a million of them set off collections that walk them again and again
    while they are made (a 5 MB body of `[[[]]] * 1000000`: 1.1 s to parse, 0.2 s paused; docs/limits.md)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return orjson.loads(raw)
    finally:
        if enabled:
            gc.enable()


def value_counts(raw: bytes) -> tuple[int, int]:
    """(values, lists and objects) of a JSON text, counted on its bytes without parsing it: every value but a
    container's first follows a comma (commas inside strings only overcount)."""
    return raw.count(b",") + 1, raw.count(b"[") + raw.count(b"{")


def parse_bytes(raw: bytes, keys: int) -> int:
    """The body's price: what orjson's objects for it take, by its counts (`keys`: KEY_END matches)."""
    return _parse_price(*value_counts(raw), keys)


def _parse_price(values: int, containers: int, keys: int) -> int:
    return (
        PARSE_BYTES_PER_VALUE * values
        + PARSE_BYTES_PER_CONTAINER * containers
        + PARSE_BYTES_PER_EXTRA_CONTAINER * _extra_containers(values, containers)
        + PARSE_BYTES_PER_KEY * keys
    )


def _extra_containers(values: int, containers: int) -> int:
    """The lists and objects beyond one a value (PARSE_BYTES_PER_EXTRA_CONTAINER)."""
    return max(0, containers - values)


def require_parse_budget(raw: bytes, keys: int, budget: int) -> None:
    """A 413 before orjson builds the body when its objects alone would be over the request budget."""
    values, containers = value_counts(raw)
    estimate = _parse_price(values, containers, keys)
    if estimate > budget:
        extra = _extra_containers(values, containers)
        lists = f"{containers} lists and objects" + (f", {extra} of them beyond one a value" if extra else "")
        raise LimitExceeded(
            "max_request_bytes",
            budget,
            f"parsing this body would take about {estimate / 2**20:.1f} MiB ({values} values, {lists}, {keys} keys) "
            f"before any computation; the budget is {budget / 2**20:.1f} MiB",
            estimate=estimate,
            breakdown={"body": estimate},
            hint="send fewer numbers, lists or objects: split the work into several requests",
        )


def read_body() -> bytes:
    """The body, at most MAX_BODY_BYTES of it; a longer chunked body is a 413, not silently cut.

    With a Content-Length werkzeug refuses an over-long body itself. A chunked body has none: werkzeug then
    stops reading at the limit without a word, so the app reads one byte more from the server's
    (de-chunking) stream and counts. A body that breaks off is a 400, never parsed: the server's stream returns
    what arrived of a Content-Length body when the client closes early, and raises its own exceptions for a
    malformed chunked encoding (gunicorn's InvalidChunkSize, NoMoreData, ...), which would be a 500. A body that
    stalls until the request's deadline is a 408: the client's delay, not a computation over its time.
    """
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    length = request.content_length
    try:
        if length is not None or not request.environ.get("wsgi.input_terminated") or limit is None:
            data = request.get_data(cache=False)
        else:
            data = request.environ["wsgi.input"].read(limit + 1)
            if len(data) > limit:
                raise RequestEntityTooLarge()
    except HTTPException:
        raise
    except DeadlineInterrupt as stop:
        raise BodyTimeout(
            f"The request body did not arrive within the wall-time limit ({stop.seconds:g} s); send it whole."
        ) from None
    except Exception as err:  # the server's stream, on the client's framing: any failure to read is the client's
        raise IncompleteBody(f"The request body could not be read ({type(err).__name__}): send a valid body.") from None
    if length is not None and len(data) < length:
        raise IncompleteBody(f"The body ended after {len(data)} of the {length} bytes its Content-Length announced.")
    return data


def kept_keys(node, exact: bool = False) -> int:
    """Keys in every object of the parsed body.  A list whose first item is a scalar is not walked (tensors
    are long lists of numbers): an undercount only sends the body to the exact check, it never hides one.
    With `exact`, such a list is walked too when it holds any list or object (one C-speed pass over its types).

    A long walked list of lists is walked a level at a time (_walk_items): its walked lists are joined into one
    tuple with C loops, so a million short lists (`[[[]]] * 1000000`) cost a few passes, not a Python step each
    (1.6 s in a profile, an audit). The stack's tuples are those levels (orjson makes no tuple). A short list is
    pushed item by item: the joining's set, filters and tuple cost ~2 µs a list, 4-7x the push, and a million
    objects each holding `[[1]]` paid it a million times (a second audit)."""
    count = 0
    stack = [node]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            count += len(item)
            stack.extend(item.values())
        elif kind is list and 0 < len(item) < JOINED_FROM:
            if type(item[0]) in CONTAINERS or (exact and not CONTAINERS.isdisjoint(set(map(type, item)))):
                stack.extend(item)
        elif kind is tuple or (kind is list and item and (exact or type(item[0]) in CONTAINERS)):
            _walk_items(item, stack, exact)
    return count


JOINED_FROM = 16  # items from which kept_keys walks a list's lists a level at a time (measured: docs/limits.md)


def _walk_items(items, stack: list, exact: bool) -> None:
    """Push what kept_keys walks of a walked list's `items`: its objects and lists, or when all are lists the items
    of those it walks, joined (every one with `exact`, else those whose first item is a list or an object)."""
    kinds = set(map(type, items))
    if kinds == {list}:
        lists = items
        if not exact:
            lists = list(filter(None, items))
            lists = compress(lists, map(CONTAINERS.__contains__, map(type, map(itemgetter(0), lists))))
        stack.append(tuple(chain.from_iterable(lists)))
    elif kinds == {dict}:
        stack.extend(items)
    elif not CONTAINERS.isdisjoint(kinds):
        stack.extend(compress(items, map(CONTAINERS.__contains__, map(type, items))))


CONTAINERS = frozenset((dict, list))
# Inside a string, a `"` is written `\"` and a backslash `\\`.  Masking both with bytes a valid body cannot hold
# (raw control characters are not allowed in JSON text) keeps every offset, and leaves a `"` only where a string
# starts or ends: the quotes then alternate, opening and closing.
MASKS = ((b"\\\\", b"\x00\x00"), (b'\\"', b"\x00\x01"))
STRING_OR_KEY = re.compile(rb'"[^"]*"(?:[ \t\r\n]*(:))?')  # group 1 is ":" for a key, b"" for a value
EVENT = re.compile(rb'[{}]|"[ \t\r\n]*:')
QUOTE, OPEN = ord('"'), ord("{")


def masked(raw: bytes) -> bytes:
    for escape, mask in MASKS:
        raw = raw.replace(escape, mask)  # C speed; the same object back when there is nothing to mask
    return raw


def raw_key_count(raw: bytes) -> int:
    """How many keys the raw body has, exactly: strings that merely contain `":` are not keys.  In the masked
    text a string is `"[^"]*"`, so one regex pass (C speed) walks every string and marks the keys."""
    return STRING_OR_KEY.findall(masked(raw)).count(b":")


def _key_name(raw: bytes, start: int, end: int) -> str:
    text = raw[start:end]
    return orjson.loads(b'"' + text + b'"') if b"\\" in text else text.decode()


def duplicate_key(raw: bytes) -> str | None:
    """The first key that appears twice in one object, found on the raw bytes: keys and the braces outside strings
    (an even number of quotes before them), one Python step each; numbers are skipped by the regex engine."""
    text = masked(raw)
    quotes = last = 0
    stack: list[set] = []
    keys: set = set()
    for match in EVENT.finditer(text):
        at = match.start()
        quotes += text.count(b'"', last, at)
        last = at
        char = text[at]
        if char == QUOTE:
            if quotes % 2:
                name = _key_name(raw, text.rfind(b'"', 0, at) + 1, at)
                if name in keys:
                    return name
                keys.add(name)
        elif quotes % 2 == 0:
            if char == OPEN:
                stack.append(keys)
                keys = set()
            else:
                keys = stack.pop()
    return None


def reject_duplicate_keys(raw: bytes, body) -> None:
    """The exact check: the keys of the raw text against the keys orjson kept.  Each raw key lands in one object,
    where orjson keeps one entry per distinct key, so the counts differ exactly when some object has a key twice
    (and orjson dropped it, with anything nested in its first value).  Only then is the key looked for, to name it."""
    if raw_key_count(raw) == kept_keys(body, exact=True):
        return
    name = duplicate_key(raw)
    raise DuplicateKey(
        "A key appears more than once in one object."  # the counts prove one: not reached
        if name is None
        else f"The key {name!r} appears more than once in one object."
    )


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
    ones are "NaN"/"Infinity" strings, or JSON text written so): the writers below do not walk it a second time."""


def text_fragment(value) -> orjson.Fragment:
    """orjson's `default`: a JsonText is written as its text; any other type orjson does not know stays an error."""
    if type(value) is JsonText:
        return orjson.Fragment(b"".join(value.pieces))
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _require_finite(obj) -> None:
    if type(obj) is not Encoded and not all_finite(obj):
        assert_finite(obj)  # raises, naming the path


def _dumps(obj, default) -> bytes:
    """orjson.dumps; a deadline that fires in `default` (Python code orjson runs, where a pending SIGALRM is raised)
    is the DeadlineInterrupt it was, not orjson's JSONEncodeError wrapping it (that was a 500, not the 503)."""
    try:
        return orjson.dumps(obj, default=default, option=OPTIONS)
    except orjson.JSONEncodeError as err:
        if isinstance(err.__cause__, DeadlineInterrupt):
            raise err.__cause__ from None
        raise


def dumps_bytes(obj) -> bytes:
    _require_finite(obj)
    return _dumps(obj, text_fragment)


# In place of each JsonText while the rest of the body is written: a byte orjson never writes (it escapes control
# characters inside strings, and a JsonText is orjson's own output), so the body splits there and nowhere else.
PLACEHOLDER = b"\x00"


def dumps_pieces(obj) -> list[bytes]:
    """dumps_bytes(obj) as the pieces that join into it: each JsonText's pieces (the same objects, not copies)
    between the pieces of the rest. Joined, a body with 160 MiB of text would be held twice (and orjson's buffer
    grows by reallocation); sent as the WSGI iterable, the text is held once."""
    _require_finite(obj)
    texts: list[list[bytes]] = []

    def placeholder(value) -> orjson.Fragment:
        if type(value) is JsonText:
            texts.append(value.pieces)  # orjson calls `default` in the order it writes: the placeholders' order
            return orjson.Fragment(PLACEHOLDER)
        return text_fragment(value)

    rest = _dumps(obj, placeholder)
    if not texts:
        return [rest]
    around = rest.split(PLACEHOLDER)
    del rest
    if len(around) != len(texts) + 1:  # not reached: a stray byte would move every text
        raise RuntimeError(f"{len(around) - 1} placeholders for {len(texts)} JSON texts")
    pieces = [around[0]]
    for text, after in zip(texts, around[1:], strict=True):
        pieces += text
        pieces.append(after)
    return [piece for piece in pieces if piece]


class StrictJSONProvider(JSONProvider):
    """Flask's JSON provider, backed by orjson, refusing non-finite numbers instead of writing null or NaN."""

    def dumps(self, obj, **kwargs) -> str:
        return dumps_bytes(obj).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)

    def response(self, *args, **kwargs):
        """The body as one bytes object, or as its pieces (dumps_pieces) with their Content-Length: werkzeug sends
        a list as it is, piece by piece, and the access log counts it without joining it."""
        pieces = dumps_pieces(self._prepare_response_obj(args, kwargs))
        if len(pieces) == 1:
            return self._app.response_class(pieces[0], mimetype="application/json")
        response = self._app.response_class(pieces, mimetype="application/json")
        response.content_length = sum(map(len, pieces))
        return response
