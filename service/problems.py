"""Grading a problem file against a student's answers: instructor errors apart, student errors as failed checks.

`grade_file` validates the instructor's problem file (ProblemFileSchema; an error is InvalidProblem, the
instructor's), reads each answer on its own (a missing, mistyped or mis-shaped answer, or an unparsable formula,
is a failed check with a message, never an HTTP error), grades every problem with the engine and returns one
platform-neutral result that service/platforms.py renders for Gradescope, PrairieLearn, Autolab or CodeRunner.
"""

from __future__ import annotations

import json
import re
import time

from marshmallow import ValidationError

from schemas.grading import Answer, CheckRequestSchema
from schemas.problems import MAX_PROBLEMS, ProblemFileSchema, ProblemSchema

from .engine import cost, echo
from .engine.check import (
    SECTIONS,
    SPELLINGS_REFUSED,
    Grader,
    Ledger,
    Problem,
    Spellings,
    answer_place,
    checked_keys,
    estimate,
)
from .engine.errors import DeadlineExceeded, EngineError, FormulaError, LimitExceeded, UngradableReference
from .engine.formula import parse_formula
from .engine.limits import Limits
from .engine.score import total
from .errors import InvalidProblem

problem_file_schema = ProblemFileSchema()
answer_field = Answer()
# the order tests are numbered and listed in: what a student sees now first (visible, then what `released` shows),
# so the checks not shown leave no gaps in the numbers shown
VISIBILITY_ORDER = {"visible": 0, "after_published": 1, "after_due_date": 2, "hidden": 3}
# what a problem passes on to its /v1/check request: every check body field a problem carries, read off the two schemas
# so that one added to CheckRequestSchema is graded from a problem file too (a hand list lacked `tolerance` and `dout`,
# which the file accepted and grading dropped: a ninth audit); `checks` lose their file-only options (_request)
COPIED = tuple(name for name in CheckRequestSchema().fields if name in ProblemSchema().fields and name != "checks")
# a number as a student types one into a text box: JSON's, and .5, 5., +0.5, 007; never Python's float() ("1_0",
# "infinity", " nan"): read only where JSON cannot read the text, alone or in lists, in texts of at most TYPED_CHARS
TYPED_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
TYPED_TOKEN = re.compile(rf"\s*(?:([\[\],])|({TYPED_NUMBER}))", re.ASCII)  # ASCII digits and spaces only, as documented
TYPED_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
# A text answer is read by json.loads (~0.15 µs a character of integers: parse_int is Python) and, when JSON cannot
# read it, by a Python tokenizer (~0.5 µs a character): TYPED_READ_CHARS a request whoever reads them (~30 ms of
# json.loads; 8 MB of integers in one JSON-readable text took 1.2 s, a fourth audit), and TYPED_CHARS a text for the
# tokenizer (140 typed lists of 100,000 characters ran to the deadline, a third). A JSON text is not held to
# TYPED_CHARS: a 600-number gradient typed as JSON is 12,000 characters
TYPED_CHARS = 10_000
TYPED_READ_CHARS = 200_000
TYPED_DEPTH = 1024  # lists nested as deep as a request body may nest them (orjson)


def check_raw(problem_file, limits: Limits) -> None:
    """The cost model's counts (cost.check_raw) of every problem in the raw JSON, before the schema loads any."""
    problems = problem_file.get("problems") if isinstance(problem_file, dict) else None
    for problem in problems[:MAX_PROBLEMS] if isinstance(problems, list) else [problem_file]:
        cost.check_raw(problem, limits)


def load_problem_file(data) -> dict:
    """The validated problem file, or InvalidProblem (400) with marshmallow's messages under `problem`."""
    try:
        return problem_file_schema.load(data)
    except ValidationError as err:
        detail = "The problem file does not match the schema; see `errors`."
        raise InvalidProblem(400, detail, {"problem": err.messages}) from None


