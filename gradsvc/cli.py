"""`gradsvc`: compute, check, batch and grade from the command line, with exit codes an autograder can branch on.

`gradsvc grade` always exits 0 once it wrote its results document (5 if it could not write it): the document
itself says whether anything was graded. `gradsvc problem lint`: 0 valid, 1 invalid, 2 unreadable, 3 the service
could not check it (unavailable, or it refused the request: API key, URL), 4 server error.

Numbers that overflow a double (1e400) are read as the service's "Infinity"/"-Infinity", like the Infinity literal.

Exit codes of compute, check and batch:
  0  success; for `check`/`batch`: every check passed (hidden ones too, whatever --format) and no job failed
  1  the service answered, but a check failed (or, for `batch`, a job failed or a check in it failed)
  2  usage or input error: bad arguments, unreadable/invalid JSON file, or the service answered 4xx
  3  service unavailable: connection refused/timed out, a response cut off, or 429/502/503/504, still after every retry
  4  server error: 500 (or another non-retryable 5xx) or an answer that is not JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import grade as grading
from .client import DEFAULT_URL, Client, ClientError, RequestError, ServerError, ServiceUnavailable

OK, CHECKS_FAILED, USAGE, UNAVAILABLE, SERVER_ERROR = 0, 1, 2, 3, 4
INVALID_PROBLEM = 1


class InputError(Exception):
    """A file that cannot be read or parsed."""


def _read(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None


def read_json(path: str):
    """A JSON file as grading.load_json reads it: 1e400 is "Infinity" (graded, and wrong), never inf."""
    try:
        return grading.load_json(_read(path))
    except ValueError as err:  # JSONDecodeError, NestingError
        raise InputError(f"{path} is not valid JSON: {err}") from None


def read_jobs(path: str) -> list:
    """A JSON object {"jobs": [...]}, a JSON array of jobs, or JSON Lines (one job per line)."""
    text = _read(path)
    try:
        whole = grading.load_json(text)
    except ValueError:
        whole = None
    if isinstance(whole, dict) and isinstance(whole.get("jobs"), list):
        return whole["jobs"]
    if isinstance(whole, list):
        return whole
    jobs = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                jobs.append(grading.load_json(line))
            except ValueError as err:
                raise InputError(f"{path}:{number} is not valid JSON: {err}") from None
    return jobs


def check_passed(body: dict, fmt: str, headers=None) -> bool:
    """Whether the whole grade passed: the service's Grade-Passed header, which counts every check whatever the
    format (PrairieLearn's body leaves hidden checks out); from the body for a service without it."""
    header = (headers or {}).get("Grade-Passed")
    if header in ("true", "false"):
        return header == "true"
    if fmt == "gradescope":
        return all(t.get("status") == "passed" for t in body.get("tests", []))
    if fmt == "prairielearn":
        return all(t.get("points") == t.get("max_points") for t in body.get("tests", []))
    return bool(body.get("passed"))


def emit(obj, pretty: bool) -> None:
    sys.stdout.write(json.dumps(obj, indent=2 if pretty else None) + "\n")


def connection_options(defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after the command's name. The subcommands' copy has no defaults
    (argparse.SUPPRESS), so an option given before the command is not reset by the subcommand's default."""
    p = argparse.ArgumentParser(add_help=False)

    def default(value):
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--url", default=default(os.environ.get("GRADSVC_URL", DEFAULT_URL)), help="service base URL (env GRADSVC_URL)"
    )
    p.add_argument(
        "--api-key",
        default=default(os.environ.get("GRADSVC_API_KEY")),
        help="sent as Authorization: Bearer (env GRADSVC_API_KEY)",
    )
    p.add_argument("--timeout", type=float, default=default(30.0), help="seconds per attempt (default 30)")
    p.add_argument(
        "--retries", type=int, default=default(5), help="retries on connection errors and 429/502/503/504 (default 5)"
    )
    p.add_argument(
        "--backoff",
        type=float,
        default=default(0.5),
        help="first retry delay in seconds, doubled each time, capped at 8 (default 0.5)",
    )
    p.add_argument("--pretty", action="store_true", default=default(False), help="indent the JSON output")
    return p


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gradsvc",
        description="Client for the gradient service.",
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[connection_options(True)],
    )
    common = [connection_options(False)]
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compute", parents=common, help="POST /v1/gradients with a JSON spec file")
    c.add_argument("spec", help="JSON file (- for stdin)")
    k = sub.add_parser("check", parents=common, help="POST /v1/check with a JSON check request; prints the result")
    k.add_argument("submission", help="JSON check request file (- for stdin)")
    k.add_argument("--format", choices=("json", "gradescope", "prairielearn"), default="json")
    b = sub.add_parser("batch", parents=common, help="POST /v1/batch with JSON Lines jobs; prints one result per line")
    b.add_argument("jobs", help='JSONL file (one job per line), a JSON array, or {"jobs": [...]} (- for stdin)')
    b.add_argument("--chunk-size", type=int, default=500, help="jobs per request (default 500)")
    g = sub.add_parser(
        "grade",
        parents=common,
        help="grade an answers file against a problem file; always writes a valid results document and exits 0",
    )
    g.add_argument("--platform", choices=grading.PLATFORMS, required=True)
    g.add_argument("--problem", required=True, help="the instructor's problem file (.yaml/.yml or .json)")
    g.add_argument("--answers", required=True, help="the student's answers (JSON; PrairieLearn: /grade/data/data.json)")
    g.add_argument("--out", required=True, help="where to write the results document (atomically)")
    g.add_argument(
        "--deadline",
        type=float,
        default=grading.DEFAULT_DEADLINE,
        help=f"seconds for the whole run, retries included (default {grading.DEFAULT_DEADLINE:g})",
    )
    g.add_argument(
        "--released",
        action="append",
        choices=("after_due_date", "after_published"),
        default=[],
        help="show checks with this visibility now (platforms other than Gradescope); repeatable",
    )
    pr = sub.add_parser("problem", parents=common, help="problem file tools")
    lint = pr.add_subparsers(dest="action", required=True).add_parser(
        "lint", parents=common, help="validate a problem file: schema here, then every reference on the service"
    )
    lint.add_argument("file", help="the problem file (.yaml/.yml or .json)")
    lint.add_argument("--offline", action="store_true", help="check the schema only, without the service")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # exits 2 on usage errors
    client = Client(args.url, args.api_key, timeout=args.timeout, retries=args.retries, backoff=args.backoff)
    if args.command == "grade":
        return grading.run(args, client)
    if args.command == "problem":
        return lint_problem(args, client)
    try:
        if args.command == "compute":
            emit(client.compute(read_json(args.spec)), args.pretty)
            return OK
        if args.command == "check":
            body = client.check(read_json(args.submission), format=args.format)
            emit(body, args.pretty)
            return OK if check_passed(body, args.format, client.last_headers) else CHECKS_FAILED
        jobs = read_jobs(args.jobs)
        status = OK
        size = max(1, args.chunk_size)
        for start in range(0, len(jobs), size):
            for result in client.batch(jobs[start : start + size]):
                sys.stdout.write(json.dumps(result) + "\n")
                if "error" in result or result.get("passed") is False:
                    status = CHECKS_FAILED
        return status
    except (InputError, RequestError) as err:
        print(f"gradsvc: {err}", file=sys.stderr)
        return USAGE
    except ServiceUnavailable as err:
        print(f"gradsvc: {err}", file=sys.stderr)
        return UNAVAILABLE
    except ServerError as err:
        print(f"gradsvc: server error: {err}", file=sys.stderr)
        return SERVER_ERROR
    except ClientError as err:
        print_refusal(f"gradsvc: request refused: {err}", err)
        return USAGE


