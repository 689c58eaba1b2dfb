#!/usr/bin/env bash
# Build autograde.tar for Autolab: autograder/ with problem.json, the vendored gradsvc client and
# gradsvc.env (GRADSVC_URL=..., GRADSVC_API_KEY=...) if you created one. Upload it with autograde-Makefile.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="${GRADSVC_REPO:-$(cd "$here/../.." && pwd)}"  # where gradsvc/ is
out="${1:-$here/autograde.tar}"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/autograder/gradsvc"
cp "$here/problem.json" "$stage/autograder/"
cp "$repo"/gradsvc/*.py "$stage/autograder/gradsvc/"
[ -f "$here/gradsvc.env" ] && cp "$here/gradsvc.env" "$stage/autograder/"
tar -C "$stage" -cf "$out" autograder
echo "$out"