def grade_file(body: dict, limits: Limits) -> dict:
    """Grade a loaded GradeRequestSchema body; returns the platform-neutral result (the `json` platform)."""
    start = time.monotonic()
    problem_file = load_problem_file(body["problem"])
    released = body.get("released", [])
    answers, unreadable = body["answers"], body.get("answers_error")
    if unreadable is None and not isinstance(answers, dict):
        unreadable = f"the answers must be a JSON object keyed by problem, got {_json_type(answers)}"
    requests = [_request(problem, body, problem_file) for problem in problem_file["problems"]]
    ledger = Ledger(_charge(problem_file["problems"], requests, limits))  # every problem's estimate, reserved
    if unreadable is None:  # answers nested past a tensor: priced before any is read (a 413 before their walks)
        ledger.charge(_deep_answers(problem_file["problems"], answers, limits), limits)
    ledger.share_spellings(len(requests))
    problems = []
    for i, (problem, request) in enumerate(zip(problem_file["problems"], requests, strict=True)):
        # once a check names nothing the file is a 422 (_misnamed_checks): later problems' answers are not read
        read = unreadable is None and not any(p["misnamed"] for p in problems)
        problems.append(
            _grade_problem(
                i, problem, request, answers if read else {}, unreadable, problem_file, limits, ledger, released
            )
        )
    misnamed = _misnamed_checks(problems)
    if misnamed:
        raise misnamed
    _number_problems(problems, ("visible", *released))
    checks = [c for p in problems for c in p["checks"]]
    # every check's points added up once: the problems' totals, each rounded, added up to 23.366666666666664 where
    # the points (and Gradescope's tests) make 23.366666666666667 (a ninth audit)
    score, max_score = total(c["points"] for c in checks), total(c["max_points"] for c in checks)
    return {
        "graded": True,
        "title": problem_file.get("title") or (problems[0]["title"] if len(problems) == 1 else ""),
        "score": score,
        "max_score": max_score,
        "passed": all(c["passed"] for c in checks),
        "format_errors": list(dict.fromkeys(line for p in problems for line in p.pop("format_error_lines"))),
        "not_gradable": any(
            c["format_error"] for p in problems if p["format_errors"] == "not_gradable" for c in p["checks"]
        ),
        "released": released,
        "execution_time": time.monotonic() - start,
        "problems": problems,
        "warnings": [w for p in problems for w in p["warnings"]],
    }


def _deep_answers(problems: list[dict], answers: dict, limits: Limits) -> cost.Estimate:
    """cost.deep_answers_estimate of the answers the problems read, as /v1/check and /v1/batch price theirs: each
    problem's loss, gradients and intermediates (as a check's submission holds them) and its checks' answers by
    platform name, counted on the raw JSON before any is read. 50 problems of 41 answers nested 1000 deep held a
    worker to the 10 s deadline."""
    single = len(problems) == 1
    read = []
    for problem in problems:
        read += [answers[a] for o in problem["checks"].values() if (a := o.get("answer")) and a in answers]
        nested = _problem_answers(answers, problem["key"], single)
        if isinstance(nested, dict):
            read.append(nested.get("loss"))
            for section in ("gradients", "intermediates"):
                if isinstance(nested.get(section), dict):
                    read += nested[section].values()
    return cost.deep_answers_estimate(read, limits)


def _problem_answers(answers: dict, key: str, single: bool):
    """What holds a problem's answers: the object under its key, else the answers themselves for one problem (or
    what is under its key when that is not an object: a format error, _find_answer's)."""
    nested = answers.get(key)
    if nested is not None and not isinstance(nested, dict) and not (single and key in SECTIONS):
        return nested
    if not isinstance(nested, dict):
        nested = answers if single and key not in answers else {}
    return nested


