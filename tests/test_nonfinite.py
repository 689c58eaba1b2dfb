"""Non-finite values, written and read at C speed: the same JSON bytes and warnings as the item-by-item walks.

An audit sent /v1/check a million "NaN" answers and a formula that evaluates to NaN: 3-3.4 s and +365-395 MiB, most
of it the encoder's walk (a path and a check per element) and the answer's parse (a Python step per string). The
walks below are those item-by-item versions, kept as the reference the fast ones must match byte for byte."""

from __future__ import annotations

import importlib
import math
from itertools import chain
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.servers import proc_mib
from conftest import GunicornServer, kind_walked_from_the_end
from schemas import GradientRequestSchema
from service.engine import check as check_module
from service.engine import encode
from service.engine.compute import estimate_cost
from service.engine.encode import (
    MAX_DEPTH,
    TOO_DEEP,
    JsonText,
    encode_tensor,
    encode_tree,
    encoded_tensors,
    json_pieces,
)
from service.engine.values import NON_FINITE, TensorData, last_non_number, parse_tensor, tensor_shape
from service.jsonio import KEY_END, OPTIONS, Encoded, dumps_bytes, dumps_pieces, parse_bytes, text_fragment

compute_module = importlib.import_module("service.engine.compute")  # the package exports its compute()

# --- the item-by-item walks, as they were -----------------------------------------------------------------------


def old_encode_tensor(t: torch.Tensor, warnings: list[str], where: str):
    arr = t.detach().cpu()
    if not arr.is_floating_point():
        arr = arr.double()
    arr = arr.contiguous().numpy()
    finite = np.isfinite(arr)
    if finite.all():
        return arr[()] if arr.ndim == 0 else arr
    bad = int(arr.size - finite.sum())
    warnings.append(f"{where}: {bad} of {arr.size} value(s) not finite")
    out = np.empty(arr.shape, dtype=object)
    out.flat[:] = list(arr.flat)
    out[np.isnan(arr)] = "NaN"
    out[arr == np.inf] = "Infinity"
    out[arr == -np.inf] = "-Infinity"
    return out[()] if arr.ndim == 0 else out.tolist()


