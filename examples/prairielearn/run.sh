#!/usr/bin/env bash
# PrairieLearn entrypoint: copy this directory (with the gradsvc package vendored next to grader.py) to
# serverFilesCourse/gradsvc_grader/ in the course.
set -euo pipefail
exec python3 "$(dirname "$0")/grader.py"
