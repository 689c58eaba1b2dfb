"""Turn result tensors into JSON-ready values: numpy arrays (fast to serialize), non-finite values as strings
(or, for a large tensor, as JSON text: JsonText)."""

from __future__ import annotations

import math
from itertools import compress, count, repeat
from math import isfinite
from operator import is_, not_

import numpy as np
import orjson
import torch

# A non-finite tensor of at least TEXT_FROM elements, when the caller asks for text (a body that goes straight to
# orjson): its JSON text in place of a Python list of floats and strings (~57 MiB for 1 M float64 numbers; the text
# is 4-25 bytes a number), written CHUNK elements at a time (orjson reserves ~256 bytes an item while it writes one:
# 4 MiB a chunk). Below TEXT_FROM the list costs at most ~0.2 MiB more than the text.
TEXT_FROM = 4096
CHUNK = 16384
_TEXT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class JsonText:
    """A large non-finite tensor's JSON text (json_pieces), in pieces of about a chunk each. The response writer
    (service/jsonio.py) sends the pieces as they are, never joined: the text is held once, and no buffer grows by
    reallocation while it is written."""

    __slots__ = ("pieces",)

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces


def encode_tensor(t: torch.Tensor, warnings: list[str], where: str, as_text: bool = False):
    """A tensor as a numpy array/scalar.

    If any value is non-finite: a list with "NaN"/"Infinity" strings instead, and a warning; with `as_text`, a
    large one is its JSON text instead (a JsonText: the same bytes in the response, built in chunks)."""
    arr = t.detach().cpu()
    if not arr.is_floating_point():
        arr = arr.double()
    arr = arr.contiguous().numpy()
    finite = np.isfinite(arr)
    if finite.all():
        return arr[()] if arr.ndim == 0 else arr
    bad = int(arr.size - finite.sum())
    warnings.append(f"{where}: {bad} of {arr.size} value(s) not finite")
    if as_text and arr.size >= TEXT_FROM and arr.dtype in _TEXT_DTYPES:
        del finite
        return JsonText(json_pieces(arr))
    return _with_strings(arr, finite)


def _with_strings(arr: np.ndarray, finite: np.ndarray):
    """A non-finite array as a list (or a scalar) of numbers and "NaN"/"Infinity"/"-Infinity" strings."""
    out = np.empty(arr.shape, dtype=object)
    out.fill("NaN")  # one string shared (np.full would copy it per element), and a number made for finite values only
    out[arr == np.inf] = "Infinity"
    out[arr == -np.inf] = "-Infinity"
    values = arr[finite]
    # float64: Python floats, which print as the float64 scalars do; else numpy scalars, so float32 values still
    # print as float32 (0.1, not 0.10000000149…)
    out[finite] = values if arr.dtype == np.float64 else list(values)
    return out[()] if arr.ndim == 0 else out.tolist()


def json_pieces(arr: np.ndarray) -> list[bytes]:
    """The JSON orjson writes for _with_strings(arr), in pieces, with at most CHUNK elements as Python objects at a
    time: a finite chunk written from its numpy array, another through _with_strings. Chunks are runs of whole rows
    along the first axis (a row longer than CHUNK is split the same way), so the brackets nest as the list's would;
    the brackets and commas between chunks go into the next piece (a chunk is copied anyway, to drop its own)."""
    pieces: list[bytes] = []
    closing = _write_pieces(arr, pieces, b"")
    if closing:
        pieces[-1] += closing
    return pieces


def _chunk_text(arr: np.ndarray) -> bytes:
    finite = np.isfinite(arr)
    return orjson.dumps(arr if finite.all() else _with_strings(arr, finite), option=orjson.OPT_SERIALIZE_NUMPY)