def old_encode_tree(obj, warnings: list[str], where: str = ""):
    root: list = [None]
    stack: list = [(obj, root, 0, where, 0)]
    while stack:
        item, parent, key, path, depth = stack.pop()
        if type(item) is encode.EncodedPart:  # a part encoded already (a problem's points, its chain-rule factors)
            parent[key] = item.value
        elif isinstance(item, torch.Tensor):
            parent[key] = old_encode_tensor(item, warnings, path)
        elif isinstance(item, float):
            parent[key] = old_encode_tensor(torch.tensor(item, dtype=torch.float64), warnings, path)
        elif isinstance(item, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                parent[key] = TOO_DEEP
                warnings.append(f"{path}: nested deeper than {MAX_DEPTH} levels, not shown")
                continue
            if isinstance(item, dict):
                out: dict | list = dict.fromkeys(item)
                children = [(v, out, k, f"{path}.{k}" if path else str(k), depth + 1) for k, v in item.items()]
            else:
                out = [None] * len(item)
                children = [(v, out, i, f"{path}[{i}]", depth + 1) for i, v in enumerate(item)]
            parent[key] = out
            stack.extend(reversed(children))
        else:
            parent[key] = item
    return root[0]


def _not_a_number(item) -> str:
    kind = "boolean" if isinstance(item, bool) else type(item).__name__
    return f'Tensor elements must be numbers (or "NaN", "Infinity", "-Infinity"), got {kind}.'


def old_as_numbers(level: list) -> list:
    out = []
    for item in level:
        if type(item) in (int, float):
            out.append(item)
        elif isinstance(item, str) and item in NON_FINITE:
            out.append(NON_FINITE[item])
        else:
            raise ValueError(_not_a_number(item))
    return out


# --- comparisons ------------------------------------------------------------------------------------------------


def dumped(tree) -> bytes:
    return orjson.dumps(tree, default=text_fragment, option=OPTIONS)


def assert_encodes_alike(obj) -> None:
    """encode_tree (fast walk, then full walk) and the full walk alone: the old walk's bytes and warnings."""
    want_warnings: list[str] = []
    want = dumped(old_encode_tree(obj, want_warnings, "body"))
    for walk in (encode_tree, encode._encode_tree):
        warnings: list[str] = []
        assert dumped(walk(obj, warnings, "body")) == want
        assert warnings == want_warnings
    warnings = []
    known = encoded_tensors(obj)
    assert dumped(encode_tree(obj, warnings, "body", known=known)) == want
    assert warnings == want_warnings


def numbers_key(values: list) -> list:
    """Parsed values compared exactly: type and repr (NaN is not equal to itself; -0.0 equals 0.0)."""
    return [(type(v), repr(v)) for v in values]


def assert_parses_alike(value) -> None:
    """parse_tensor and tensor_shape: the old values and shape, or the old message."""
    for new, old in ((tensor_shape, old_tensor_shape), (parse_tensor, old_parse_tensor)):
        try:
            want = old(value)
        except ValueError as err:
            with pytest.raises(ValueError) as got:
                new(value)
            assert str(got.value) == str(err)
            continue
        got = new(value)
        if isinstance(want, TensorData):
            assert got.shape == want.shape
            assert numbers_key(got.values) == numbers_key(want.values)
        else:
            assert got == want


def _ragged(depth: int, lengths: set[int]) -> ValueError:
    return ValueError(f"Tensor is not rectangular: lists at depth {depth} have lengths {sorted(lengths)[:5]}.")


def old_parse_tensor(value) -> TensorData:
    shape: list[int] = []
    level = [value]
    while True:
        types = set(map(type, level))
        if not types:
            return TensorData([], tuple(shape))
        if types <= {int, float}:
            return TensorData(level, tuple(shape))
        if types == {list}:
            lengths = set(map(len, level))
            if len(lengths) != 1:
                raise _ragged(len(shape) + 1, lengths)
            shape.append(lengths.pop())
            level = list(chain.from_iterable(level))
            continue
        if list in types:
            raise ValueError(f"Tensor mixes numbers and lists at depth {len(shape) + 1}.")
        return TensorData(old_as_numbers(level), tuple(shape))


def old_tensor_shape(value) -> tuple[int, ...]:
    shape: list[int] = []
    lists: list | None = None
    types = {type(value)}
    while True:
        if types <= {int, float}:
            return tuple(shape)
        if types == {list}:
            lists = [value] if lists is None else list(chain.from_iterable(lists))
            lengths = set(map(len, lists))
            if len(lengths) != 1:
                raise _ragged(len(shape) + 1, lengths)
            shape.append(lengths.pop())
            types = set(map(type, chain.from_iterable(lists)))
            continue
        if list in types:
            raise ValueError(f"Tensor mixes numbers and lists at depth {len(shape) + 1}.")
        for item in [value] if lists is None else chain.from_iterable(lists):
            if type(item) not in (int, float) and not (isinstance(item, str) and item in NON_FINITE):
                raise ValueError(_not_a_number(item))
        return tuple(shape)


# --- the cases ----------------------------------------------------------------------------------------------------

SPECIALS = [
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    5e-324,
    2.2250738585072014e-308,
    1e-310,
    1.7976931348623157e308,
    0.1,
    -2.5,
    1 / 3,
]


def tensors() -> list[torch.Tensor]:
    rng = np.random.default_rng(7)
    out = []
    for dtype in (torch.float64, torch.float32, torch.float16):
        out.append(torch.tensor(SPECIALS, dtype=dtype))
        out += [torch.tensor(v, dtype=dtype) for v in SPECIALS]  # 0-d: scalars
        for shape in ((0,), (2, 0), (3, 4), (2, 3, 5), (1, 1, 1, 7), (200,)):
            values = rng.normal(size=shape) * 10.0 ** rng.integers(-320, 300, size=shape)
            mask = rng.random(shape)
            values[mask < 0.2] = np.nan
            values[(mask >= 0.2) & (mask < 0.3)] = np.inf
            values[(mask >= 0.3) & (mask < 0.35)] = -np.inf
            out.append(torch.tensor(values, dtype=dtype))
        out.append(torch.full((50,), math.nan, dtype=dtype))
        out.append(torch.full((4, 5), -math.inf, dtype=dtype))
    out.append(torch.arange(6).reshape(2, 3))  # an integer tensor: made float64, finite
    out.append(torch.tensor([True, False]))
    return out


@pytest.mark.parametrize("tensor", tensors(), ids=lambda t: f"{t.dtype}-{list(t.shape)}")
def test_a_tensor_encodes_as_before(tensor):
    """±0, subnormals, NaN and ±inf mixed, float64/32/16, scalars and empty tensors: the same bytes and warning."""
    want_warnings: list[str] = []
    want = dumped(old_encode_tensor(tensor, want_warnings, "t"))
    warnings: list[str] = []
    assert dumped(encode_tensor(tensor, warnings, "t")) == want
    assert warnings == want_warnings
    assert_encodes_alike({"value": tensor, "again": [tensor, {"deeper": tensor}]})


def test_every_float64_bit_pattern_prints_as_the_numpy_scalar_did():
    """Python floats (the fast encoder's) and numpy float64 scalars (the old one's) print alike, for 20,000 random
    bit patterns (NaN payloads, subnormals and all) with non-finite values among them."""
    bits = np.random.default_rng(3).integers(0, 2**64, size=20_000, dtype=np.uint64)
    values = torch.from_numpy(bits.view(np.float64).copy())
    assert not bool(torch.isfinite(values).all())
    want_warnings: list[str] = []
    want = dumped(old_encode_tensor(values, want_warnings, "bits"))
    warnings: list[str] = []
    assert dumped(encode_tensor(values, warnings, "bits")) == want
    assert warnings == want_warnings


def big_mixed_list() -> list:
    """More floats than FEW_FLOATS (numpy checks them), NaN and ±inf scattered among numbers, strings and None."""
    items: list = [0.5 * i for i in range(300)]
    items[7], items[150], items[299] = math.nan, math.inf, -math.inf
    items[3], items[40], items[41] = "NaN", None, True
    items[60] = 2**63 - 1  # an int that no float64 holds exactly: a leaf as it is
    return items


TREES = [
    math.nan,
    -math.inf,
    -0.0,
    5e-324,
    [],
    {},
    (),
    [math.nan, 1, "x", None, False, -0.0, math.inf],
    (math.inf, 2.0),
    big_mixed_list(),
    [big_mixed_list(), {"a": big_mixed_list()}],
    ["NaN"] * 500 + [0.25] * 500,
    [np.float64("nan"), np.float64(1.5), np.float32(2.5)],
    {"points": [{"x": torch.tensor([1.0, math.nan])}, {"x": torch.tensor(2.0)}], "loss": math.inf},
    {1: math.nan, "k": [torch.tensor([[math.inf, 0.0]], dtype=torch.float32), [math.nan, [math.nan, 1.0]]]},
    [[[1.0, math.nan]]],
]


def nested(depth: int, leaf) -> list:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


TREES += [nested(MAX_DEPTH + 5, math.nan), {"deep": nested(MAX_DEPTH - 1, [math.nan] * 40), "next": math.inf}]


@pytest.mark.parametrize("tree", TREES, ids=range(len(TREES)))
def test_a_tree_encodes_as_before(tree):
    """Lists copied at once and only their non-leaves walked: the same bytes, and the same warnings in the same order
    (nested lists, tensors inside lists, numpy scalars, deeper than MAX_DEPTH, dict keys that are not strings)."""
    assert_encodes_alike(tree)


leaves = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),  # orjson writes 64-bit integers
    st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "x", None, True, False]),
)
trees = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=40), st.dictionaries(st.text(max_size=3), inner, max_size=4)),
    max_leaves=120,
)