def _request(problem: dict, body: dict, problem_file: dict) -> dict:
    """The problem's /v1/check request, without the submission."""
    request = {k: problem[k] for k in COPIED if k in problem}
    if "feedback" not in request and "feedback" in problem_file:  # the file's default
        request["feedback"] = problem_file["feedback"]
    if problem["seed_from_variant"] and "domain" in problem and body.get("variant_seed") is not None:
        request["seed"] = body["variant_seed"] % 2**63  # every PrairieLearn variant is graded at its own points
    request["checks"] = {
        name: {k: v for k, v in options.items() if k not in ("tags", "answer")}
        for name, options in problem["checks"].items()
    }
    return request


def _charge(problems: list[dict], requests: list[dict], limits: Limits) -> int:
    """The cost model's estimate of every problem, summed against the one request budget, before any is graded;
    returns the sum (what the answers' formulas and diagnoses may not take)."""
    costs = []
    for index, (problem, request) in enumerate(zip(problems, requests, strict=True)):
        try:
            costs.append(estimate(request, limits).total + cost.checks_estimate(request, problem_file=True).total)
        except LimitExceeded:
            raise
        except EngineError as err:
            raise _uncomputable(index, problem, err) from None
    total = sum(costs)
    cost.batch_require(limits, total, len(costs), "problems", "the problem file's")
    return total


def _uncomputable(index: int, problem: dict, err: EngineError) -> InvalidProblem:
    """The model, the points or a check cannot be computed: the problem file is wrong."""
    return InvalidProblem(
        422,
        f"Problem {problem['key']!r} cannot be computed: {err.detail}.",
        {"problem": {"problems": {index: {"model": [err.detail]}}}},
    )


def _number_problems(problems: list[dict], shown: tuple[str, ...]) -> None:
    """Each check's number, "<problem>.<check>": problems in file order, those with a check shown now first, then by
    the first visibility that will show one (_show_order): a problem whose checks are all hidden (or not yet
    released) took its place's number, and "1.1, 3.1" told of it (a third audit); checks in their problem's order
    (_grade_problem sorts them, shown ones first)."""
    seen = sorted(problems, key=lambda p: min(_show_order(c["visibility"], shown) for c in p["checks"]))
    for number, problem in enumerate(seen, 1):
        for within, check in enumerate(problem["checks"], 1):
            check["number"] = f"{number}.{within}"


def _show_order(visibility: str, shown: tuple[str, ...]) -> tuple[bool, int]:
    """Where a check of this visibility is numbered: shown now first, then in the order visibilities are released
    (so Gradescope, which releases them itself, shows no gap after the due date either)."""
    return visibility not in shown, VISIBILITY_ORDER[visibility]


