#!/usr/bin/env bash
# Build autograder.zip for Gradescope: setup.sh and run_autograder at the root, problem.yaml, the
# vendored gradsvc client, and gradsvc.env (GRADSVC_URL=..., GRADSVC_API_KEY=...) if you created one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$here/autograder.zip}"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$here/setup.sh" "$here/run_autograder" "$here/problem.yaml" "$stage/"
[ -f "$here/gradsvc.env" ] && cp "$here/gradsvc.env" "$stage/"
mkdir "$stage/gradsvc" && cp "$repo"/gradsvc/*.py "$stage/gradsvc/"
(cd "$stage" && python3 -m zipfile -c "$out" setup.sh run_autograder problem.yaml gradsvc $( [ -f gradsvc.env ] && echo gradsvc.env ))
echo "$out"
