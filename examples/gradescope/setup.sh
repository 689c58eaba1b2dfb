#!/usr/bin/env bash
# Gradescope runs this once when it builds the autograder image (Ubuntu). The gradsvc client is
# vendored in the zip next to run_autograder (make_autograder_zip.sh): it needs requests, and PyYAML for problem.yaml.
set -euo pipefail
apt-get update
apt-get install -y --no-install-recommends python3 python3-pip
pip3 install 'requests>=2.32' 'pyyaml>=6'
