"""Check results in the formats grading platforms read: Gradescope's results.json, PrairieLearn's grader result.

Presentation only: each formatter turns the JSON check response (engine/check.py) into a platform's shape, and
schemas/grading.py documents that shape. A new platform is one function here, one schema, one FORMATS entry.
"""

from __future__ import annotations


def _test_output(check: dict) -> str:
    lines = [check["message"]]
    if check["formula"] is not None:
        lines.append(f"your formula: {check['formula']}")
    lines.append(f"tolerance: atol {check['atol']:g}, rtol {check['rtol']:g}")
    return "\n".join(lines)


def _overall_output(result: dict) -> str:
    lines = [result["summary"], f"Tolerance: {result['tolerance_rule']}."]
    lines += [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)


def to_gradescope(result: dict) -> dict:
    """A Gradescope results.json body: top-level score, output and visibilities, one test per check."""
    return {
        "score": result["score"],
        "output": _overall_output(result),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "extra_data": {"max_score": result["max_score"], "rtol": result["rtol"], "atol": result["atol"]},
        "tests": [
            {
                "name": c["title"] if c["title"] == c["name"] else f"{c['title']} ({c['name']})",
                "number": str(i + 1),
                "score": c["points"],
                "max_score": c["max_points"],
                "status": "passed" if c["passed"] else "failed",
                "output": _test_output(c),
                "visibility": c["visibility"],
            }
            for i, c in enumerate(result["checks"])
        ],
    }


def to_prairielearn(result: dict) -> dict:
    """A PrairieLearn external grader result: score as a fraction in [0, 1], one test per check."""
    if result["max_score"] > 0:
        score = min(1.0, max(0.0, result["score"] / result["max_score"]))
    else:
        score = 1.0 if result["passed"] else 0.0
    return {
        "gradable": True,
        "succeeded": True,
        "score": score,
        "format_errors": [],
        "message": result["summary"],
        "output": _overall_output(result),
        "tests": [
            {
                "name": c["title"],
                "description": c["name"],
                "points": c["points"],
                "max_points": c["max_points"],
                "message": c["message"],
                "output": _test_output(c),
            }
            for c in result["checks"]
        ],
    }


FORMATTERS = {"json": lambda result: result, "gradescope": to_gradescope, "prairielearn": to_prairielearn}
