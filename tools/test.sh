#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (what CI runs, via .ci/run).
# Creates .venv, installs fracturekit with its dev extras, makes sure Debian's chromium is present
# for the browser test, checks lint and formatting, then runs pytest (all tests, slow ones too).
#
#   bash tools/test.sh            the full run (CI)
#   bash tools/test.sh --fast     everyday tier: the same set-up and lint, tests not marked slow
#   bash tools/test.sh ARGS...    extra arguments go to pytest (e.g. tests/test_io.py -x)
set -euo pipefail
cd "$(dirname "$0")/.."

FAST=0
if [ "${1:-}" = "--fast" ]; then
  FAST=1
  shift
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import fracturekit, torch, timm" # fail loudly if the install did not work

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; browser tests will be skipped"
  else
    echo "warning: /usr/bin/chromium missing and cannot install it; browser tests will be skipped"
  fi
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
# pytest exits 5 when it collected no test: set -e makes that (and any failure) fail the run.
if [ "$FAST" = 1 ]; then
  exec .venv/bin/python -m pytest -m "not slow" "$@"
fi
exec .venv/bin/python -m pytest "$@"