@settings(max_examples=400, deadline=None)
@given(trees)
def test_random_trees_encode_as_before(tree):
    assert_encodes_alike({"tree": tree})


def rectangular(depth_shape: tuple[int, ...], leaves: list) -> list:
    it = iter(leaves)

    def build(shape):
        return [next(it) for _ in range(shape[0])] if len(shape) == 1 else [build(shape[1:]) for _ in range(shape[0])]

    return build(depth_shape)


answer_leaves = st.one_of(
    st.floats(allow_nan=False),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(["NaN", "Infinity", "-Infinity"]),
    st.sampled_from(["nan", "inf", "", None, True, False]),
    st.just({"a": 1}),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4), min_size=0, max_size=3), st.data())
def test_answers_parse_as_before(shape, data):
    """parse_tensor and tensor_shape read "NaN"/"Infinity" strings in bulk: the same values (NaN, ±inf, -0.0, ints
    kept as ints), the same shape, and the same message naming the first non-number."""
    size = math.prod(shape)
    pool = data.draw(st.sampled_from(["numbers", "strings", "any"]))
    kinds = {"numbers": st.floats(allow_nan=False), "strings": st.sampled_from(list(NON_FINITE)), "any": answer_leaves}
    items = data.draw(st.lists(st.one_of(kinds[pool], st.sampled_from(list(NON_FINITE))), min_size=size, max_size=size))
    value = rectangular(tuple(shape), items) if shape else items[0]
    assert_parses_alike(value)


