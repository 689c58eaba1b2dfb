#!/usr/bin/env python3
"""PrairieLearn external grader: grades a question's submitted answers with the gradient service.

Reads $GRADE_ROOT/data/data.json (default /grade/data/data.json: `submitted_answers`, `variant_seed`) and the
question's $GRADE_ROOT/tests/check.json (or $GRADER_CONFIG):

    {"check": <POST /v1/check body without `submission`>,
     "answers": {"<answers-name>": "gradients.w" | "gradient_formulas.x" | "loss" | "intermediates.z", ...},
     "seed_from_variant": true}

and writes $GRADE_ROOT/results/results.json (score in [0, 1], tests[], gradable, format_errors).
An answer that cannot be read (text where a number belongs) makes the submission not gradable, so the student
loses no attempt. If the service stays unreachable the script exits 3 without results (PrairieLearn reports a
grading failure). Service: GRADSVC_URL, GRADSVC_API_KEY.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the gradsvc package is vendored next to this file

from gradsvc import Client, ClientError, ServerError, ServiceUnavailable  # noqa: E402

ROOT = Path(os.environ.get("GRADE_ROOT", "/grade"))


def write(results: dict) -> None:
    out = ROOT / "results" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)  # PrairieLearn does not create it
    out.write_text(json.dumps(results, indent=2))


def not_gradable(errors: list[str]) -> dict:
    return {"gradable": False, "succeeded": True, "score": 0.0, "format_errors": errors,
            "message": "Your answer could not be read; this attempt does not count.", "output": "\n".join(errors), "tests": []}


def build_submission(answers: dict, mapping: dict) -> tuple[dict, list[str]]:
    """Map PrairieLearn answers-names to submission fields; numbers typed as text are parsed as JSON."""
    submission: dict = {}
    errors = []
    for name, target in mapping.items():
        if name not in answers or answers[name] in (None, ""):
            continue  # a missing answer is a failed check, reported by the service
        value = answers[name]
        section, _, key = target.partition(".")
        if section != "gradient_formulas" and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                errors.append(f"{name}: {value!r} is not a number or a list of numbers")
                continue
        if section == "loss":
            submission["loss"] = value
        else:
            submission.setdefault(section, {})[key] = value
    return submission, errors


def main() -> int:
    data = json.loads((ROOT / "data" / "data.json").read_text())
    config = json.loads(Path(os.environ.get("GRADER_CONFIG", ROOT / "tests" / "check.json")).read_text())
    submission, errors = build_submission(data.get("submitted_answers") or {}, config["answers"])
    if errors:
        write(not_gradable(errors))
        return 0
    request = {**config["check"], "submission": submission}
    if config.get("seed_from_variant") and "domain" in request and data.get("variant_seed") is not None:
        request["seed"] = int(data["variant_seed"]) % 2**63  # every variant is graded at its own points
    try:
        results = Client(retries=int(os.environ.get("GRADSVC_RETRIES", "5"))).check(request, format="prairielearn")
    except ServiceUnavailable as err:
        print(f"grading service unavailable: {err}")
        return 3
    except ServerError as err:
        print(f"grading service failed: {err}")
        return 4
    except ClientError as err:
        details = err.problem.get("errors", {}).get("submission", err.problem.get("errors", err.problem.get("detail")))
        write(not_gradable([f"your answer was refused: {json.dumps(details)}"]))
        return 0
    write(results)
    print(f"score {results['score']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
