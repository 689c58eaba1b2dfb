"""Platform formats of a graded result: Gradescope, PrairieLearn, Autolab, Moodle CodeRunner, and plain JSON.

Presentation only. Every renderer takes the platform-neutral result of service/problems.py (or a /v1/check result
wrapped by `from_check`) and honours visibility: a check that is `hidden`, or `after_due_date` / `after_published`
before it is released, is not shown in what the student reads, but counts in the score (the grade); a summary of the
shown checks says that others, not shown, count too (never which, how many or their points). Gradescope gets every
test with its own `visibility` (Gradescope hides them itself) and an always-visible summary of the `visible` tests.
Each platform's documented format is cited at its renderer; tests/platform_specs.py validates against them.
A new platform is one renderer here, one response schema in schemas/platforms.py, one RENDERERS entry.
"""

from __future__ import annotations

import html
import json
import math
import re

from .engine.score import total

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>#|])")
# STAFF_ONLY: a result's `warnings` (the reference's clamping, non-finite inputs, answers not among the checks)
# name the problem's internals, by paths such as checks[3].expected that also tell where hidden checks are: they
# go where only staff look (Gradescope's top-level extra_data, CodeRunner's instructorhtml, the json format), never
# into text a student reads (Gradescope output, PrairieLearn output, CodeRunner epiloguehtml, Autolab).
# FEEDBACK: a check whose `feedback` is "error" or "verdict" reaches every renderer with its reference cleared
# (engine/feedback.py: `expected`, `chain_rule`, a failed check's errors, the message); nothing here restores it,
# and CodeRunner's Expected column says "(not shown)".


def from_check(result: dict) -> dict:
    """A POST /v1/check result as a one-problem platform-neutral result."""
    order = {"visible": 0, "after_published": 1, "after_due_date": 2, "hidden": 3}
    checks = sorted(result["checks"], key=lambda c: order[c["visibility"]])
    checks = [
        {**c, "problem": None, "tags": [], "answer": None, "format_error": False, "number": f"1.{i}"}
        for i, c in enumerate(checks, 1)
    ]
    return {
        "graded": True,
        "title": "",
        "score": result["score"],
        "max_score": result["max_score"],
        "passed": result["passed"],
        "format_errors": [],
        "not_gradable": False,
        "released": [],
        "execution_time": None,
        "warnings": result["warnings"],
        "problems": [
            {
                "key": "",
                "title": "",
                "score": result["score"],
                "max_score": result["max_score"],
                "format_errors": "failed_test",
                "tolerance_rule": result["tolerance_rule"],
                "checks": checks,
            }
        ],
    }


# --- shared helpers ---------------------------------------------------------------------------------


def _checks(result: dict) -> list[tuple[dict, dict]]:
    return [(problem, check) for problem in result["problems"] for check in problem["checks"]]


def _shown(check: dict, result: dict) -> bool:
    """Whether a student may see this check now (platforms without their own visibility rules)."""
    return check["visibility"] == "visible" or check["visibility"] in result["released"]


def display_name(result: dict, problem: dict, check: dict) -> str:
    """What a student reads: the check's title, after the problem's key when there are several problems."""
    return f"{problem['key']}: {check['title']}" if len(result["problems"]) > 1 else check["title"]


def _summary(pairs: list[tuple[dict, dict]]) -> str:
    passed = sum(c["passed"] for _, c in pairs)
    points = total(c["points"] for _, c in pairs)
    max_points = total(c["max_points"] for _, c in pairs)
    return f"{passed} of {len(pairs)} checks passed ({points:g} of {max_points:g} points)"


def _shown_summary(shown: list[tuple[dict, dict]], pairs: list[tuple[dict, dict]]) -> str:
    """The summary of the checks a student sees, next to a score that counts every check: it says that others
    count too when some are not shown (which, how many and their points stay unsaid), so the two never disagree."""
    unseen = "; other checks, not shown here, count in the score too" if len(shown) < len(pairs) else ""
    return _summary(shown) + unseen


