"""Errors listed at most (schemas/fields.py ErrorBoundedList, ErrorBoundedDict): a body whose objects each stay under
their caps but are many (5,000 problem-file checks of 40 errors each, 50 problems of 100 points of 128 bad inputs)
is a prompt 400 of a bounded size, not seconds of a worker spent listing every error (docs/limits.md)."""

from __future__ import annotations

import json
import time

import orjson
import pytest
import requests
from marshmallow import Schema, ValidationError, fields, validate

from schemas.fields import MAX_LISTED_ERRORS, ErrorBoundedDict, ErrorBoundedList
from service.engine import cost

SQUARE = {"model": {"kind": "expression", "formula": "x**2"}, "inputs": {"x": 0.25}}
# each check under its caps: 20 unknown keys (the most that are listed) and 20 tags (the cap), every one wrong
BAD_CHECK = {**{f"zz{i}": 1 for i in range(20)}, "tags": [""] * 20}
BAD_POINT = {f"{i}a": True for i in range(128)}  # max_inputs names, each a bad name and a bad tensor
STOPPED = "Not validated, nor the"


def many_bad_checks() -> dict:
    problems = [
        {**SQUARE, "key": f"p{j}", "checks": {f"intermediates.k{i}": BAD_CHECK for i in range(100)}} for j in range(50)
    ]
    return {"problem": {"problems": problems}, "answers": {}}


def many_bad_points() -> dict:
    problems = [
        {"key": f"p{j}", "model": SQUARE["model"], "points": [BAD_POINT] * 100, "checks": {"gradients.x": {}}}
        for j in range(50)
    ]
    return {"problem": {"problems": problems}, "answers": {}}


def bad_check_request() -> dict:
    checks = {f"intermediates.k{i}": {**BAD_CHECK, "tags": None, "points": "x", "visibility": "z"} for i in range(400)}
    return {"model": SQUARE["model"], "points": [BAD_POINT] * 100, "submission": {"loss": 1}, "checks": checks}


def listed(errors) -> int:
    return cost.error_messages(errors)


@pytest.mark.live
@pytest.mark.parametrize(
    ("path", "body", "type_"),
    [
        ("/v1/grade", many_bad_checks, "/problems/invalid-problem"),  # 2.3 s and 8.9 MB before (audit: 6 s, 15 MB)
        ("/v1/grade", many_bad_points, "/problems/invalid-problem"),  # ran into the 10 s deadline, +300 MiB
        ("/v1/check", bad_check_request, "/problems/invalid-request"),  # 0.5 s, 2.5 MB
    ],
    ids=["grade-checks", "grade-points", "check"],
)
def test_many_objects_of_errors_are_a_bounded_400_and_the_worker_stays(live_server, path, body, type_):
    raw = orjson.dumps(body())
    workers = set(live_server.worker_pids()) if live_server.proc is not None else set()
    limit = requests.get(live_server.url + "/v1/models", timeout=10).json()["limits"]["max_wall_seconds"]
    start = time.monotonic()
    response = requests.post(
        live_server.url + path, data=raw, headers={"Content-Type": "application/json"}, timeout=limit + 60
    )
    assert time.monotonic() - start < limit + 30  # ended (a deadline would be a 503 anyway), generous slack
    assert response.status_code == 400, response.text[:300]
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == type_
    assert len(response.content) < 300_000, len(response.content)  # was 2.5-8.9 MB
    assert MAX_LISTED_ERRORS <= listed(problem["errors"]) <= 2 * MAX_LISTED_ERRORS + 300
    assert STOPPED in json.dumps(problem["errors"])
    if workers:
        assert set(live_server.worker_pids()) == workers  # no worker died or was replaced
    again = requests.post(
        live_server.url + "/v1/grade",
        json={"problem": {**SQUARE, "checks": {"loss": {}}}, "answers": {"loss": 0.0625}},
        timeout=30,
    )
    assert again.status_code == 200 and again.json()["score"] == 1.0, again.text[:300]


def test_the_stop_is_said_where_it_happened(client):
    """Problem 0's checks stop after 25 (40 errors each); the problems after it are not validated, and both say so."""
    errors = client.post("/v1/grade", json=many_bad_checks()).json["errors"]["problem"]["problems"]
    assert list(errors) == ["0", "1"]
    assert errors["1"] == [
        "Not validated, nor the 48 items after it: the errors of the items before it hold 1001 messages (at most "
        "1000 are listed at once); fix those first."
    ]
    checks = errors["0"]["checks"]
    assert len(checks) == 26 and checks["intermediates.k25"] == {
        "value": [
            "Not validated, nor the 74 entries after it: the errors of the entries before it hold 1000 messages (at "
            "most 1000 are listed at once); fix those first."
        ]
    }
    assert checks["intermediates.k0"]["value"]["zz0"] == ["Unknown field."]


class Item(Schema):
    n = fields.Integer(strict=True, validate=validate.Range(min=0))
    tags = fields.List(fields.String(), validate=validate.Length(max=3))


class Bounded(Schema):
    items = ErrorBoundedList(fields.Nested(Item))
    named = ErrorBoundedDict(keys=fields.String(validate=validate.Length(max=5)), values=fields.Nested(Item))


class Unbounded(Schema):
    items = fields.List(fields.Nested(Item))
    named = fields.Dict(keys=fields.String(validate=validate.Length(max=5)), values=fields.Nested(Item))


def outcome(schema: Schema, body: dict):
    try:
        return "ok", schema.load(body)
    except ValidationError as err:
        return "error", err.messages, err.valid_data


@pytest.mark.parametrize(
    "body",
    [
        {"items": [{"n": 1}, {"n": 2, "tags": ["a"]}], "named": {"a": {"n": 0}, "b": {}}},
        {"items": [{"n": -1}, {"n": "x"}, {}, {"zz": 1}], "named": {"longer": {"n": -1}, "b": {"n": 1}, "toolong": {}}},
        {"items": "x", "named": []},
        {"items": [None, 3, {"n": 1}], "named": {"a": None, "abcdef": 3}},
        {"items": [], "named": {}},
    ],
)
def test_under_the_bound_the_fields_load_as_marshmallows_do(body):
    assert outcome(Bounded(), body) == outcome(Unbounded(), body)


def test_over_the_bound_the_rest_is_not_loaded():
    bad = {"n": -1, "tags": [1, 2, 3]}  # 4 messages
    items = [bad] * (MAX_LISTED_ERRORS // 4 + 10)
    errors = outcome(Bounded(), {"items": items})[1]["items"]
    stop = MAX_LISTED_ERRORS // 4
    assert sorted(errors) == list(range(stop + 1)) and errors[stop][0].startswith("Not validated, nor the 9 items")
    named = {f"k{i}": bad for i in range(MAX_LISTED_ERRORS)} | {"long key": {}}
    errors = outcome(Bounded(), {"named": named})[1]["named"]
    assert errors["long key"] == {"key": ["Longer than maximum length 5."]}  # keys are all read first
    assert listed(errors) == MAX_LISTED_ERRORS + 2  # the key's error, the values' up to the bound, the stop
    assert "Not validated, nor the" in errors[f"k{MAX_LISTED_ERRORS // 4}"]["value"][0]