def _grade_problem(
    index: int,
    problem: dict,
    request: dict,
    answers: dict,
    unreadable: str | None,
    problem_file: dict,
    limits: Limits,
    ledger: Ledger,
    released: list[str],
) -> dict:
    """The graded problem; its answers' formulas and diagnoses are charged to the file's `ledger`. Its format errors
    as PrairieLearn lists them (`format_error_lines`, for grade_file): a check the student is not shown (hidden,
    not `released`) is a neutral line, and an error of what holds the answers one line, not one per check."""
    key = problem["key"]
    single = len(problem_file["problems"]) == 1
    submission, format_errors, places = {}, {}, {}
    sent: dict = {}  # each answer as sent: a format error's is described (_sent: CodeRunner's Got column)
    # format errors of what holds the answer (the file, the problem's or a section's object), which say what they are
    # about: one line for all the checks they hold
    around: set[str] = set()
    try:
        built = Problem(request, limits)
        grader = Grader(
            {**request, "submission": submission}, limits, problem=built, ledger=ledger, refuse_clamped=True
        )  # its submission filled below: its references say first which checks name nothing (their answers unread)
        variables = list(built.points[0])
        taken = checked_keys(problem["checks"])
        spellings: dict[int, Spellings] = {}  # id(an intermediates object of the answers) -> its Spellings

        def spelled(given: dict, field: str):
            """The answer to the intermediate `field` under another spelling of it in `given`, or None."""
            found = spellings.setdefault(id(given), Spellings(built, ledger, given, taken)).find(field)
            return None if found is None else given[found]

        for name, options in problem["checks"].items():
            if _names_nothing(grader, name):
                continue  # the file's error (a 422): its answer is neither graded nor read
            if unreadable is not None:
                format_errors[name] = f"your answers could not be read: {unreadable}"
                around.add(name)
                continue
            value, problem_text = _find_answer(answers, key, name, options, single, spelled)
            if problem_text is not None:
                around.add(name)
            elif value is None:
                places[name] = _missing_hint(key, name, options, single)  # the engine says "no answer given"
                refused = any(s.refused for s in spellings.values())
                if refused and name.startswith("intermediates."):
                    places[name] = (places[name] or f"add {answer_place(name)} to your answers") + (
                        "; " + SPELLINGS_REFUSED
                    )
                continue
            else:
                sent[name] = value
                value, problem_text = _read_answer(name, value, limits, variables, ledger)
            if problem_text:
                format_errors[name] = problem_text
            else:
                section, _, field = name.partition(".")
                if section == "loss":
                    submission["loss"] = value
                else:
                    submission.setdefault(section, {})[field] = value
        grader.places = places
        result = grader.run()
        if grader.refused is not None:  # an author's intermediate key the budget left no room to read: the 413
            raise grader.refused
    except (DeadlineExceeded, LimitExceeded):
        raise  # the request's wall time or budget, not the problem file
    except UngradableReference as err:  # never graded as the student's: a NaN answer would "match" a NaN, and a
        # right chain-rule answer fail where the tutorial's clamp bites
        raise InvalidProblem(
            422,
            f"Problem {key!r}: {err.detail}.",
            {"problem": {"problems": {index: {"checks": {err.check: [err.detail]}}}}},
        ) from None
    except EngineError as err:
        raise _uncomputable(index, problem, err) from None
    misnamed = {c["name"]: c["message"] for c in result["checks"] if c["name"] in grader.misnamed}
    misnamed.update(_same_intermediate(problem["checks"], built, ledger, misnamed))
    checks = []
    for check in result["checks"]:
        options = problem["checks"][check["name"]]
        check.update(problem=key, tags=options.get("tags", []), answer=options.get("answer"), format_error=False)
        if check["name"] in format_errors:
            check.pop("actual_summary", None)
            check.update(
                passed=False,
                points=0.0,
                abs_error=None,
                rel_error=None,
                actual=None,
                message=f"{check['title']}: {format_errors[check['name']]}",
                format_error=True,
            )
            if name in sent:
                check["actual_summary"] = _sent(sent[name], limits)
        checks.append(check)
    shown = ("visible", *released)
    checks.sort(key=lambda c: _show_order(c["visibility"], shown))  # numbered in this order: _number_problems
    lines = []  # what PrairieLearn lists in format_errors
    for check in checks:
        name = check["name"]
        if name not in format_errors:
            continue
        if name in around:
            line = format_errors[name]  # the same for every check it holds: said once
        elif check["visibility"] == "visible" or check["visibility"] in released:
            line = check["message"]
        else:  # neither the title nor the answer's name of a check the student is not shown
            line = f"an answer graded without being shown could not be read: {format_errors[name]}"
        line = f"{key}: {line}" if not single and name not in around else line
        if line not in lines:
            lines.append(line)
    return {
        "key": key,
        "title": problem.get("title", key),
        "score": total(c["points"] for c in checks),
        "max_score": total(c["max_points"] for c in checks),
        "format_errors": problem.get("format_errors") or problem_file.get("format_errors") or "not_gradable",
        "tolerance_rule": result["tolerance_rule"],
        "checks": checks,
        "warnings": result["warnings"],
        "format_error_lines": lines,
        "misnamed": misnamed,
    }