@pytest.mark.parametrize(
    "value",
    [
        ["NaN", "Infinity", "-Infinity", 0, -0.0, 5e-324, 2**70],
        [["NaN", 1], ["x", True]],  # the first non-number is a string
        [["NaN", 1], [None, "x"]],
        ["NaN"] * 1000 + [True],
        ["NaN"] * 1000 + [{"a": 1}],
        [[1, 2], [3]],
        [[1, 2], 3],
        "NaN",
        "nan",
        [],
        [[], []],
    ],
)
def test_these_answers_parse_as_before(value):
    assert_parses_alike(value)
    assert last_non_number(value) is kind_walked_from_the_end(value)


# --- a real server ------------------------------------------------------------------------------------------------


def audit_like(n: int) -> dict:
    """The audit's request, smaller: "NaN" and "±Infinity" answers, and formulas that evaluate to NaN and ±inf."""
    x = [0.5, 0.25, -0.0, 5e-324] * (n // 4)
    return {
        "model": {"kind": "expression", "formula": "sum(x*x) + sum(y*y)"},
        "inputs": {"x": x, "y": x},
        "submission": {
            "gradients": {"x": ["NaN", "Infinity", "-Infinity", 1.0] * (n // 4), "y": [2 * v for v in x]},
            "gradient_formulas": {"x": "log(-x)", "y": "1/(y-0.25)"},
        },
    }


def test_the_server_answers_non_finite_checks_as_the_item_by_item_walk_would(live_server, app, monkeypatch):
    """The live service's response to non-finite answers and formula values: the bytes the old encoder gives
    in-process (same request, encode_tree swapped for the item-by-item walk), NaN and ±Infinity as strings."""
    body = audit_like(4000)
    response = requests.post(f"{live_server.url}/v1/check", json=body, timeout=60)
    assert response.status_code == 200, response.text
    result = response.json()
    x_check = next(c for c in result["checks"] if c["name"] == "gradients.x")
    assert x_check["actual"][:4] == ["NaN", "Infinity", "-Infinity", 1.0]
    formula = next(c for c in result["checks"] if c["name"] == "gradient_formulas.y")
    assert "Infinity" in formula["actual"] and not formula["passed"]

    def old_tree(obj, warnings, where="", known=None):
        return old_encode_tree(obj, warnings, where)

    monkeypatch.setattr(check_module, "encode_tree", old_tree)
    old = app.test_client().post("/v1/check", json=body)
    assert old.status_code == 200
    assert response.content == old.data


# --- large non-finite results as JSON text (encode_tensor's as_text) ----------------------------------------------


def random_values(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Values of every magnitude (subnormals to near-max), with NaN, ±inf and -0.0 sprinkled in."""
    rng = np.random.default_rng(seed)
    values = np.asarray(rng.normal(size=shape) * 10.0 ** rng.integers(-320, 308, size=shape))
    mask = np.asarray(rng.random(shape))
    values[mask < 0.05] = np.nan
    values[(mask >= 0.05) & (mask < 0.08)] = np.inf
    values[(mask >= 0.08) & (mask < 0.1)] = -np.inf
    values[(mask >= 0.1) & (mask < 0.12)] = -0.0
    values[(mask >= 0.12) & (mask < 0.14)] = 5e-324
    return values


def assert_text_as_before(tensor: torch.Tensor, text_expected: bool) -> None:
    """encode_tensor(as_text=True) inside a body: the old list's bytes and warning, as text when expected."""
    want_warnings: list[str] = []
    want = dumped({"v": old_encode_tensor(tensor, want_warnings, "t")})
    warnings: list[str] = []
    got = encode_tensor(tensor, warnings, "t", as_text=True)
    assert isinstance(got, JsonText) is text_expected
    assert dumped({"v": got}) == want
    assert warnings == want_warnings


C, T = encode.CHUNK, encode.TEXT_FROM
TEXT_SHAPES = [(T - 1,), (T,), (C,), (C + 1,), (3 * C - 1,), (2, C + 5), (C + 1, 1), (130, 130), (3, 7, T), (5, C, 1)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", TEXT_SHAPES, ids=str)
def test_a_large_non_finite_tensor_is_written_as_the_same_text(shape, dtype):
    """Around TEXT_FROM and CHUNK, rows shorter and longer than a chunk, 1-3 dimensions: the old bytes."""
    tensor = torch.tensor(random_values(shape, seed=sum(shape)), dtype=dtype)
    assert_text_as_before(tensor, text_expected=tensor.numel() >= T)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_chunks_that_are_all_finite_are_written_from_numpy_as_the_list_would_be(dtype):
    """One NaN at the end: every chunk but the last goes through orjson's numpy writer, float32 shortest repr."""
    values = random_values((2 * C + 3,), seed=11)
    values[np.isfinite(values) == 0] = 0.1
    values[-1] = np.nan
    assert_text_as_before(torch.tensor(values, dtype=dtype), text_expected=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (2, 0), (5,), (3, 4)], ids=str)
def test_small_empty_and_0d_tensors_keep_the_list(shape, dtype):
    tensor = torch.tensor(random_values(shape, seed=5), dtype=dtype)
    assert_text_as_before(tensor, text_expected=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=4), st.integers(0, 2**32 - 1), st.data())
def test_random_shapes_nest_as_the_list_does_with_tiny_chunks(shape, seed, data):
    """CHUNK and TEXT_FROM made tiny, so small random shapes split rows, blocks of rows and nested rows."""
    chunk = data.draw(st.integers(min_value=1, max_value=9))
    dtype = data.draw(st.sampled_from([torch.float64, torch.float32]))
    values = random_values(tuple(shape), seed)
    values.flat[data.draw(st.integers(0, values.size - 1))] = np.nan  # at least one: the text path
    original = encode.CHUNK, encode.TEXT_FROM
    encode.CHUNK, encode.TEXT_FROM = chunk, 1
    try:
        assert_text_as_before(torch.tensor(values, dtype=dtype), text_expected=True)
    finally:
        encode.CHUNK, encode.TEXT_FROM = original


def test_a_tree_with_large_non_finite_tensors_encodes_as_before():
    """encode_tree(as_text=True): tensors in dicts and lists, the fast walk's fallback, the old bytes and warnings."""
    big = torch.tensor(random_values((2, C + 3), seed=3))
    tree = {"loss": math.nan, "gradients": {"x": big, "y": big.float()}, "points": [{"v": big[0]}, 1.5, "NaN"]}
    want_warnings: list[str] = []
    want = dumped(old_encode_tree(tree, want_warnings, "body"))
    for walk in (encode_tree, encode._encode_tree):
        warnings: list[str] = []
        assert dumped(walk(tree, warnings, "body", as_text=True)) == want
        assert warnings == want_warnings


def log_request(n: int, dtype: str, **extra) -> dict:
    """sum(log(x)) over n values, half of them negative (NaN) and one zero (-inf), intermediates included."""
    x = [0.5, -1.5, 2.25, -3.0] * (n // 4)
    x[1] = 0.0
    return {
        "model": {"kind": "expression", "formula": "sum(log(x)) + sum(log(y))"},
        "inputs": {"x": x, "y": [v * 3.7 for v in x]},
        "dtype": dtype,
        "include": ["intermediates"],
        **extra,
    }


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_server_writes_large_non_finite_gradients_as_the_old_walk_would(live_server, app, monkeypatch, dtype):
    """/v1/gradients with non-finite values, intermediates and gradients of 3·CHUNK numbers each: the bytes the
    old encoder (the list, item by item) gives in-process for the same request."""
    body = log_request(3 * C, dtype)
    response = requests.post(f"{live_server.url}/v1/gradients", json=body, timeout=60)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["intermediates"]["log(x)"]["value"][1:4:2] == ["-Infinity", "NaN"]
    assert result["gradients"]["x"][1] == "Infinity"
    assert f"intermediates.log(x).value: {3 * C // 2} of {3 * C} value(s) not finite" in result["warnings"]

    def old_tree(obj, warnings, where="", known=None, as_text=False):
        return old_encode_tree(obj, warnings, where)

    monkeypatch.setattr(compute_module, "encode_tree", old_tree)
    old = app.test_client().post("/v1/gradients", json=body)
    assert old.status_code == 200
    assert response.content == old.data
    assert int(response.headers["Content-Length"]) == len(response.content)  # the pieces' sum, as received


def test_a_body_with_texts_is_sent_as_pieces_that_join_into_its_bytes(app):
    """dumps_pieces: each text the same object, between the rest's pieces; joined, dumps_bytes()'s bytes. The
    response keeps them as a list with their Content-Length, and the access log's count does not join them."""
    texts = [JsonText(json_pieces(random_values((C + 2 * i + 1,), seed=i))) for i in range(3)]
    body = Encoded(
        results=[{"a\x00b": texts[0], "n": np.arange(5.0)}, {"error": None}, {"g": {"x": texts[1], "y": texts[2]}}],
        warnings=["\x00 escaped, never the placeholder", "NaN"],
    )
    pieces = dumps_pieces(body)
    assert b"".join(pieces) == dumps_bytes(body) == dumped(body)
    assert [piece for piece in pieces if any(piece is p for t in texts for p in t.pieces)] == [
        p for t in texts for p in t.pieces
    ]
    assert len(pieces) == 4 + 2 * 3 and b"\x00" not in pieces[0] + pieces[3] + pieces[6] + pieces[9]
    assert dumps_pieces(Encoded(v=[1.5, "NaN"])) == [b'{"v":[1.5,"NaN"]}']
    with app.test_request_context():
        response = app.json.response(body)
        assert response.response == pieces
        assert response.content_length == response.calculate_content_length() == len(dumps_bytes(body))
        assert response.response == pieces  # counted, not joined


def largest_log_request() -> dict:
    """The largest admitted request of its kind: four 1 M-number inputs (MAX_TOTAL_ELEMENTS), float64,
    intermediates in inference mode (grad mode with intermediates is over the budget); half the logs are NaN."""
    x = [0.5, -1.5, 2.25, -3.0] * (2**20 // 4)
    names = "xyzw"
    formula = " + ".join(f"sum(log({n}))" for n in names)
    return {
        "model": {"kind": "expression", "formula": formula},
        "inputs": dict.fromkeys(names, x),
        "dtype": "float64",
        "mode": "inference",
        "include": ["intermediates"],
    }


@pytest.mark.slow
def test_a_large_non_finite_result_takes_no_more_memory_than_its_price(app, tmp_path):
    """A fresh worker's peak RSS (VmHWM, reset before the request) over its idle RSS stays under the estimate
    plus the body's price, with 4 M non-finite-laden numbers in the response (as a list of Python floats and
    strings it took +365 MiB of 352 priced; as JSON text +317)."""
    body = largest_log_request()
    raw = orjson.dumps(body)
    with app.app_context():
        price = estimate_cost(GradientRequestSchema().load(body), app.config["LIMITS"])
    price += parse_bytes(raw, len(KEY_END.findall(raw)))
    with GunicornServer(workers=1, log_path=tmp_path / "server.log") as server:
        server.wait_workers(1)
        pid = server.worker_pids()[0]
        idle = proc_mib(pid, "status", "VmRSS:")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        response = requests.post(
            f"{server.url}/v1/gradients", data=raw, headers={"Content-Type": "application/json"}, timeout=120
        )
        peak = proc_mib(pid, "status", "VmHWM:")
    assert response.status_code == 200, response.text[:300]
    assert "intermediates.log(w).value: 524288 of 1048576 value(s) not finite" in response.json()["warnings"]
    assert peak - idle <= price / 2**20, f"+{peak - idle:.0f} MiB, priced {price / 2**20:.0f} MiB"


def test_batch_gradients_jobs_write_large_non_finite_results_as_the_old_walk_would(app, monkeypatch):
    """/v1/batch: two neuron jobs run together (engine/batch.py: intermediates of TEXT_FROM samples, the most it
    stacks) and a formula job (compute(), 2·TEXT_FROM numbers), half non-finite: the old encoder's bytes."""
    x = ["Infinity", -2.0, 0.5, "-Infinity"] * (T // 4)
    inputs = {"x": x, "y": [1, 0] * (T // 2), "w": 0.5, "b": 0}
    neuron = {"model": {"kind": "neuron"}, "inputs": inputs, "include": ["intermediates"]}
    jobs = [neuron, neuron, log_request(2 * T, "float32")]
    client = app.test_client()
    new = client.post("/v1/batch", json={"jobs": jobs})
    assert new.status_code == 200, new.data[:300]
    results = new.get_json()["results"]
    assert all("value(s) not finite" in " ".join(r["warnings"]) for r in results), results[0]["warnings"]

    def old_tree(obj, warnings, where="", known=None, as_text=False):
        return old_encode_tree(obj, warnings, where)

    monkeypatch.setattr(compute_module, "encode_tree", old_tree)
    monkeypatch.setattr(importlib.import_module("service.engine.batch"), "encode_tree", old_tree)
    old = client.post("/v1/batch", json={"jobs": jobs})
    assert old.status_code == 200
    assert new.data == old.data


@pytest.mark.parametrize("writer", ["dumps_bytes", "dumps_pieces"])
def test_a_deadline_while_a_body_is_written_stays_a_deadline(monkeypatch, writer):
    """A final audit: the request's SIGALRM, pending while orjson writes a body with a JsonText, is raised in orjson's
    `default` callback (the first Python code that runs), and orjson wrapped it in a JSONEncodeError: a 500 with a
    traceback instead of the 503. The writers raise the DeadlineInterrupt itself."""
    from service import jsonio
    from service.engine.deadline import DeadlineInterrupt

    def interrupted(value):
        raise DeadlineInterrupt(1.0)

    monkeypatch.setattr(jsonio, "text_fragment", interrupted)
    with pytest.raises(DeadlineInterrupt):
        getattr(jsonio, writer)(jsonio.Encoded(value=object()))
    monkeypatch.undo()
    with pytest.raises(TypeError):  # anything else orjson cannot write stays its error
        getattr(jsonio, writer)(jsonio.Encoded(value=object()))
