"""Validators written from each platform's own documentation of its results format (not from our code).

Each raises AssertionError naming what is wrong; `student_view` returns the text a student can see, for the
"nothing reveals a hidden check" assertions.
"""

from __future__ import annotations

import json
import math

VISIBILITIES = {"hidden", "after_due_date", "after_published", "visible"}
GRADESCOPE_FORMATS = {"text", "html", "simple_format", "md", "ansi"}


def _number(value, what: str) -> None:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{what} is not a number: {value!r}"
    assert math.isfinite(value), f"{what} is not finite: {value!r}"


def validate_gradescope(doc) -> None:
    """gradescope/autograder_samples docs/specs.md, "Output format": a top-level `score` (required when tests do
    not all carry one), optional `execution_time` (seconds), `output`, `output_format`/`test_output_format`
    (text, html, simple_format, md, ansi), `visibility`/`stdout_visibility` (hidden, after_due_date,
    after_published, visible), `extra_data`, and `tests` with score, max_score, status (passed/failed), name,
    number, output, tags, visibility, extra_data."""
    assert isinstance(doc, dict), "results.json must be a JSON object"
    allowed = {
        "score",
        "execution_time",
        "output",
        "output_format",
        "test_output_format",
        "test_name_format",
        "visibility",
        "stdout_visibility",
        "extra_data",
        "tests",
        "leaderboard",
    }
    assert set(doc) <= allowed, f"unknown top-level keys {set(doc) - allowed}"
    tests = doc.get("tests", [])
    assert "score" in doc or (tests and all("score" in t for t in tests)), "no score anywhere"
    if "score" in doc:
        _number(doc["score"], "score")
    if "execution_time" in doc:
        assert isinstance(doc["execution_time"], int) and doc["execution_time"] >= 0
    for key in ("output_format", "test_output_format"):
        assert doc.get(key, "text") in GRADESCOPE_FORMATS, key
    for key in ("visibility", "stdout_visibility"):
        assert doc.get(key, "visible") in VISIBILITIES, key
    assert isinstance(doc.get("output", ""), str)
    assert isinstance(doc.get("extra_data", {}), dict)
    assert isinstance(tests, list)
    numbers = [t["number"] for t in tests if "number" in t]
    assert len(numbers) == len(set(numbers)), f"test numbers repeat: {numbers}"
    for test in tests:
        assert set(test) <= {
            "score",
            "max_score",
            "status",
            "name",
            "name_format",
            "number",
            "output",
            "output_format",
            "tags",
            "visibility",
            "extra_data",
            "execution_time",
        }, set(test)
        assert isinstance(test.get("name", ""), str)
        for key in ("score", "max_score"):
            if key in test:
                _number(test[key], key)
        if "score" in test and "max_score" in test:
            assert 0 <= test["score"] <= test["max_score"]
        assert test.get("status", "passed") in {"passed", "failed"}
        assert isinstance(test.get("number", ""), str)
        assert isinstance(test.get("output", ""), str) and test.get("output_format", "text") in GRADESCOPE_FORMATS
        assert isinstance(test.get("tags", []), list) and all(isinstance(t, str) for t in test.get("tags", []))
        assert test.get("visibility", "visible") in VISIBILITIES
        assert isinstance(test.get("extra_data", {}), dict)
    json.dumps(doc, allow_nan=False)


def validate_prairielearn(doc) -> None:
    """PrairieLearn docs/externalGrading.md "Grading results" and apps/prairielearn/src/lib/externalGraderCommon.ts
    (makeGradingResult): a JSON object under 1 MB; `score` a number in [0, 1] when gradable; `gradable` a boolean
    (false: not graded, no attempt charged); `format_errors` a string or list of strings; `tests` for
    <pl-external-grader-results> with name, description, points, max_points, message, output."""
    text = json.dumps(doc, allow_nan=False)
    assert len(text.encode()) < 1_000_000, "results.json must stay under 1 MB"
    assert isinstance(doc, dict)
    assert isinstance(doc.get("gradable", True), bool)
    _number(doc["score"], "score")
    assert 0.0 <= doc["score"] <= 1.0
    errors = doc.get("format_errors", [])
    assert isinstance(errors, str) or (isinstance(errors, list) and all(isinstance(e, str) for e in errors))
    if doc.get("gradable") is False:
        assert errors, "not gradable without a format error to show"
    for key in ("message", "output"):
        assert isinstance(doc.get(key, ""), str)
    for test in doc.get("tests", []):
        assert isinstance(test["name"], str) and test["name"]
        _number(test["points"], "points"), _number(test["max_points"], "max_points")
        assert 0 <= test["points"] <= test["max_points"]
        for key in ("description", "message", "output"):
            assert isinstance(test.get(key, ""), str)


