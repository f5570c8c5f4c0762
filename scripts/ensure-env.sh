#!/usr/bin/env bash
# Create (once) the heavy test/demo environment outside the checkout, keyed by a hash of
# requirements/test.txt, then point it at this checkout (editable install, a few seconds).
# Prints the environment's python path on stdout; everything else goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
source "$here/scripts/venv-lib.sh"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
key="$(sha256sum <"$here/requirements/test.txt" | cut -c1-16)"
ensure_venv env env "$key" "$py" "$here/requirements/test.txt" "sleap, sleap-nn and CPU torch, a few minutes"
