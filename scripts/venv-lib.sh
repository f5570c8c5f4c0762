# Shared by ensure-env.sh and ensure-fast-env.sh (sourced, not run): build a cached virtual
# environment once, keyed by a hash of what defines it, and point it at this checkout.
#   ensure_venv LABEL NAME KEY PYTHON REQUIREMENTS HINT
# creates $cache/NAME-KEY with PYTHON from REQUIREMENTS (HINT says how long the first run
# takes), installs this checkout editable when the env points elsewhere, and prints the
# env's python on stdout; everything else goes to stderr. A lock per env lets parallel
# callers (CI targets, several checkouts) wait for one build instead of racing it.
ensure_venv() {
  local label="$1" name="$2" key="$3" py="$4" reqs="$5" hint="$6"
  local here cache env
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  cache="${SLEAP_RTC_ENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sleap-rtc}"
  env="$cache/$name-$key"
  mkdir -p "$cache"
  exec 9>"$cache/.lock-$name-$key"
  flock 9
  if [ ! -f "$env/.complete" ]; then
    echo "[$label] creating $env (first run only: $hint)" >&2
    rm -rf "$env"
    "$py" -m venv "$env"
    "$env/bin/python" -m pip install -q -r "$reqs" >&2
    touch "$env/.complete"
  fi
  if ! (cd / && "$env/bin/python" -c "import sleap_rtc, sys; sys.exit(0 if sleap_rtc.__file__.startswith('$here/') else 1)") 2>/dev/null; then
    "$env/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$here" >&2
  fi
  echo "$env/bin/python"
}
