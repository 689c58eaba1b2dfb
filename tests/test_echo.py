"""What a result echoes of a student's answer (engine/echo.py): bounded in every format, whatever was sent.

An answer nested 300 deep answered 500 (the encoder recursed while echoing it; orjson refuses 254 levels), a 5 MB
wrong-shape answer made a 15 MB Gradescope document, and a formula over the limit came back whole, twice."""

from __future__ import annotations

import importlib
import json
import tracemalloc

import pytest
import requests
import torch
from platform_specs import validate_gradescope, validate_prairielearn

from service.engine.echo import ECHO_CHARS, clip, summary
from service.engine.encode import MAX_DEPTH, TOO_DEEP, encode_tree
from service.platforms import _short

FORMATS = ("json", "gradescope", "prairielearn", "autolab", "coderunner")
SQUARE = {"model": {"kind": "expression", "formula": "x**2"}, "inputs": {"x": 1.0}}
PROBLEM = {"key": "sq", **SQUARE, "checks": {"gradients.x": {"points": 1, "title": "dx"}}}


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def post(client, path: str, text: str):
    """A raw JSON body: the test client's own encoder (orjson) refuses what a student may send."""
    return client.post(path, data=text, content_type="application/json")


def check_text(answer: str) -> str:
    return json.dumps({**SQUARE, "submission": {"gradients": {"x": "ANSWER"}}}).replace('"ANSWER"', answer)


def grade_text(answer: str) -> str:
    return json.dumps({"problem": PROBLEM, "answers": {"gradients": {"x": "ANSWER"}}}).replace('"ANSWER"', answer)


def the_check(fmt: str, body: dict) -> dict:
    """The one check's student-facing rendering, whatever the format."""
    if fmt == "json":
        return body["problems"][0]["checks"][0] if "problems" in body else body["checks"][0]
    if fmt == "gradescope":
        validate_gradescope(body)
        return body["tests"][0]
    if fmt == "prairielearn":
        validate_prairielearn(body)
        return body["tests"][0]
    if fmt == "autolab":
        return next(iter(body["feedback"][body["feedback"]["stages"][0]].values()))
    return dict(zip(body["testresults"][0], body["testresults"][1], strict=True))


@pytest.mark.parametrize("depth", [9, 300, 1000])
@pytest.mark.parametrize("fmt", ["json", "gradescope", "prairielearn"])
def test_a_deep_answer_is_a_wrong_shape_check_not_a_500(client, fmt, depth):
    r = post(client, f"/v1/check?format={fmt}", check_text(nested(depth)))
    assert r.status_code == 200, r.data[:300]
    text = json.dumps(the_check(fmt, r.json))
    assert "wrong shape" in text and f"lists nested {depth} deep" in text and len(r.data) < 2000
    if fmt == "json":
        c = r.json["checks"][0]
        assert c["actual"] is None and c["passed"] is False
        assert c["actual_summary"] == f"1 value(s) in lists nested {depth} deep: [1]"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_deep_answer_in_every_grade_format(client, fmt):
    r = post(client, f"/v1/grade?format={fmt}", grade_text(nested(300)))
    assert r.status_code == 200, r.data[:300]
    assert "wrong shape" in json.dumps(the_check(fmt, r.json)) and len(r.data) < 3000


def test_a_deep_answer_in_a_batch_check_job(client):
    job = check_text(nested(300))
    r = post(client, "/v1/batch", f'{{"jobs": [{{"check": {job}}}, {{"check": {check_text("2.0")}}}]}}')
    assert r.status_code == 200, r.data[:300]
    first, second = r.json["results"]
    assert "wrong shape" in first["checks"][0]["message"] and first["checks"][0]["actual"] is None
    assert second["checks"][0]["passed"] is True


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_huge_wrong_shape_answer_is_summarized(client, fmt):
    answer = json.dumps(list(range(200_000)))  # 1.3 MB
    r = post(client, f"/v1/grade?format={fmt}", grade_text(answer))
    assert r.status_code == 200 and len(r.data) < 3000, len(r.data)
    text = json.dumps(r.json, ensure_ascii=False).replace("\\\\", "")  # Gradescope's markdown escapes
    assert "wrong shape" in text and "got [200000]" in text
    if fmt in ("json", "gradescope", "coderunner"):  # the formats that echo the answer
        assert "200000 value(s) in shape [200000]: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, …]" in text


HUGE = 2_000_000  # numbers: a copy of the answer's list is 16 MB, a float64 tensor of it 16 MB


