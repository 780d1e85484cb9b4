#!/usr/bin/env bash
# Set-up and entry points for a fresh machine with Python 3.11+:
#   ./dev.sh demo   install the transcription worker and run the demo end to end
#   ./dev.sh test   install everything the tests need (Debian and pip packages) and run the whole suite
#   ./dev.sh bench  run the benchmark in bench/
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${BUCKETRUN_VENV:-.venv}
DEBS=(espeak-ng ffmpeg sox tmux chromium)

need_debs() {
  local missing=()
  command -v espeak-ng >/dev/null || missing+=(espeak-ng)
  command -v ffmpeg >/dev/null || missing+=(ffmpeg)
  command -v sox >/dev/null || missing+=(sox)
  command -v tmux >/dev/null || missing+=(tmux)  # tests/test_top.py runs `bucketrun top` in a real terminal
  [ -x /usr/bin/chromium ] || missing+=(chromium)  # tests/test_ui_browser.py drives it with Playwright (never `playwright install`)
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${DEBS[@]}" >/dev/null
}

venv() {
  local extras=$1 stamp="$VENV/.installed-$1"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    # constraints.txt pins a resolved, tested set: boto3's newest release would otherwise send pip
    # backtracking through aioboto3's exact botocore pins.
    "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[$extras]"
    touch "$stamp"
  fi
}

# SkyPilot pins click<8.2 and cannot share the project's environment; its task parser gets one of its own.
skypilot_venv() {
  local sky=.venv-skypilot
  [ -f "$sky/.installed" ] && return 0
  [ -x "$sky/bin/python" ] || "$PY" -m venv "$sky"
  "$sky/bin/python" -m pip install -q "skypilot==0.14.1" && touch "$sky/.installed"
}

case "${1:-}" in
  demo)
    venv local
    shift
    exec "$VENV/bin/bucketrun" "$@" demo
    ;;
  test)
    need_debs
    venv dev
    skypilot_venv
    shift
    # Two test processes (pytest-xdist), a file each at a time: much of the suite waits on leases, stalls and
    # sweeps rather than computing, so two overlap well on two cores. BUCKETRUN_TEST_WORKERS=0 runs it serially.
    exec "$VENV/bin/python" -m pytest -n "${BUCKETRUN_TEST_WORKERS:-2}" --dist loadfile "$@"
    ;;
  bench)
    need_debs
    venv dev
    shift
    exec "$VENV/bin/python" bench/e2e_vs_bare.py "$@"
    ;;
  *)
    echo "usage: ./dev.sh demo|test|bench [args]" >&2
    exit 2
    ;;
esac