def _write_pieces(arr: np.ndarray, pieces: list[bytes], pending: bytes) -> bytes:
    """Append arr's text to `pieces`, `pending` (brackets and commas not written yet) before it; return what is
    pending after it (its closing brackets)."""
    if arr.size <= CHUNK:
        chunk = _chunk_text(arr)
        pieces.append(pending + chunk if pending else chunk)
        return b""
    rows = max(1, CHUNK // (arr.size // len(arr)))
    pending += b"["
    for start in range(0, len(arr), rows):
        if start:
            pending += b","
        block = arr[start : start + rows]
        if block.size <= CHUNK:  # its rows without the block's own brackets
            pieces.append(b"".join((pending, memoryview(_chunk_text(block))[1:-1])))
            pending = b""
        else:  # one row, longer than CHUNK: split the same way
            pending = _write_pieces(block[0], pieces, pending)
    return pending + b"]"


class _SlowPath(Exception):
    """A value the fast walk does not handle (non-finite, unusual dtype): the full walk names its path."""


# dtype -> numpy scalar type: a 0-d tensor becomes the numpy scalar tensor.numpy()[()] would give (orjson
# writes a float32 with its own shortest repr, 6.701176, not the double's 6.701176166534424), built from
# .item(), which is exact, needs no detach and is ~2x faster than going through a numpy array
_FAST_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
_PLAIN = frozenset((int, str, bool, type(None)))  # most of a graph's leaves: returned as they are, checked first
_LEAVES = _PLAIN | {float}  # a finite float is a leaf too
FEW_FLOATS = 32  # up to this many floats in a list, checked one by one: numpy's call costs more


# Deeper than this, a dict or list is not walked: the fast walk hands it to the full walk, which writes TOO_DEEP
# in its place (an iterative walk: no recursion a client's nesting controls; orjson refuses more than 254 levels).
# A response's own values nest ~15 deep at most (a tensor's 8 dimensions in a graph node, per point).
MAX_DEPTH = 64
TOO_DEEP = f"(nested deeper than {MAX_DEPTH} levels: not shown)"


class EncodedPart:
    """A part of a tree encoded already (encoded_finite()): encode_tree() puts its value in place as it is. What
    many responses share (a problem's points, a class's equal checks) is then encoded once, not walked each time."""

    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value


def encoded_finite(obj, known: dict[int, object], depth: int = 0) -> EncodedPart | None:
    """`obj` encoded as encode_tree() encodes it at `depth` in a tree, when everything in it is finite; else None
    (encode_tree()'s full walk names each non-finite value's path in its place)."""
    try:
        return EncodedPart(_encode_finite(obj, known, depth))
    except _SlowPath:
        return None


def _encode_finite(obj, known: dict[int, object], depth: int = 0):
    """encode_tree() for the common case, without building a path per key (~4x faster on a graph)."""
    kind = type(obj)
    if kind in _PLAIN:
        return obj
    if kind is EncodedPart:
        return obj.value
    if kind is dict:  # plain leaves and finite floats inline: most of a response's values, a call each most of the walk
        if depth >= MAX_DEPTH:
            raise _SlowPath
        return {
            k: v if (t := type(v)) in _PLAIN or (t is float and isfinite(v)) else _encode_finite(v, known, depth + 1)
            for k, v in obj.items()
        }
    if kind is list or kind is tuple:
        if depth >= MAX_DEPTH:
            raise _SlowPath
        # one comprehension: faster than _walked()'s C loops at every length while everything is finite (measured:
        # 0.5 against 0.8 µs for 3 items, 4.5 against 8.6 ms for 65,536 floats); a non-finite item ends this walk
        return [
            v if (t := type(v)) in _PLAIN or (t is float and isfinite(v)) else _encode_finite(v, known, depth + 1)
            for v in obj
        ]
    if kind is float:
        if math.isfinite(obj):
            return obj
        raise _SlowPath
    if isinstance(obj, torch.Tensor):
        if id(obj) in known:
            return known[id(obj)]
        scalar = _FAST_DTYPES.get(obj.dtype)
        if scalar is None or not obj.is_cpu:
            raise _SlowPath
        if obj.dim() == 0:
            value = obj.item()
            if math.isfinite(value):
                return scalar(value)
            raise _SlowPath
        arr = (obj.detach() if obj.requires_grad else obj).contiguous().numpy()
        if np.isfinite(arr).all():
            return arr
        raise _SlowPath
    if isinstance(obj, (dict, list, tuple, float)):  # subclasses: the full walk
        raise _SlowPath
    return obj


def encode_tree(
    obj, warnings: list[str], where: str = "", known: dict[int, object] | None = None, as_text: bool = False
):
    """Walk dicts and lists, encoding every tensor (and non-finite float) in place of its path.

    `known`: encoded_tensors() of tensors that many responses share (a problem's points and references).
    `as_text`: a large non-finite tensor becomes its JSON text (encode_tensor), for a body orjson writes as it is:
    nothing else may read those values (a platform's table, a schema's dump)."""
    try:
        return _encode_finite(obj, known or {})  # all finite: same values as the full walk, and no warnings to name
    except _SlowPath:
        return _encode_tree(obj, warnings, where, as_text)


def encoded_tensors(*objs) -> dict[int, object]:
    """id(tensor) -> its encoded value, for every finite tensor in these dicts and lists, to pass as encode_tree's
    `known` for as long as the tensors live (while they do, no other object has their id)."""
    known: dict[int, object] = {}
    stack = list(objs)
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, torch.Tensor):
            try:
                known[id(obj)] = _encode_finite(obj, known)
            except _SlowPath:
                pass  # a non-finite value: encode_tree's full walk names its path in each response
    return known