def _extra_data(problem: dict, check: dict) -> dict:
    """Stored for staff: the ids behind the readable name, and the numbers the verdict rests on."""
    summary = {"actual_summary": check["actual_summary"]} if "actual_summary" in check else {}
    mode = {"feedback": check["feedback"]} if "feedback" in check else {}  # "error", "verdict": no reference
    return {
        **summary,
        **mode,
        "id": check["name"],
        "problem": problem["key"],
        "kind": check["kind"],
        "expected": check["expected"],
        "actual": check["actual"],
        "formula": check["formula"],
        "abs_error": check["abs_error"],
        "rel_error": check["rel_error"],
        "rtol": check["rtol"],
        "atol": check["atol"],
        "format_error": check["format_error"],
    }


def _md(text: str) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _tolerance(check: dict) -> str:
    """The rule the answer was held to: a named profile's (engine/tolerance.py), else atol/rtol."""
    if "tolerance" in check:
        return check["tolerance"]["rule"]
    return f"atol {check['atol']:g}, rtol {check['rtol']:g}"


def _test_output_md(check: dict) -> str:
    lines = [_md(check["message"])]
    if check["formula"] is not None:
        lines.append(f"Your formula: `{check['formula'].replace('`', '')}`")
    lines.append(f"Tolerance: {_md(_tolerance(check))}")
    return "\n\n".join(lines)


def _test_output_text(check: dict) -> str:
    lines = [check["message"]]
    if check["formula"] is not None:
        lines.append(f"your formula: {check['formula']}")
    lines.append(f"tolerance: {_tolerance(check)}")
    return "\n".join(lines)


def _fraction(score: float, max_score: float, passed: bool) -> float:
    if max_score > 0:
        return min(1.0, max(0.0, score / max_score))
    return 1.0 if passed else 0.0


# --- Gradescope: autograder_samples docs/specs.md, "Output format" --------------------------------------


def to_gradescope(result: dict) -> dict:
    """results.json: top-level score, markdown output counting only always-visible tests, one test per check."""
    pairs = _checks(result)
    visible = [(p, c) for p, c in pairs if c["visibility"] == "visible"]
    lines = [f"**{_md(_summary(visible))}**" if visible else "Your submission was graded."]
    extra = {"graded": True, "max_score": result["max_score"]}
    if result["warnings"]:
        extra["warnings"] = result["warnings"]  # staff's: they name the problem's internals (STAFF_ONLY)
    doc = {
        "score": result["score"],
        "output": "\n\n".join(lines),
        "output_format": "md",
        "test_output_format": "md",
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "extra_data": extra,
        "tests": [
            {
                "name": display_name(result, p, c),
                "number": c["number"],
                "score": c["points"],
                "max_score": c["max_points"],
                "status": "passed" if c["passed"] else "failed",
                "output": _test_output_md(c),
                "output_format": "md",
                "tags": [t for t in ([p["key"]] if p["key"] else []) + c["tags"]],
                "visibility": c["visibility"],
                "extra_data": _extra_data(p, c),
            }
            for p, c in pairs
        ],
    }
    if result["execution_time"] is not None:
        doc["execution_time"] = max(0, math.ceil(result["execution_time"]))
    return doc


# --- PrairieLearn: docs/externalGrading.md "Grading results"; apps/prairielearn/src/lib/externalGraderCommon.ts


def to_prairielearn(result: dict) -> dict:
    """The external grader result: score in [0, 1], tests a student may see; format errors -> not gradable; at most
    PRAIRIELEARN_BYTES of JSON (_within_prairielearn_limit)."""
    return _within_prairielearn_limit(_prairielearn(result))


# PrairieLearn refuses a results.json of 1 MB or more (externalGraderCommon.ts): the document is kept under this many
# bytes as json.dumps writes it (ASCII escapes: never fewer bytes than UTF-8), with room for what wraps it
PRAIRIELEARN_BYTES = 950_000
PRAIRIELEARN_CUT = (
    "\nSome texts below were cut (…) to keep these results under PrairieLearn's 1 MB; the score counts every check."
)


