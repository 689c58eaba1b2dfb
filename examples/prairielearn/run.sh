#!/usr/bin/env bash
# PrairieLearn entrypoint (externalGradingOptions.entrypoint). PrairieLearn reads results.json only when the
# entrypoint exits 0, so this script always exits 0 and always leaves a results.json: graded, or
# `gradable: false` with the reason (service unreachable or slow, problem file wrong, answer unreadable).
# Copy this directory, with the gradsvc package vendored next to run.sh, to serverFilesCourse/gradsvc_grader/.
# GRADE_ROOT relocates /grade (for trying it locally); GRADSVC_URL, GRADSVC_API_KEY from the question's environment.
root="${GRADE_ROOT:-/grade}"
here="$(cd "$(dirname "$0")" && pwd)"
out="$root/results/results.json"
mkdir -p "$root/results"
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" python3 -m gradsvc grade --platform prairielearn \
  --problem "$root/tests/problem.json" --answers "$root/data/data.json" --out "$out" \
  --deadline "${GRADSVC_DEADLINE:-25}"
if [ ! -s "$out" ]; then  # python itself failed to start: still a document PrairieLearn can show
  echo '{"gradable": false, "succeeded": true, "score": 0.0, "format_errors": ["Not graded: the grader failed to start. This attempt does not count; contact course staff."], "message": "Not graded: the grader failed to start.", "output": "", "tests": []}' > "$out"
fi
exit 0
