"""`gradsvc grade`: write one complete, valid results document for a platform, whatever happens, within a deadline.

The problem file (YAML or JSON) and the answers file go to POST /v1/grade. The service's document is written
atomically (temp file + rename). When nothing can be graded — service unreachable, slow or failing, a problem file
that does not parse or that the service rejects as the instructor's — a fallback document says so
(gradsvc/fallback.py). Retries stop in time for the whole run to end by --deadline; a SIGALRM is the backstop.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import fallback
from .client import Client, ClientError, GradsvcError, RequestError

PLATFORMS = ("gradescope", "prairielearn", "autolab", "coderunner", "json")
DEFAULT_DEADLINE = 25.0  # PrairieLearn's default job timeout is 30 s, start-up included
WRITE_MARGIN = 0.5  # seconds kept for writing the document after the last attempt


class OutOfTime(Exception):
    """The deadline's alarm went off."""


class ProblemFileError(Exception):
    """The problem file cannot be read or parsed: the instructor's error."""


class SetupError(Exception):
    """PrairieLearn's data.json cannot be read or parsed, or has no `submitted_answers`: PrairieLearn writes it,
    so the grader's setup is wrong (a mount, a path), never the student's answer."""


class NestingError(ValueError):
    """JSON nested deeper than Python's parser goes (about 990 levels; the service allows 1024)."""


def _number(text: str):
    """A JSON number as Python reads it, but one that overflows a double (1e400) is the service's "Infinity" or
    "-Infinity" string, not inf (which no JSON encoder sends), and an integer too large for an int64 is a float."""
    value = float(text)
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if "." not in text and "e" not in text and "E" not in text:
        whole = int(text)
        return whole if -(2**63) <= whole < 2**64 else value
    return value


def load_json(text: str):
    """JSON as the service will read it: NaN and Infinity literals and overflowing numbers become the strings
    "NaN", "Infinity", "-Infinity" (how the service spells non-finite values). ValueError when it does not parse,
    NestingError (a ValueError) when it is nested too deeply for Python's parser."""
    try:
        return json.loads(text, parse_constant=str, parse_float=_number, parse_int=_number)
    except RecursionError:
        raise NestingError("nested too deeply to read") from None


def _non_finite_as_strings(data):
    """YAML's .inf/.nan (and 1e400 written as a float) as the service's strings; iterative, aliases visited once."""
    seen, stack = set(), [data]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        items = (
            list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
        )
        for key, value in items:
            if isinstance(value, float) and not math.isfinite(value):
                node[key] = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
            elif isinstance(value, (dict, list)):
                stack.append(value)
    return data


def read_problem_file(path: str):
    """The problem file as JSON data: .json files as JSON, anything else as YAML (a superset of JSON) with
    YAML 1.2's numbers (`rtol: 1e-4` is a float: gradsvc/yamlfile.py). Non-finite numbers are the service's
    strings ("Infinity", ...); anything JSON cannot carry is a ProblemFileError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ProblemFileError(
            f"cannot read the problem file {path}: {getattr(err, 'strerror', None) or err}"
        ) from None
    if path.endswith(".json"):
        try:
            return load_json(text)
        except ValueError as err:
            raise ProblemFileError(f"{path} is not valid JSON: {err}") from None
    try:
        import yaml

        from .yamlfile import load_yaml
    except ImportError:
        raise ProblemFileError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use a .json file") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise ProblemFileError(f"{path} is not valid YAML: {err}") from None
    except RecursionError:
        raise ProblemFileError(f"{path} is nested too deeply to read") from None
    if isinstance(data, float) and not math.isfinite(data):
        data = _non_finite_as_strings([data])[0]
    _non_finite_as_strings(data)
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as err:  # a date, a set, a self-referencing alias, too deep
        raise ProblemFileError(f"{path} holds a value JSON cannot carry: {err}") from None
    return data


def read_answers(path: str, platform: str) -> tuple[object, str | None, int | None]:
    """(answers, why they cannot be read or None, PrairieLearn variant seed). NaN, Infinity and numbers that
    overflow a double (1e400) are the service's strings "NaN", "Infinity", "-Infinity": graded, and wrong.
    On PrairieLearn a data.json that is missing, unreadable, not JSON, nested too deeply or without
    `submitted_answers` is a SetupError: PrairieLearn writes that file, so it is never the student's error."""
    name = Path(path).name
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        why = getattr(err, "strerror", None) or err
        if platform == "prairielearn":
            raise SetupError(f"cannot read {path}: {why}") from None
        return None, f"cannot read {name}: {why}", None
    try:
        answers = load_json(text)
    except ValueError as err:
        if isinstance(err, NestingError):
            why = "is nested too deeply to read (lists or objects nested hundreds of levels deep)"
        else:
            why = f"is not valid JSON ({err})"
        if platform == "prairielearn":
            raise SetupError(f"{path} {why}") from None
        return None, f"{name} {why}", None
    if platform != "prairielearn":
        return answers, None, None
    if not isinstance(answers, dict) or "submitted_answers" not in answers:
        raise SetupError(f'{path} has no "submitted_answers": it is not PrairieLearn\'s data.json')
    seed = answers.get("variant_seed")
    return answers.get("submitted_answers") or {}, None, seed if isinstance(seed, int) and seed >= 0 else None