def print_refusal(message: str, err: ClientError) -> None:
    """A 4xx problem on stderr: its message, then marshmallow's field -> messages map when there is one."""
    print(message, file=sys.stderr)
    if err.problem.get("errors"):
        print(json.dumps(err.problem["errors"], indent=2), file=sys.stderr)


def as_in_the_file(problem, messages):
    """Field errors named as the file has them: a one-problem file is loaded as `problems: [it]`, so its errors
    come back under problems -> 0, a path that is not in the file."""
    single = isinstance(problem, dict) and "problems" not in problem
    if single and isinstance(messages, dict) and set(messages) == {"problems"}:
        inner = messages["problems"]
        if isinstance(inner, dict) and len(inner) == 1 and str(next(iter(inner))) == "0":
            return next(iter(inner.values()))
    return messages


def lint_problem(args, client: Client) -> int:
    """`gradsvc problem lint`: 0 valid, 1 invalid (each error printed), 2 unreadable, 3 the service could not check
    it (unavailable, or it refused the request: a wrong API key or URL), 4 server error.  Says "ok" on stdout
    only when every step passed (the local schema check, then the service computing every problem)."""
    try:
        problem = grading.read_problem_file(args.file)
    except grading.ProblemFileError as err:
        print(f"gradsvc: {err}", file=sys.stderr)
        return USAGE
    try:
        from marshmallow import ValidationError

        from schemas.problems import ProblemFileSchema
    except ImportError:  # a vendored client without the schemas: the service still validates
        print("gradsvc: schema check skipped (install the gradsvc package for it)", file=sys.stderr)
        summary = "schema not checked here"
    else:
        try:
            loaded = ProblemFileSchema().load(problem)
        except ValidationError as err:
            print(f"{args.file}: invalid problem file", file=sys.stderr)
            print(json.dumps(as_in_the_file(problem, err.messages), indent=2), file=sys.stderr)
            return INVALID_PROBLEM
        n_checks = sum(len(p["checks"]) for p in loaded["problems"])
        summary = f"schema ok, {len(loaded['problems'])} problem(s), {n_checks} check(s)"
    if args.offline:
        print(f"{args.file}: {summary} (--offline: nothing computed)")
        return OK
    try:
        result = client.grade({"problem": problem, "answers": {}}, platform="json")
    except ServiceUnavailable as err:
        print(f"gradsvc: {err}", file=sys.stderr)
        return UNAVAILABLE
    except ServerError as err:
        print(f"gradsvc: server error: {err}", file=sys.stderr)
        return SERVER_ERROR
    except ClientError as err:
        errors = err.problem.get("errors")
        about_the_file = str(err.problem.get("type", "")).endswith("/invalid-problem") or err.status == 413
        if about_the_file or (isinstance(errors, dict) and set(errors) == {"problem"}):
            print(f"{args.file}: {err.problem.get('detail', err)}", file=sys.stderr)
            if isinstance(errors, dict) and set(errors) == {"problem"}:
                print(json.dumps(as_in_the_file(problem, errors["problem"]), indent=2), file=sys.stderr)
            elif errors:
                print(json.dumps(errors, indent=2), file=sys.stderr)
            return INVALID_PROBLEM
        # 401/403 (API key), 404 (URL): the file may well be valid; the service could not say
        print_refusal(f"gradsvc: {client.url} refused the request, the file was not checked: {err}", err)
        return UNAVAILABLE
    except RequestError as err:
        print(f"gradsvc: {args.file}: {err}", file=sys.stderr)
        return USAGE
    print(f"{args.file}: ok ({summary}; every problem computed on {client.url})")
    for p in result["problems"]:
        print(f"  {p['key']}: {len(p['checks'])} check(s), {p['max_score']:g} points")
    return OK