def _same_intermediate(checks: dict, built: Problem, ledger: Ledger, misnamed: dict) -> dict[str, str]:
    """Checks that name one intermediate in two spellings ("x**2", "x ** 2"), by name -> message: an answer keyed as
    either would be one check's only (the file's error, as a misnamed check). Their keys were read by grading."""
    first: dict[str, str] = {}
    found = {}
    for name in checks:
        section, _, key = name.partition(".")
        if section != "intermediates" or name in misnamed:
            continue
        same = first.setdefault(built.intermediate_name(key, ledger), name)
        if same != name:
            found[name] = f"{name}: names the same intermediate as {same}; keep one of the two checks"
    return found


def _misnamed_checks(problems: list[dict]) -> InvalidProblem | None:
    """One 422 naming every check of the file that names nothing its model has (was: the first only)."""
    found = [(i, p["key"], p.pop("misnamed")) for i, p in enumerate(problems)]
    found = [(i, key, names) for i, key, names in found if names]
    if not found:
        return None
    detail = " ".join(f"Problem {key!r}: {'; '.join(names.values())}." for _, key, names in found)
    errors = {i: {"checks": {name: [message] for name, message in names.items()}} for i, _, names in found}
    return InvalidProblem(422, detail, {"problem": {"problems": errors}})


def _names_nothing(grader: Grader, name: str) -> bool:
    """Whether the check `name` names nothing the problem's references have (the grader's misnamed check); not when
    its intermediate's key is over the budget to read (the grader says so)."""
    try:
        return grader.expected(name, 0) is None
    except LimitExceeded:
        return False


def _find_answer(answers: dict, key: str, name: str, options: dict, single: bool, spelled):
    """(the answer or None when there is none, None), or (None, a format error) when what holds it is not an object:
    the answer by its platform name (flat), else under the problem's key (or at the top level for one problem); an
    intermediate's under its check's own key first, else under another spelling of it (`spelled(given, field)`)."""
    if options.get("answer") and options["answer"] in answers:
        return answers[options["answer"]], None
    nested = _problem_answers(answers, key, single)
    if not isinstance(nested, dict):
        example = '{"loss": ..., "gradients": {...}}'
        return None, f"the answers to {key!r} must be an object such as {example}, got {_json_type(nested)}"
    section, _, field = name.partition(".")
    if section == "loss":
        return nested.get("loss"), None
    inner = nested.get(section)
    if inner is not None and not isinstance(inner, dict):
        where = f'"{section}"' + ("" if single else f" in the answers to {key!r}")
        return (
            None,
            f'{where} must be an object with one entry per name ({{"<name>": ...}}), got {_json_type(inner)}',
        )
    value = (inner or {}).get(field)
    if value is None and section == "intermediates" and inner:
        value = spelled(inner, field)
    return value, None


def _sent(value, limits: Limits) -> str:
    """An answer as sent, bounded: text clipped (echo.clip), else echo.summary()'s description."""
    if isinstance(value, str):
        return repr(echo.clip(value))
    if isinstance(value, (list, int, float)) and not isinstance(value, bool):
        return echo.summary(value, limits.max_tensor_dims)
    return _json_type(value)


def _missing_hint(key: str, name: str, options: dict, single: bool) -> str | None:
    """Where a missing answer goes, in the answers' own terms: its platform name (a PrairieLearn input box), or its
    place under the problem's key; None for one problem's nested answers (the engine's own hint says it)."""
    if options.get("answer"):
        return f"fill in {options['answer']}"
    if single:
        return None
    return f"add {answer_place(name)} under {key!r} in your answers"