def problem_keys(problem) -> list[str]:
    """The problem keys, as far as the file says (Autolab's fallback scores name them)."""
    if isinstance(problem, dict) and isinstance(problem.get("problems"), list):
        return [p["key"] for p in problem["problems"] if isinstance(p, dict) and isinstance(p.get("key"), str)]
    if isinstance(problem, dict) and {"model", "checks", "key"} & set(problem):
        return [problem.get("key", "problem")] if isinstance(problem.get("key", "problem"), str) else []
    return []


def keys_in_text(path: str) -> list[str]:
    """Best effort for a problem file that does not parse: the `key:` values in its text, so that Autolab's
    fallback scores still name its problems."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found = re.findall(r"""^[\s-]*["']?key["']?\s*:\s*["']?([A-Za-z0-9_.-]+)""", text, re.MULTILINE)
    return list(dict.fromkeys(found))


# PrairieLearn refuses a results.json of 1 MB or more; the service keeps its document's compact JSON under it
INDENTED_BYTES = 1_000_000


def render(platform: str, doc: dict) -> str:
    """The file's text: Autolab's two stdout lines (feedback, then the autoresult last), else indented JSON, or
    compact JSON when indenting would take it to INDENTED_BYTES (2,500 tests' indents are ~110 KB)."""
    if platform == "autolab":
        return json.dumps(doc["feedback"]) + "\n" + json.dumps(doc["autoresult"]) + "\n"
    text = json.dumps(doc, indent=2) + "\n"
    return text if len(text.encode()) < INDENTED_BYTES else json.dumps(doc) + "\n"


def write_atomic(path: str, text: str) -> None:
    """Temp file in the same directory, fsync, rename: a reader never sees a partial document."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise OutOfTime in the main thread after `seconds` (where SIGALRM exists)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def ring(signum, frame):
        raise OutOfTime()

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def grade_document(args, client: Client, deadline: float) -> tuple[dict, str]:
    """(document, one line for the log). Never raises for the service's or the files' sake."""
    try:
        problem = read_problem_file(args.problem)
    except ProblemFileError as err:
        keys = keys_in_text(args.problem)
        return fallback.document(args.platform, fallback.INSTRUCTOR, str(err), keys), f"problem file error: {err}"
    keys = problem_keys(problem)
    if problem is None:
        detail = f"{args.problem} is empty"
        return fallback.document(args.platform, fallback.INSTRUCTOR, detail, keys), f"problem file error: {detail}"
    try:
        answers, unreadable, seed = read_answers(args.answers, args.platform)
    except SetupError as err:
        return fallback.document(args.platform, fallback.CONFIG, str(err), keys), f"configuration error: {err}"
    body = {"problem": problem, "answers": answers}
    if unreadable:
        body["answers_error"] = unreadable
    if seed is not None:
        body["variant_seed"] = seed
    if args.released:
        body["released"] = args.released
    try:
        return client.grade(body, platform=args.platform, deadline=deadline), "graded"
    except ClientError as err:
        if err.status == 413 and not unreadable:
            return answers_too_large(args, client, body, err, keys, deadline)
        return refused(args.platform, err, keys, client.url)
    except RequestError as err:  # the answers are JSON by construction, so it is the problem file
        return fallback.document(args.platform, fallback.INSTRUCTOR, str(err), keys), f"problem file error: {err}"
    except GradsvcError as err:
        return fallback.document(args.platform, fallback.SERVICE, str(err), keys), f"not graded: {err}"


def refused(platform: str, err: ClientError, keys: list[str], url: str) -> tuple[dict, str]:
    """The document for a 4xx: the problem file's fault (invalid-problem, or the schema's errors are about it),
    else the autograder's configuration (401/403: the API key; 404: the URL; anything else: client and service
    disagree). Never the student's: their answers are graded, whatever they hold, or too large (answers_too_large)."""
    errors = err.problem.get("errors")
    if str(err.problem.get("type", "")).endswith("/invalid-problem") or (
        isinstance(errors, dict) and set(errors) == {"problem"}
    ):
        detail = f"{err.problem.get('detail', '')} {json.dumps(errors or {})}"
        return fallback.document(platform, fallback.INSTRUCTOR, detail, keys), f"problem file error: {detail}"
    if err.problem.get("type", "").endswith("/limit-exceeded") or err.status == 413:
        detail = f"the problem file alone is over the service's limits: {err}"
        return fallback.document(platform, fallback.INSTRUCTOR, detail, keys), f"problem file error: {detail}"
    hint = {401: "check GRADSVC_API_KEY", 403: "check GRADSVC_API_KEY", 404: "check GRADSVC_URL"}.get(err.status)
    detail = f"{url} refused the request: {err}" + (f" ({hint})" if hint else "")
    return fallback.document(platform, fallback.CONFIG, detail, keys), f"configuration error: {detail}"


