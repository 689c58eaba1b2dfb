"""`gradsvc grade`: write one complete, valid results document for a platform, whatever happens, within a deadline.

The problem file (YAML or JSON) and the answers file go to POST /v1/grade. The service's document is written
atomically (temp file + rename). When nothing can be graded — service unreachable, slow or failing, a problem file
that does not parse or that the service rejects as the instructor's — a fallback document says so
(gradsvc/fallback.py). Retries stop in time for the whole run to end by --deadline; a SIGALRM is the backstop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import fallback
from .client import Client, ClientError, GradsvcError

PLATFORMS = ("gradescope", "prairielearn", "autolab", "coderunner", "json")
DEFAULT_DEADLINE = 25.0  # PrairieLearn's default job timeout is 30 s, start-up included
WRITE_MARGIN = 0.5  # seconds kept for writing the document after the last attempt


class OutOfTime(Exception):
    """The deadline's alarm went off."""


class ProblemFileError(Exception):
    """The problem file cannot be read or parsed: the instructor's error."""


def read_problem_file(path: str):
    """The problem file as JSON data: .json files as JSON, anything else as YAML (a superset of JSON)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ProblemFileError(f"cannot read the problem file {path}: {err.strerror}") from None
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except ValueError as err:
            raise ProblemFileError(f"{path} is not valid JSON: {err}") from None
    try:
        import yaml
    except ImportError:
        raise ProblemFileError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use a .json file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ProblemFileError(f"{path} is not valid YAML: {err}") from None


def read_answers(path: str, platform: str) -> tuple[object, str | None, int | None]:
    """(answers, why they cannot be read or None, PrairieLearn variant seed). NaN and Infinity stay strings."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return None, f"cannot read {Path(path).name}: {getattr(err, 'strerror', None) or err}", None
    try:
        answers = json.loads(text, parse_constant=str)  # NaN, Infinity: the service's strings
    except ValueError as err:
        return None, f"{Path(path).name} is not valid JSON ({err})", None
    if platform == "prairielearn" and isinstance(answers, dict) and "submitted_answers" in answers:
        seed = answers.get("variant_seed")
        return answers.get("submitted_answers") or {}, None, seed if isinstance(seed, int) and seed >= 0 else None
    return answers, None, None


def problem_keys(problem) -> list[str]:
    """The problem keys, as far as the file says (Autolab's fallback scores name them)."""
    if isinstance(problem, dict) and isinstance(problem.get("problems"), list):
        return [p["key"] for p in problem["problems"] if isinstance(p, dict) and isinstance(p.get("key"), str)]
    if isinstance(problem, dict) and {"model", "checks", "key"} & set(problem):
        return [problem.get("key", "problem")] if isinstance(problem.get("key", "problem"), str) else []
    return []


def render(platform: str, doc: dict) -> str:
    """The file's text: Autolab's two stdout lines (feedback, then the autoresult last), else indented JSON."""
    if platform == "autolab":
        return json.dumps(doc["feedback"]) + "\n" + json.dumps(doc["autoresult"]) + "\n"
    return json.dumps(doc, indent=2) + "\n"


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
        return fallback.document(args.platform, fallback.INSTRUCTOR, str(err)), f"problem file error: {err}"
    keys = problem_keys(problem)
    answers, unreadable, seed = read_answers(args.answers, args.platform)
    body = {"problem": problem, "answers": answers}
    if unreadable:
        body["answers_error"] = unreadable
    if seed is not None:
        body["variant_seed"] = seed
    if args.released:
        body["released"] = args.released
    try:
        doc = client.grade(body, platform=args.platform, deadline=deadline)
    except ClientError as err:
        if err.status < 500 and str(err.problem.get("type", "")).endswith("/invalid-problem"):
            detail = f"{err.problem.get('detail', '')} {json.dumps(err.problem.get('errors', {}))}"
            return fallback.document(args.platform, fallback.INSTRUCTOR, detail, keys), f"problem file error: {detail}"
        return fallback.document(args.platform, fallback.SERVICE, str(err), keys), f"not graded: {err}"
    except GradsvcError as err:
        return fallback.document(args.platform, fallback.SERVICE, str(err), keys), f"not graded: {err}"
    return doc, "graded"


def run(args, client: Client) -> int:
    """Write the document to args.out and exit 0 — also when nothing could be graded; 5 if it cannot be written."""
    start = time.monotonic()
    end = start + max(1.0, args.deadline) - WRITE_MARGIN
    try:
        with alarm(end - time.monotonic()):
            doc, note = grade_document(args, client, end)
    except OutOfTime:
        keys = []
        with contextlib.suppress(Exception):
            keys = problem_keys(read_problem_file(args.problem))
        reason = f"no answer from {client.url} within the deadline of {args.deadline:g} s"
        doc, note = fallback.document(args.platform, fallback.SERVICE, reason, keys), f"not graded: {reason}"
    try:
        write_atomic(args.out, render(args.platform, doc))
    except OSError as err:
        print(f"gradsvc: cannot write {args.out}: {err}", file=sys.stderr)
        return 5
    print(f"gradsvc grade: {note}; wrote {args.out} in {time.monotonic() - start:.1f} s")
    return 0
