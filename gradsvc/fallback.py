"""Results documents for when nothing was graded: the service was unreachable, slow or failing, or the problem
file is wrong. Each is valid for its platform and tells the student plainly that this is not about their answers.

PrairieLearn gets `gradable: false` (no attempt charged); Gradescope, Autolab and CodeRunner a score of 0 with
a visible message that staff can regrade; the JSON platform `graded: false`. Staff details go where only staff
look (Gradescope `extra_data` and stdout, CodeRunner `instructorhtml`) or are labelled for staff.
"""

from __future__ import annotations

import html

SERVICE = "service"
INSTRUCTOR = "instructor"
MESSAGES = {
    SERVICE: "Not graded: the grading service could not be reached in time. Your submission was received and "
    "nothing was deducted; course staff can regrade it, or submit again later.",
    INSTRUCTOR: "Problem configuration error \N{EM DASH} contact course staff. Nothing was graded; "
    "this is not about your submission.",
}


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
        staff = "For course staff: " + detail
        return {
            "gradable": False,
            "succeeded": True,
            "score": 0.0,
            "format_errors": [message],
            "message": message,
            "output": staff,
            "tests": [],
        }
    if platform == "autolab":
        return {
            "feedback": {
                "_presentation": "semantic",
                "stages": ["Not graded"],
                "Not graded": {message: {"passed": False, "hint": detail}},
            },
            "autoresult": {"scores": {key: 0.0 for key in problem_keys}},
        }
    if platform == "coderunner":
        return {
            "fraction": 0.0,
            "prologuehtml": f"<p><b>{html.escape(message)}</b></p>",
            "epiloguehtml": "",
            "instructorhtml": f"<pre>{html.escape(detail)}</pre>",
        }
    return {"graded": False, "party": party, "reason": detail, "message": message}