def answers_too_large(args, client: Client, body: dict, err: ClientError, keys, deadline) -> tuple[dict, str]:
    """A 413 for problem + answers: sent again without the answers. When that is graded, the student's answers
    were too large, and every check fails saying so; when it is a 413 too, the problem file is (the instructor's)."""
    size = Path(args.answers).stat().st_size if Path(args.answers).is_file() else 0
    why = f"the file is too large to grade ({size:,} bytes); submit only the answers asked for"
    try:
        doc = client.grade({**body, "answers": None, "answers_error": why}, platform=args.platform, deadline=deadline)
    except ClientError as again:
        return refused(args.platform, again, keys, client.url)
    except GradsvcError as again:
        return fallback.document(args.platform, fallback.SERVICE, str(again), keys), f"not graded: {again}"
    return doc, f"graded: answers too large ({err})"


def known_keys(args) -> list[str]:
    """The problem keys, for a document written after something went wrong."""
    with contextlib.suppress(Exception):
        return problem_keys(read_problem_file(args.problem))
    return keys_in_text(args.problem)


def run(args, client: Client) -> int:
    """Write the document to args.out and exit 0 — also when nothing could be graded; 5 if it cannot be written."""
    start = time.monotonic()
    end = start + max(1.0, args.deadline) - WRITE_MARGIN
    try:
        with alarm(end - time.monotonic()):
            doc, note = grade_document(args, client, end)
    except OutOfTime:
        reason = f"no answer from {client.url} within the deadline of {args.deadline:g} s"
        doc, note = (
            fallback.document(args.platform, fallback.SERVICE, reason, known_keys(args)),
            f"not graded: {reason}",
        )
    except Exception as err:  # a bug here must not cost the student a document: the contract is "always"
        reason = f"gradsvc failed: {type(err).__name__}: {err}"
        doc, note = fallback.document(args.platform, fallback.GRADER, reason, known_keys(args)), f"not graded: {reason}"
    try:
        write_atomic(args.out, render(args.platform, doc))
    except OSError as err:
        print(f"gradsvc: cannot write {args.out}: {err}", file=sys.stderr)
        return 5
    print(f"gradsvc grade: {note}; wrote {args.out} in {time.monotonic() - start:.1f} s")
    return 0