@pytest.mark.parametrize(("path", "fmt"), [("/v1/check", "json"), ("/v1/check", "gradescope"), ("/v1/grade", "json")])
def test_a_huge_wrong_shape_answer_is_neither_copied_nor_made_a_tensor(client, monkeypatch, path, fmt):
    """Audit F7: a 4.45 M-number answer to a scalar problem was validated through a copy of its list, flattened
    again to read its shape and to echo it, and made a float64 tensor for the diagnosis, before anyone saw that a
    scalar was expected (+88 MiB and seconds in a worker). Its check reads exactly as a smaller one's."""
    view = importlib.import_module("service.views.check" if path == "/v1/check" else "service.views.grade")
    built, tensor = [], torch.tensor

    def spy(data, *args, **kwargs):
        t = tensor(data, *args, **kwargs)
        built.append(t.numel())
        return t

    def graded(n: int) -> tuple[dict, int]:
        answers = {"gradients": {"x": [0.5] * n}}
        body = {**SQUARE, "submission": answers} if path == "/v1/check" else {"problem": PROBLEM, "answers": answers}
        monkeypatch.setattr(view, "read_json", lambda: body)  # as parsed: no 16 MB JSON text to parse here
        tracemalloc.start()
        try:
            r = client.post(f"{path}?format={fmt}", json={})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert r.status_code == 200, r.data[:300]
        return the_check(fmt, r.json), peak

    monkeypatch.setattr(torch, "tensor", spy)
    small, _ = graded(4321)  # over the 100 numbers echoed as sent: summarized, like the huge one
    built.clear()
    huge, peak = graded(HUGE)
    assert max(built, default=0) <= 1  # the problem's one number at most, never the answer
    assert peak < 2**20, f"{peak / 2**20:.1f} MiB allocated while grading a {HUGE}-number answer"
    assert json.dumps(huge) == json.dumps(small).replace("4321", str(HUGE))
    text = json.dumps(huge).replace("\\\\", "")  # Gradescope's markdown escapes
    assert "wrong shape" in text and f"got [{HUGE}]" in text and f"{HUGE} value(s) in shape [{HUGE}]" in text


def test_a_wrong_shape_answer_has_its_shape_read_once(client, monkeypatch):
    """Its shape is read once, for the wrong-shape message; whether it is echoed as sent, and whether a mistake
    could have its shape (the diagnosis), are known from its outline (down its first items); its summary counts it
    once. It was parsed twice (the check, the diagnosis), and its shape read twice more by the echo."""
    from service.engine import check, diagnose_bugs, echo
    from service.views import check as view

    answer, reads = [0.5] * 10_000, []

    def counted(name, read):
        def spy(value, *args):
            reads.extend([name] if value is answer else [])
            return read(value, *args)

        return spy

    for module in (check, diagnose_bugs, echo):
        for name in ("parse_tensor", "tensor_shape", "shape_of"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, counted(name, getattr(module, name)))
    monkeypatch.setattr(view, "read_json", lambda: {**SQUARE, "submission": {"gradients": {"x": answer}}})
    c = client.post("/v1/check", json={}).json["checks"][0]
    assert c["message"] == "df/dx: wrong shape: expected shape [], got [10000]"
    assert c["actual_summary"].startswith("10000 value(s) in shape [10000]: [0.5, ")
    assert reads == ["tensor_shape"]


def test_small_answers_are_echoed_as_sent_and_ragged_ones_summarized(client):
    def actual(answer: str) -> dict:
        c = post(client, "/v1/check", check_text(answer)).json["checks"][0]
        return {k: c[k] for k in ("actual", "actual_summary") if k in c}

    assert actual("[1, 2, 3]") == {"actual": [1, 2, 3]}  # wrong shape, small: as sent
    assert actual("2") == {"actual": 2}
    assert actual('"NaN"') == {"actual": "NaN"}
    assert actual("[[1, 2], [3]]") == {
        "actual": None,
        "actual_summary": "3 value(s) in ragged lists nested 2 deep: [1, 2, 3]",
    }
    assert actual(json.dumps(list(range(101)))) == {
        "actual": None,
        "actual_summary": "101 value(s) in shape [101]: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, …]",
    }


def test_an_answer_with_the_checked_shape_is_echoed_whatever_its_size(client):
    body = {
        "model": {"kind": "expression", "formula": "sum(x**2)"},
        "inputs": {"x": [1.0] * 500},
        "submission": {"gradients": {"x": [2.0] * 500}},
    }
    c = client.post("/v1/check", json=body).json["checks"][0]
    assert c["passed"] and c["actual"] == [2.0] * 500 and "actual_summary" not in c


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_formula_is_echoed_at_most_200_characters(client, fmt):
    formula = "x*" * 2500 + "2"  # 5001 characters, over max_formula_length
    problem = {**PROBLEM, "checks": {"gradient_formulas.x": {"points": 1, "title": "dx"}}}
    body = {"problem": problem, "answers": {"gradient_formulas": {"x": formula}}}
    r = client.post(f"/v1/grade?format={fmt}", json=body)
    assert r.status_code == 200 and len(r.data) < 3000, len(r.data)
    assert (
        "(5001 characters)" in json.dumps(r.json, ensure_ascii=False)
        or fmt == "autolab"
        and "too large" in json.dumps(r.json)
    )
    if fmt == "json":
        assert r.json["problems"][0]["checks"][0]["formula"] == formula[:ECHO_CHARS] + "… (5001 characters)"


