# CodeRunner combinator template grader (question type python3, "Template grader", "Is combinator").
# The student's answer is a JSON object: {"dLdw": "<formula>", "dLdb": "<formula>"}. problem.json is a
# support file of the question. The Jobe server needs the gradsvc client (pip install it, or put the gradsvc
# package on its PYTHONPATH) and may reach the service; GRADSVC_URL comes from the environment or gradsvc.env.
# The last thing printed is gradsvc grade's document: {"fraction", "testresults", "prologuehtml", ...}.
import os
import subprocess
import sys

with open("answers.json", "w", encoding="utf-8") as f:
    f.write("""{{ STUDENT_ANSWER | e('py') }}""")
env = dict(os.environ)
if os.path.exists("gradsvc.env"):
    for line in open("gradsvc.env", encoding="utf-8"):
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            env.setdefault(key, value)
subprocess.run(
    [
        sys.executable,
        "-m",
        "gradsvc",
        "grade",
        "--platform",
        "coderunner",
        "--problem",
        "problem.json",
        "--answers",
        "answers.json",
        "--out",
        "result.json",
        "--deadline",
        env.get("GRADSVC_DEADLINE", "20"),
    ],
    stdout=subprocess.DEVNULL,
    env=env,
    check=False,
)
try:
    with open("result.json", encoding="utf-8") as f:
        print(f.read())
except OSError:  # gradsvc itself could not run: still an answer CodeRunner accepts, with the reason for staff
    print(
        '{"fraction": 0.0, '
        '"prologuehtml": "<p><b>Not graded: the grader could not run. Contact course staff.</b></p>", '
        '"epiloguehtml": "", '
        '"instructorhtml": "<p>gradsvc is not installed on the Jobe server or failed to start.</p>"}'
    )
