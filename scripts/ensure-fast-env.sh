#!/usr/bin/env bash
# Create (once) the Python 3.12 side environment for the native data-channel stack
# (requirements/fast.txt: aiortc + aiolibdatachannel, no SLEAP/torch), keyed by a hash of
# that file, and point it at this checkout. Prints its python on stdout.
# Exits 3 with a reason on stderr when no Python 3.12 is available (callers skip then).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
source "$here/scripts/venv-lib.sh"
py="${FAST_PYTHON:-}"
if [ -z "$py" ]; then
  if command -v pyenv >/dev/null && [ -x "$(pyenv root)/versions/3.12.1/bin/python3.12" ]; then
    py="$(pyenv root)/versions/3.12.1/bin/python3.12"
  elif command -v python3.12 >/dev/null; then
    py="$(command -v python3.12)"
  else
    echo "[fast-env] no Python 3.12 here (set FAST_PYTHON, or install pyenv 3.12.1): the native stack cannot be tested" >&2
    exit 3
  fi
fi
key="$( (cat "$here/requirements/fast.txt"; "$py" -V) | sha256sum | cut -c1-16)"
ensure_venv fast-env fast "$key" "$py" "$here/requirements/fast.txt" "about a minute"