def test_a_long_formula_within_the_limit_is_graded_and_its_echo_cut():
    formula = "2*x" + " + 0*x" * 60  # 363 characters
    assert clip(formula) == formula[:200] + "… (363 characters)" and clip("2*x") == "2*x"


def test_an_integer_past_float64_typed_as_text_is_a_failed_check(client):
    for answer in ['"1' + "0" * 400 + '"', '"[1' + "0" * 400 + ']"']:
        for fmt in FORMATS:
            r = post(client, f"/v1/grade?format={fmt}", grade_text(answer))
            assert r.status_code == 200, (fmt, r.data[:300])
            assert r.json.get("score", r.json.get("fraction", 0)) == 0


def test_the_encoder_and_the_table_cell_walk_any_depth_without_recursion():
    deep = [1.0]
    for _ in range(5000):
        deep = [deep]
    warnings: list[str] = []
    out = encode_tree({"a": deep, "b": torch.tensor([1.0, float("nan")])}, warnings)
    level, depth = out["a"], 1
    while isinstance(level, list):
        level, depth = level[0], depth + 1
    assert level == TOO_DEEP and depth == MAX_DEPTH  # the 64th level's list is replaced
    assert out["b"] == [1.0, "NaN"] and len(warnings) == 2
    assert _short(deep).endswith("...") and len(_short(deep)) == 200
    assert len(_short(list(range(10**6)))) == 200
    assert len(summary(deep, 8)) <= ECHO_CHARS + 30


def _short_as_before(value, none="None", limit=200):
    """platforms._short before audit F10: every array or tensor converted whole with tolist(), then cut."""
    if value is None:
        return none
    parts, length, stack, first = [], 0, [iter((value,))], [True]
    end = object()
    while stack and length <= limit:
        item = next(stack[-1], end)
        if item is end:
            stack.pop()
            first.pop()
            text = "]" if stack else ""
        else:
            text = "" if first[-1] else ", "
            first[-1] = False
            if hasattr(item, "tolist"):
                item = item.tolist()
            if isinstance(item, list):
                stack.append(iter(item))
                first.append(True)
                text += "["
            else:
                text += f"{item:.6g}" if isinstance(item, float) else str(item)
        parts.append(text)
        length += len(text)
    text = "".join(parts)
    return text if not stack and len(text) <= limit else text[: limit - 3] + "..."


def test_a_coderunner_cell_reads_only_the_leading_items_of_an_array():
    """A cell formats only as many items as 200 characters hold (audit F10: a 1024x1024 expected was converted
    whole with tolist(), ~1M Python floats, +35 MiB, for 200 characters), and says exactly what it said before."""
    import tracemalloc

    import numpy as np

    big = np.random.RandomState(0).randn(1024, 1024)
    tracemalloc.start()
    cell = _short(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert cell == _short_as_before(big) and len(cell) == 200
    assert peak < 100_000, peak  # was ~40 MB of Python floats and lists

    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e300, -1e-300, 5e-324, 123456789.0, 0.1])
    values = [
        np.array(2.5),
        np.array(float("nan")),
        special,
        np.array([np.nan, np.inf, -0.0, 3e38, -1e-40, 1e-45, 123456789.0, 0.1], dtype=np.float32),
        special.reshape(2, 5),
        special.reshape(5, 2).T,  # a transposed view
        np.zeros((0,)),
        np.zeros((3, 0)),
        np.zeros((0, 3)),
        np.arange(12).reshape(2, 3, 2),
        np.array([True, False]),
        np.random.RandomState(1).randn(7) * 1e-5,
        np.random.RandomState(2).randn(30, 40),
        np.full((10, 10), 1e300),
        torch.tensor(3.25),
        torch.tensor([[1.0, float("nan")], [float("inf"), -0.0]]),
        torch.arange(1000.0, dtype=torch.float32).reshape(10, 100),
        torch.zeros(0, 2),
        torch.zeros(2, 10**5, dtype=torch.float64),
        [np.array([1.5, 2.0]), [torch.tensor(1.0), 2, None, 3.5], "x"],
        [[1.0, float("nan")], [float("-inf"), 2]],
        list(range(300)),
    ]
    for value in values:
        for limit in (200, 10):
            assert _short(value, limit=limit) == _short_as_before(value, limit=limit), (value, limit)


@pytest.mark.live
def test_a_deep_answer_over_http(live_server):
    """Under gunicorn (a worker thread's stack, not pytest's) the 300-deep echo was a 500 every time."""
    for path, text in (
        ("/v1/check?format=gradescope", check_text(nested(300))),
        ("/v1/grade", grade_text(nested(300))),
    ):
        r = requests.post(live_server.url + path, data=text, headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 200 and "wrong shape" in r.text, r.text[:300]
