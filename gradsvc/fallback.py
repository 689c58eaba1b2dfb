"""Results documents for when nothing was graded, one message per cause: the service was unreachable, slow or
failing (SERVICE); the problem file is wrong (INSTRUCTOR); the autograder's setup is wrong, a refused API key or a
wrong URL (CONFIG); gradsvc itself failed (GRADER). Each is valid for its platform and tells the student plainly
that this is not about their answers.

PrairieLearn gets `gradable: false` (no attempt charged); Gradescope, Autolab and CodeRunner a score of 0 with
a visible message; the JSON platform `graded: false`. Staff details (the service's URL, the exception) go only
where students do not look: Gradescope `extra_data` and stdout, CodeRunner `instructorhtml`, PrairieLearn's
grading-job log (gradsvc grade's stdout line), the JSON platform's `reason`. Autolab shows students everything,
so its document has none.
"""

from __future__ import annotations

import html

SERVICE = "service"
INSTRUCTOR = "instructor"
CONFIG = "configuration"
GRADER = "grader"
MESSAGES = {
    SERVICE: "Not graded: the grading service could not be reached in time. Your submission was received and "
    "nothing was deducted; course staff can regrade it, or submit again later.",
    INSTRUCTOR: "Problem configuration error \N{EM DASH} contact course staff. Nothing was graded; "
    "this is not about your submission.",
    CONFIG: "Not graded: the autograder is not set up correctly \N{EM DASH} contact course staff. Nothing was "
    "deducted; this is not about your submission.",
    GRADER: "Not graded: the autograder failed. Your submission was received and nothing was deducted; this is "
    "not about your submission \N{EM DASH} contact course staff.",
}
STAFF_NOTE = "Details for course staff are in this grading job's log."


def document(platform: str, party: str, detail: str, problem_keys=()) -> dict:
    """The not-graded document for `platform`; `party` is SERVICE or INSTRUCTOR, `detail` is for staff."""
    message = MESSAGES[party]
    if platform == "gradescope":
        return {
            "score": 0.0,
            "output": f"**{message}**",
            "output_format": "md",
            "test_output_format": "md",
            "visibility": "visible",
            "stdout_visibility": "hidden",
            "extra_data": {"graded": False, "party": party, "reason": detail},
            "tests": [],
        }
    if platform == "prairielearn":
        return {
            "gradable": False,
            "succeeded": True,
            "score": 0.0,
            "format_errors": [message],
            "message": message,
            "output": STAFF_NOTE,
            "tests": [],
        }
    if platform == "autolab":
        return {
            "feedback": {
                "_presentation": "semantic",
                "stages": ["Not graded"],
                "Not graded": {message: {"passed": False, "hint": "Nothing of your answers was checked."}},
            },
            "autoresult": {"scores": {key: 0.0 for key in problem_keys}, "scoreboard": [0.0] * (len(problem_keys) + 1)},
        }
    if platform == "coderunner":
        return {
            "fraction": 0.0,
            "prologuehtml": f"<p><b>{html.escape(message)}</b></p>",
            "epiloguehtml": "",
            "instructorhtml": f"<pre>{html.escape(detail)}</pre>",
        }
    return {"graded": False, "party": party, "reason": detail, "message": message}