def _read_answer(name: str, value, limits: Limits, variables: list[str], ledger: Ledger):
    """(value, None) when the engine can grade it, or (None, why not) for a format error the student can fix.
    `variables`: what a formula may use (the problem's inputs); `ledger`: the request's, which counts the characters
    of typed answers re-read (TYPED_READ_CHARS)."""
    if name.startswith("gradient_formulas."):
        names = ", ".join(variables)
        if isinstance(value, str) and not value.strip():
            return None, f"the formula is empty: write it in terms of {names}"
        if not isinstance(value, str):
            return None, f"a formula (text) is expected, got {_json_type(value)}"
        try:
            formula = parse_formula(value, limits)
        except FormulaError as err:
            return None, f"your formula {value!r} cannot be read: {err.detail}"
        except EngineError:
            return value, None  # too long or too deep: the engine grades it as a failed check with the limit named
        unknown = [v for v in formula.variables if v not in variables]
        if unknown:
            what = (
                f"{unknown[0]!r}, which is not a variable"
                if len(unknown) == 1
                else (f"{', '.join(map(repr, unknown))}, which are not variables")
            )
            return None, f"your formula {echo.clip(value)!r} uses {what} of this problem; the variables are {names}"
        return value, None
    if isinstance(value, str) and not value.strip():
        return None, "the answer is empty: enter a number or a list of numbers"
    if isinstance(value, str):  # a number typed into a text box: within the request's total, whoever reads it
        if ledger.typed_chars + len(value) > TYPED_READ_CHARS:
            return None, (
                f"{value[:100]!r}… is not read as typed numbers: these answers hold more than {TYPED_READ_CHARS} "
                "characters of them in all; send the numbers as JSON"
            )
        ledger.typed_chars += len(value)
        try:
            value = json.loads(value, parse_int=_json_int)
        except RecursionError:  # deeper than Python's parser goes (about 990 levels): not an answer, nor a 500
            return None, f"{value[:100]!r} is nested too deeply to read: enter a number or a list of numbers"
        except ValueError:
            if len(value) > TYPED_CHARS:  # the tokenizer's own cap: JSON text is read whole (a 600-number gradient)
                return None, (
                    f"{value[:100]!r}… ({len(value)} characters) is too long to read as typed numbers: type at most "
                    f"{TYPED_CHARS} characters, or send the numbers as JSON"
                )
            typed = _typed_numbers(value)
            if typed is None:
                return None, f"{value[:100]!r} is not a number or a list of numbers"
            value = typed
        # lists nested past a tensor in a text (json.loads reads ~990 levels): priced before the field walks them
        ledger.charge(cost.deep_answers_estimate([value], limits), limits)
    try:
        return answer_field.deserialize(value), None
    except ValidationError as err:
        return None, " ".join(err.messages) if isinstance(err.messages, list) else str(err.messages)


def _typed_numbers(text: str):
    """A number or lists of numbers as a student types them (TYPED_NUMBER: ".5", "+0.5", "[.5, 1.]"), read without
    recursion; None when the text is anything else or nested deeper than TYPED_DEPTH."""
    root: list = []
    stack, pos, after_value = [root], 0, False
    while (match := TYPED_TOKEN.match(text, pos)) is not None:
        pos = match.end()
        punctuation, number = match.groups()
        if number is not None:
            if after_value:
                return None
            stack[-1].append(_json_int(number) if TYPED_INTEGER.fullmatch(number) else float(number))
            after_value = True
        elif punctuation == "[":
            if after_value or len(stack) > TYPED_DEPTH:
                return None
            stack[-1].append([])
            stack.append(stack[-1][-1])
        elif punctuation == "]":
            if len(stack) == 1 or (not after_value and stack[-1]):  # nothing open, or "]" after ","
                return None
            stack.pop()
            after_value = True
        else:
            if not after_value or len(stack) == 1:
                return None
            after_value = False
    if text[pos:].strip() or len(stack) != 1 or len(root) != 1:
        return None
    return root[0]


def _json_int(text: str) -> int | float:
    """An integer as orjson reads one in a request body: exact within 64 bits, a float beyond (inf past float64's
    range), so an answer typed as text cannot carry an integer no float64 tensor and no JSON encoder takes."""
    if len(text) > 21:  # past 64 bits whatever its sign (and int() refuses over 4,300 digits: it was a 500)
        return float(text)
    number = int(text)
    return number if -(2**63) <= number < 2**64 else float(text)


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")