def _within_prairielearn_limit(doc: dict) -> dict:
    """`doc` when it fits PRAIRIELEARN_BYTES; else its texts (each test's name, description, message and output, the
    format errors and the output) cut to one length, the longest that fits, each cut one ending in "…", and the
    message saying so. 25 problems of 100 failed checks made 1.65 MB. The schema's bounds (50 problems of 100 checks,
    titles of 500 characters) leave every text over 20 characters."""
    if _json_bytes(doc) <= PRAIRIELEARN_BYTES:
        return doc
    lengths = [_json_bytes(place[key]) - 2 for place, key in _text_places(doc)]
    emptied = {**doc, "message": doc["message"] + PRAIRIELEARN_CUT, "output": "", "format_errors": []}
    emptied["tests"] = [{**test, "name": "", "description": "", "message": "", "output": ""} for test in doc["tests"]]
    room = PRAIRIELEARN_BYTES - _json_bytes(emptied) - 4 * len(doc["format_errors"])  # each line's "" and ", "
    level = _water_level(lengths, room)
    doc = {**doc, "message": emptied["message"], "tests": [dict(test) for test in doc["tests"]]}
    doc["format_errors"] = list(doc["format_errors"])
    for (place, key), length in zip(_text_places(doc), lengths, strict=True):
        if length > level:
            place[key] = _cut(place[key], level)
    return doc


def _text_places(doc: dict) -> list[tuple[dict | list, str | int]]:
    """(container, key) of every text of a PrairieLearn document that may be cut, in one order."""
    places = [(test, key) for test in doc["tests"] for key in ("name", "description", "message", "output")]
    return places + [(doc, "output")] + [(doc["format_errors"], i) for i in range(len(doc["format_errors"]))]


def _json_bytes(value) -> int:
    return len(json.dumps(value, allow_nan=False))