def validate_autolab(stdout: str) -> tuple[dict | None, dict]:
    """Autolab docs/lab.md "Writing Autograders": the last stdout line is the JSON autoresult, a `scores` hash of
    problem name -> number and an optional `scoreboard` array; docs/features/formatted-feedback.md: the line
    before it may be {"_presentation": "semantic", "stages": [...], <stage>: {<test>: {"passed", "hint"?}}}.
    Returns (feedback or None, autoresult)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "no output"
    autoresult = json.loads(lines[-1])
    assert isinstance(autoresult, dict) and set(autoresult) <= {"scores", "scoreboard"}, autoresult
    assert isinstance(autoresult["scores"], dict)
    for name, score in autoresult["scores"].items():
        assert isinstance(name, str) and name
        _number(score, f"scores.{name}")
    if "scoreboard" in autoresult:
        assert isinstance(autoresult["scoreboard"], list)
        for value in autoresult["scoreboard"]:
            assert isinstance(value, (int, float, str)) and not isinstance(value, bool)
    feedback = None
    if len(lines) > 1 and lines[-2].startswith("{"):
        feedback = json.loads(lines[-2])
        assert feedback["_presentation"] == "semantic"
        assert isinstance(feedback.get("stages", []), list)
        stages = feedback.get("stages", [])
        assert len(set(stages)) == len(stages), f"duplicate stage names (one overwrites another's rows): {stages}"
        assert not set(stages) & {"_presentation", "stages"}, stages
        for stage in feedback.get("stages", []):
            assert isinstance(feedback[stage], dict), f"stage {stage!r} has no results"
            for name, row in feedback[stage].items():
                assert isinstance(name, str)
                if isinstance(row, dict):
                    assert isinstance(row["passed"], bool) and isinstance(row.get("hint", ""), str)
    return feedback, autoresult


CODERUNNER_FIELDS = {
    "fraction",
    "prologuehtml",
    "testresults",
    "epiloguehtml",
    "feedbackhtml",
    "columnformats",
    "showdifferences",
    "showoutputonly",
    "graderstate",
    "instructorhtml",
}


def validate_coderunner(stdout: str) -> dict:
    """Moodle CodeRunner combinator template grader: classes/jobrunner.php do_combinator_grading (the output is
    one JSON object; every key among combinator_grader_outcome.php's `allowedfields`; `fraction` numeric in
    [0, 1]) and combinator_grader_outcome.php (testresults: a header row then rows of the same length; the
    `iscorrect` and `ishidden` control columns; columnformats one %s/%h per other column)."""
    doc = json.loads(stdout)
    assert isinstance(doc, dict)
    assert set(doc) <= CODERUNNER_FIELDS, f"unknown combinator grader fields {set(doc) - CODERUNNER_FIELDS}"
    _number(doc["fraction"], "fraction")
    assert 0.0 <= doc["fraction"] <= 1.0
    for key in ("prologuehtml", "epiloguehtml", "instructorhtml"):
        assert isinstance(doc.get(key, ""), str)
    rows = doc.get("testresults")
    if rows:
        header = rows[0]
        assert all(isinstance(h, str) for h in header)
        for row in rows[1:]:
            assert len(row) == len(header), "ragged result table"
            for column in ("iscorrect", "ishidden"):
                if column in header:
                    assert isinstance(row[header.index(column)], bool)
        if doc.get("columnformats"):
            assert len(doc["columnformats"]) == len([h for h in header if h not in ("iscorrect", "ishidden")])
            assert set(doc["columnformats"]) <= {"%s", "%h"}
    return doc


def student_view(platform: str, doc) -> str:
    """Everything a student can read, as one string (hidden rows, staff-only fields and extra_data left out)."""
    if platform == "gradescope":
        parts = [doc.get("output", "")]
        parts += [
            f"{t.get('name', '')} {t.get('number', '')} {t.get('output', '')} {t.get('score')}"
            for t in doc.get("tests", [])
            if t.get("visibility", "visible") == "visible"
        ]
        return "\n".join(parts)
    if platform == "prairielearn":
        return json.dumps({k: v for k, v in doc.items()})
    if platform == "autolab":
        return doc  # the raw stdout: Autolab shows all of it
    if platform == "coderunner":
        rows = doc.get("testresults") or [[]]
        hidden_at = rows[0].index("ishidden") if "ishidden" in rows[0] else None
        visible = [r for r in rows[1:] if hidden_at is None or not r[hidden_at]]
        return json.dumps([doc.get("prologuehtml", ""), doc.get("epiloguehtml", ""), visible])
    raise ValueError(platform)