def _encode_tree(obj, warnings: list[str], where: str = "", as_text: bool = False):
    """The full walk: every non-finite value becomes a string and a warning naming its path; a dict or list
    nested MAX_DEPTH deep becomes TOO_DEEP (and a warning). Iterative, in the order a recursive walk would go."""
    root: list = [None]
    stack: list = [(obj, root, 0, where, 0)]
    while stack:
        item, parent, key, path, depth = stack.pop()
        if type(item) is EncodedPart:
            parent[key] = item.value
        elif isinstance(item, torch.Tensor):
            parent[key] = encode_tensor(item, warnings, path, as_text)
        elif isinstance(item, float):
            parent[key] = encode_tensor(torch.tensor(item, dtype=torch.float64), warnings, path)
        elif isinstance(item, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                parent[key] = TOO_DEEP
                warnings.append(f"{path}: nested deeper than {MAX_DEPTH} levels, not shown")
                continue
            if isinstance(item, dict):
                out: dict | list = dict.fromkeys(item)
                children = [(v, out, k, f"{path}.{k}" if path else str(k), depth + 1) for k, v in item.items()]
            else:  # its leaves copied at once: only the items that need it are walked, each with its path
                out = list(item)
                children = [(item[i], out, i, f"{path}[{i}]", depth + 1) for i in _walked(item)]
            parent[key] = out
            stack.extend(reversed(children))
        else:
            parent[key] = item
    return root[0]


def _walked(items: list | tuple) -> list[int]:
    """The indices of the items the full walk must visit, in order: all but plain leaves and finite floats. Found
    with C loops (types mapped, floats checked by numpy): a list of a million answers or numbers is copied, not
    walked an item at a time (3 s for a million "NaN" strings echoed twice)."""
    kinds = list(map(type, items))
    present = set(kinds)
    if present <= _PLAIN:
        return []
    at = [] if present <= _LEAVES else list(compress(count(), map(not_, map(_LEAVES.__contains__, kinds))))
    if float in present:
        floats = list(compress(count(), map(is_, kinds, repeat(float))))
        if len(floats) <= FEW_FLOATS:
            bad = [j for j, i in enumerate(floats) if not isfinite(items[i])]
        else:
            values = np.fromiter(map(items.__getitem__, floats), dtype=np.float64, count=len(floats))
            bad = np.flatnonzero(~np.isfinite(values)).tolist()
        if bad:
            at = sorted(at + list(map(floats.__getitem__, bad)))
    return at
