#!/usr/bin/env bash
# Create (once) the heavy test/demo environment outside the checkout, keyed by a hash of
# requirements/test.txt, then point it at this checkout (editable install, a few seconds).
# Prints the environment's python path on stdout; everything else goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
key="$(cat "$here/requirements/test.txt" | sha256sum | cut -c1-16)"
cache="${SLEAP_RTC_ENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sleap-rtc}"
env="$cache/env-$key"
mkdir -p "$cache"
exec 9>"$cache/.lock-$key"
flock 9
if [ ! -f "$env/.complete" ]; then
  echo "[env] creating $env (first run only: sleap, sleap-nn and CPU torch, a few minutes)" >&2
  rm -rf "$env"
  "$py" -m venv "$env"
  "$env/bin/python" -m pip install -q -r "$here/requirements/test.txt" >&2
  touch "$env/.complete"
fi
if ! (cd / && "$env/bin/python" -c "import sleap_rtc, sys; sys.exit(0 if sleap_rtc.__file__.startswith('$here/') else 1)") 2>/dev/null; then
  "$env/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$here" >&2
fi
echo "$env/bin/python"