def _water_level(lengths: list[int], room: int) -> int:
    """The largest length L such that the lengths, each cut to at most L, add up to at most `room`."""
    used, remaining = 0, len(lengths)
    for length in sorted(lengths):
        if used + length * remaining > room:
            return max(0, (room - used) // remaining)
        used += length
        remaining -= 1
    return max(lengths, default=0)


def _cut(text: str, limit: int) -> str:
    """`text`'s head and "…", at most `limit` bytes inside its JSON quotes."""
    cut = text[: max(0, limit - 6)]  # "…" is 6 bytes escaped
    while cut and _json_bytes(cut + "…") - 2 > limit:  # escapes: a character may take up to 12 bytes
        cut = cut[: len(cut) * 3 // 4]
    return cut + "…" if limit >= 6 else ""


def _prairielearn(result: dict) -> dict:
    if result["not_gradable"]:
        return {
            "gradable": False,
            "succeeded": True,
            "score": 0.0,
            "format_errors": result["format_errors"],
            "message": "Your answer could not be read, so it was not graded and this attempt does not count. "
            "Fix the format and submit again.",
            "output": "\n".join(result["format_errors"]),
            "tests": [],
        }
    pairs = _checks(result)
    shown = [(p, c) for p, c in pairs if _shown(c, result)]
    return {
        "gradable": True,
        "succeeded": True,
        "score": _fraction(result["score"], result["max_score"], result["passed"]),
        "format_errors": [],
        "message": _shown_summary(shown, pairs) if shown else "Your answer was graded.",
        "output": "",  # no staff-only place here for the warnings (STAFF_ONLY)
        "tests": [
            {
                "name": f"{c['number']} {display_name(result, p, c)}",
                "description": p["title"] or c["title"],
                "points": c["points"],
                "max_points": c["max_points"],
                "message": c["message"],
                "output": _test_output_text(c),
            }
            for p, c in shown
        ],
    }


# --- Autolab: docs/lab.md "Writing Autograders", docs/features/formatted-feedback.md, scoreboards.md ------


def to_autolab(result: dict) -> dict:
    """Two stdout lines: the semantic feedback (checks a student may see) and, last, the autoresult."""
    feedback = {"_presentation": "semantic", "stages": []}
    for problem, stage in zip(result["problems"], _stage_names(result["problems"]), strict=True):
        rows = {}
        for check in problem["checks"]:
            if _shown(check, result):
                row = {"passed": bool(check["passed"])}
                if not check["passed"]:
                    row["hint"] = check["message"]
                rows[f"{check['number']} {check['title']}"] = row
        if rows:
            feedback["stages"].append(stage)
            feedback[stage] = rows
    scores = {p["key"]: p["score"] for p in result["problems"]}
    autoresult = {"scores": scores, "scoreboard": [result["score"], *scores.values()]}
    return {"feedback": feedback, "autoresult": autoresult}


AUTOLAB_RESERVED = ("_presentation", "stages")


def _stage_names(problems: list[dict]) -> list[str]:
    """Each problem's Autolab stage: its title, unique among the stages and the feedback's own keys (a stage is a
    key of the feedback object: a second problem of the same title overwrote the first's rows). A title two problems
    share, or a reserved one, is followed by the problem's key, "Part 1 (b)"; then by its number if still taken."""
    titles = [p["title"] for p in problems]
    names: list[str] = []
    taken = set(AUTOLAB_RESERVED)
    for number, (problem, title) in enumerate(zip(problems, titles, strict=True), 1):
        name = title if titles.count(title) == 1 and title not in taken else f"{title} ({problem['key']})"
        if name in taken or name in titles[number:]:
            name = f"{title} ({problem['key']}, {number})"
        while name in taken:  # a title spelled like another's disambiguated name: bounded by the problems' count
            name += "'"
        taken.add(name)
        names.append(name)
    return names


# --- Moodle CodeRunner: combinator template grader (classes/jobrunner.php do_combinator_grading,
# classes/combinator_grader_outcome.php) -------------------------------------------------------------------

CODERUNNER_COLUMNS = ["iscorrect", "Test", "Expected", "Got", "Message", "ishidden"]


def to_coderunner(result: dict) -> dict:
    """fraction, a result table whose hidden rows CodeRunner shows to staff only, prologue and epilogue HTML."""
    pairs = _checks(result)
    shown = [(p, c) for p, c in pairs if _shown(c, result)]
    rows = [CODERUNNER_COLUMNS]
    for p, c in pairs:
        expected = "(not shown)" if "feedback" in c else _short(c["expected"], "")
        got = c["formula"] if c["formula"] is not None else c.get("actual_summary") or _short(c["actual"], "")
        got = got or ("(could not be read)" if c["format_error"] else "")
        rows.append(
            [
                bool(c["passed"]),
                f"{c['number']} {display_name(result, p, c)}",
                expected,
                got,
                c["message"],
                not _shown(c, result),
            ]
        )
    doc = {
        "fraction": _fraction(result["score"], result["max_score"], result["passed"]),
        "testresults": rows,
        "prologuehtml": f"<p>{html.escape(_shown_summary(shown, pairs))}</p>" if shown else "",
        "epiloguehtml": "",
        "showdifferences": False,
    }
    if result["warnings"]:  # shown to staff only (STAFF_ONLY)
        doc["instructorhtml"] = "".join(f"<p>Warning: {html.escape(w)}</p>" for w in result["warnings"])
    return doc


def _short(value, none: str = "None", limit: int = 200) -> str:
    """A table cell: numbers to 6 significant digits, lists as [a, b], at most `limit` characters (`none` for
    null). Iterative, and it stops once the cell is full: a value's size or nesting costs no more than the cell
    (an array or tensor is read item by item, never converted whole: tolist() of a 1024x1024 weight was 70 ms)."""
    if value is None:
        return none
    parts: list[str] = []
    length = 0
    stack, first = [iter((value,))], [True]  # per open list: its items, and whether none was written yet
    while stack and length <= limit:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
            first.pop()
            text = "]" if stack else ""
        else:
            text = "" if first[-1] else ", "
            first[-1] = False
            if getattr(item, "ndim", 0) > 0:  # an array or tensor: its leading items, one by one as written
                stack.append(map(item.__getitem__, range(len(item))))
                first.append(True)
                text += "["
            elif isinstance(item, list):
                stack.append(iter(item))
                first.append(True)
                text += "["
            else:
                item = item.tolist() if hasattr(item, "tolist") else item  # a numpy scalar or 0-d tensor: its number
                text += f"{item:.6g}" if isinstance(item, float) else str(item)
        parts.append(text)
        length += len(text)
    text = "".join(parts)
    return text if not stack and len(text) <= limit else text[: limit - 3] + "..."


_END = object()


RENDERERS = {
    "json": lambda result: result,
    "gradescope": to_gradescope,
    "prairielearn": to_prairielearn,
    "autolab": to_autolab,
    "coderunner": to_coderunner,
}


def render(platform: str, result: dict) -> dict:
    """A POST /v1/grade result (service/problems.py) in the platform's format."""
    return RENDERERS[platform](result)


# POST /v1/check's formats: its result is one problem (from_check), rendered like /v1/grade's
FORMATTERS = {
    "json": lambda result: result,
    "gradescope": lambda result: to_gradescope(from_check(result)),
    "prairielearn": lambda result: to_prairielearn(from_check(result)),
}
